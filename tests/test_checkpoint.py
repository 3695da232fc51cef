"""Checkpoints: exact round trip, atomic writes, and every bad file refused with CheckpointError."""

import os
import pickle

import numpy as np
import pytest
import torch

from nanocot import checkpoint
from nanocot.checkpoint import CheckpointError, build_model


class Custom:
    """An arbitrary class: a checkpoint that pickles one must be refused."""

    def __init__(self):
        self.x = 1


class Exploit:
    """Unpickling this calls os.mkdir(marker): proof of whether the loader would run code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def saved(tmp_path, tiny_pretrain_payload):
    path = tmp_path / "ck" / "tiny-pretrain.pt"
    checkpoint.save(path, tiny_pretrain_payload)
    return path


def test_round_trip_gives_identical_logits(saved, tiny_pretrain_payload):
    """What evaluation loads must be exactly the model that was trained."""
    loaded = checkpoint.load(saved, expect={"size": "tiny", "stage": "pretrain"})
    assert loaded["format"] == checkpoint.FORMAT
    assert loaded["model_config"] == tiny_pretrain_payload["model_config"]
    assert loaded["vocab"] == tiny_pretrain_payload["vocab"]
    original, restored = build_model(tiny_pretrain_payload, "cpu").eval(), build_model(loaded, "cpu").eval()
    x = torch.randint(0, len(loaded["vocab"]), (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(original(x), restored(x))
    for k, v in tiny_pretrain_payload["state_dict"].items():
        assert torch.equal(loaded["state_dict"][k], v)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, tiny_pretrain_payload):
    folder = tmp_path / "new" / "nested"  # save creates missing folders
    path = folder / "tiny-pretrain.pt"
    checkpoint.save(path, tiny_pretrain_payload)
    checkpoint.save(path, {**tiny_pretrain_payload, "step": 123})  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-pretrain.pt"]
    assert checkpoint.load(path)["step"] == 123


def test_failed_save_keeps_the_old_checkpoint(saved):
    """A crash while writing must leave the previous checkpoint intact and no half-written file."""
    before = saved.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any error from the failing writer will do
        checkpoint.save(saved, {"state_dict": {}, "oops": lambda: None})  # lambdas cannot be pickled
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    checkpoint.load(saved)


def _corrupt_variants(good: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        "random_bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty": b"",
        "truncated_half": good[: len(good) // 2],
        "truncated_tail": good[:-100],
        "truncated_head": good[:16],
        "bad_magic_pickle": pickle.dumps({"format": checkpoint.FORMAT}, protocol=2),
    }


@pytest.mark.parametrize("variant", ["random_bytes", "empty", "truncated_half", "truncated_tail",
                                     "truncated_head", "bad_magic_pickle"])
def test_corrupt_file_raises_checkpoint_error(saved, variant):
    bad = saved.parent / "bad.pt"
    bad.write_bytes(_corrupt_variants(saved.read_bytes())[variant])
    with pytest.raises(CheckpointError, match="bad.pt"):
        checkpoint.load(bad)


@pytest.mark.parametrize("content", [
    pytest.param(b"hello world", id="text"),
    pytest.param(b"hxyz", id="h"),
    pytest.param(b".xyz", id="dot"),
    pytest.param(b"Gxyz", id="G"),
    pytest.param(b"c\x8d\xaf{\x03", id="c"),
])
def test_corrupt_non_zip_file_raises_checkpoint_error(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError):
        checkpoint.load(bad)


def test_missing_file_and_folder_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path)


def test_foreign_torch_file_is_refused(tmp_path):
    """A valid torch file that is not a nanocot checkpoint (no format tag, or not a dict)."""
    for i, obj in enumerate([{"state_dict": {"w": torch.ones(2)}}, [1, 2, 3], torch.ones(3)]):
        path = tmp_path / f"foreign{i}.pt"
        torch.save(obj, path)
        with pytest.raises(CheckpointError, match="not a nanocot checkpoint"):
            checkpoint.load(path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"format": checkpoint.FORMAT, "state_dict": {}, "extra": Custom()}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        checkpoint.load(path)


def test_pickled_code_is_not_executed(tmp_path):
    """Loading a hostile checkpoint must refuse it without running the code it carries."""
    marker = tmp_path / "pwned"
    path = tmp_path / "exploit.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Exploit(marker)}, path)
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    assert not marker.exists()


def test_expect_mismatch_names_the_key(saved):
    """Loading a tiny checkpoint where a small one is expected must fail loudly, naming what differs."""
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(saved, expect={"size": "small"})
    message = str(info.value)
    assert "size" in message and "'tiny'" in message and "'small'" in message
    with pytest.raises(CheckpointError, match="stage"):
        checkpoint.load(saved, expect={"size": "tiny", "stage": "direct"})
    with pytest.raises(CheckpointError, match="vocab"):
        checkpoint.load(saved, expect={"vocab": ["a", "b"]})
