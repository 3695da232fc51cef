"""Checkpoints: one file per trained model, written atomically, loaded without unpickling code.

- Holds weights, the model/task/corpus/training configs as plain dicts, the vocabulary, the stage's
  record (curves, tokens, seconds, FLOPs) and the records of the stages before it.
- Written to a temporary file in the same folder, flushed and fsynced, then renamed over the target (and the
  folder fsynced): a crash leaves the old checkpoint or the new one, never half of one.
- Loaded with `torch.load(weights_only=True)`, which refuses pickled code; every failure becomes a
  `CheckpointError` whose message names the file and the problem, and a mismatch (another preset,
  vocabulary or task) names the field that differs rather than printing whole configs.
- A run in progress is saved with a `train_state` (SFT) or `rl_state` (RL) key: resumable, not finished.
  `load(..., finished=True)` refuses such a file, so no later stage starts from half a model.
"""

import os
import pickle
import tempfile
from pathlib import Path

import torch

from nanocot.config import ModelConfig, from_dict
from nanocot.model import GPT

FORMAT = "nanocot-1"


class CheckpointError(ValueError):
    pass


def save(path: str | Path, payload: dict) -> None:
    """Write atomically; a full disk or unwritable folder becomes a CheckpointError naming the file, and
    the previous checkpoint stays as it was."""
    path = Path(path)
    try:
        _write(path, payload)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}; the previous one (if any) "
                              "is intact") from None


def _write(path: Path, payload: dict) -> None:
    write_atomically(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def write_atomically(path: Path, write) -> None:
    """`write(f)` into a temporary file beside `path`, fsync it, rename it over `path`, then fsync the folder
    (without that, a power cut can undo the rename): a crash leaves the old file or the new one, never half
    of one. Also used for evaluate.py's metrics.json, which the pipeline reads to decide what to redo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left behind by a writer that was SIGKILLed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # folders cannot be opened for fsync everywhere (Windows): there the rename is all we can do
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def describe_mismatch(key: str, got, want) -> str:
    """Name what differs in a short line: the differing fields of a config dict, the first differing
    entry of a vocabulary, or the two values."""
    if isinstance(got, dict) and isinstance(want, dict):
        fields = sorted(set(got) | set(want), key=str)
        diffs = [f"{k}={got.get(k, '<missing>')!r} (expected {want.get(k, '<missing>')!r})"
                 for k in fields if got.get(k) != want.get(k)]
        return f"{key} differs: " + ", ".join(diffs)
    if isinstance(got, list) and isinstance(want, list):
        i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        at = lambda xs: repr(xs[i]) if i < len(xs) else "<end>"
        what = ("a different tokenizer vocabulary (made by another version of nanocot; retrain it)"
                if key == "vocab" else f"{key} differs")
        return (f"{what}: {len(got)} entries vs {len(want)} expected, first difference at {i}: "
                f"{at(got)} vs {at(want)}")
    return f"{key}={got!r}, expected {want!r}"


def unfinished(payload: dict) -> str | None:
    """Why a payload is a run in progress rather than a trained model, or None if it is finished."""
    for key in ("train_state", "rl_state"):
        if key in payload:
            return (f"an unfinished {payload.get('stage', '?')} run (step {payload.get('step', '?')}), "
                    "resumable with --resume")
    return None


def load(path: str | Path, expect: dict | None = None, finished: bool = False) -> dict:
    """Load a checkpoint; `expect` maps top-level keys to required values (e.g. {"size": "small"});
    `finished=True` refuses a run in progress (a resumable checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() and "unsupported" in str(e).lower():
            raise CheckpointError(f"checkpoint {path} holds pickled objects other than tensors and plain "
                                  "data (possibly code); refusing to load it") from None
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt") from None
    except Exception as e:  # torch's legacy loader raises KeyError, struct.error, ... on junk bytes
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a nanocot checkpoint (format {FORMAT})")
    for key, want in (expect or {}).items():
        if payload.get(key) != want:
            raise CheckpointError(f"checkpoint {path} has {describe_mismatch(key, payload.get(key), want)}")
    if finished and unfinished(payload):
        raise CheckpointError(f"checkpoint {path} is {unfinished(payload)}; finish it before using it")
    return payload


def build_model(payload: dict, device) -> GPT:
    """Rebuild a model from a checkpoint payload."""
    model = GPT(from_dict(ModelConfig, payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device)
