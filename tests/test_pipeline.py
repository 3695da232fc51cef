"""`python -m nanocot`: stage bookkeeping, the seed summary, and bad input."""

import math

import pytest
import torch

from nanocot import checkpoint, pipeline
from nanocot.__main__ import main as pipeline_main
from nanocot.pipeline import Stage, StageFailed, chains, checkpoint_state, flatten, stages, summarise
from tests.conftest import cli_exit_code


def test_stages_cover_the_experiment_in_order():
    names = [s.name for s in stages("small", "large", quick=False)]
    assert names == ["large-pretrain", "small-pretrain", "large-direct", "small-direct", "small-warmup", "small-cot"]
    assert all(s.output == f"{s.name}.pt" for s in stages("small", "large", quick=False))


def test_chains_split_by_size_and_keep_order():
    """The two chains that run side by side: each reads only its own earlier checkpoints."""
    names = [[s.name for s in chain] for chain in chains(stages("small", "large", quick=False))]
    assert names == [["large-pretrain", "large-direct"], ["small-pretrain", "small-direct", "small-warmup", "small-cot"]]
    assert len(chains(stages("tiny", "tiny", quick=True))) == 1  # one preset for both: one chain, never two writers


def test_a_failing_chain_stops_the_other_cleanly(tmp_path, monkeypatch):
    """One chain fails: its error is raised with the end of its log, and the other chain's running stage is
    sent SIGINT (the training scripts save a resumable checkpoint on it) instead of running to the end."""
    import time

    (tmp_path / "slow.py").write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: (print('saved, stopping'), sys.exit(130)))\n"
        "print('working', flush=True)\ntime.sleep(60)\n")
    (tmp_path / "bad.py").write_text("import sys, time\ntime.sleep(1)\nprint('error: bad input', file=sys.stderr)\nsys.exit(2)\n")
    monkeypatch.setattr(pipeline, "REPO", tmp_path)
    chain_list = [[Stage("a-slow", "slow.py", (), "a.pt", size="a")], [Stage("b-bad", "bad.py", (), "b.pt", size="b"),
                                                                       Stage("b-never", "slow.py", (), "c.pt", size="b")]]
    start, timings = time.perf_counter(), {}
    with pytest.raises(StageFailed) as failure:
        pipeline.run_side_by_side(chain_list, tmp_path, [], False, timings, heartbeat_s=0.5)
    assert time.perf_counter() - start < 30
    assert failure.value.code == 2 and "error: bad input" in str(failure.value)
    assert "saved, stopping" in (tmp_path / "logs" / "a-slow.log").read_text()
    assert not (tmp_path / "logs" / "b-never.log").exists() and timings == {}


def test_quick_stages_pass_small_budgets_and_full_ones_pass_none():
    full = stages("small", "large", quick=False)
    assert all("--steps" not in s.args for s in full)  # the defaults of each script decide
    assert all("--steps" in s.args for s in stages("tiny", "tiny", quick=True))


def test_checkpoint_state(tmp_path):
    path = tmp_path / "x.pt"
    assert checkpoint_state(path) == "missing"
    checkpoint.save(path, {"w": torch.zeros(2)})
    assert checkpoint_state(path) == "done"
    checkpoint.save(path, {"w": torch.zeros(2), "train_state": {"step": 3}})
    assert checkpoint_state(path) == "partial"
    checkpoint.save(path, {"w": torch.zeros(2), "rl_state": {}})
    assert checkpoint_state(path) == "partial"
    path.write_bytes(b"not a checkpoint")
    assert checkpoint_state(path) == "missing"


def test_flatten_keeps_finite_numbers_only():
    tree = {"a": {"b": 1, "c": [1, 2], "d": "text", "e": float("nan"), "f": True}, "g": 0.5}
    assert flatten(tree) == {"a.b": 1.0, "g": 0.5}


def test_summarise_mean_interval_and_common_keys():
    per_seed = {0: {"acc": 0.90, "only0": 1.0}, 1: {"acc": 0.92}, 2: {"acc": 0.94}}
    s = summarise(per_seed)
    assert set(s) == {"acc"}  # a key missing from one seed is not summarised
    assert s["acc"]["mean"] == pytest.approx(0.92)
    assert s["acc"]["std"] == pytest.approx(0.02)
    assert s["acc"]["ci95"] == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert s["acc"]["values"] == [0.90, 0.92, 0.94]
    assert summarise({0: {"acc": 0.5}})["acc"]["ci95"] is None  # one seed: no interval


@pytest.mark.parametrize("argv", [
    ["--seeds", "a,b"], ["--seeds", ""], ["--seeds", "1,1"], ["--seeds", "-1"],
    ["--small", "huge"], ["--threads", "-1"], ["--jobs", "0"], ["--bogus"],
])
def test_bad_input_exits_2_with_one_line(argv, tmp_path, capsys):
    code = cli_exit_code(pipeline_main, argv + ["--ckpt-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
