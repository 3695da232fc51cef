"""Data parallelism under torchrun (gloo on the CPU): two processes train what one process trains at the same
global batch, the first process alone writes and says `world size 2` first, and bad launches are one-line
errors with exit code 2, never a hang."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanocot import checkpoint
from nanocot.cli import seed_list

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                         "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _run(args: list[str], nproc: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    """A script with one process, or `nproc` under torchrun on this machine."""
    launch = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(launch + args, cwd=ROOT, env=env or _env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


PRETRAIN = ["train_sft.py", "--size", "tiny", "--stage", "pretrain", "--steps", "30", "--batch-size", "8",
            "--corpus-lines", "300", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[int, Path]:
    """The same tiny 30-step pretraining with one process and with two: folder per world size."""
    folders = {}
    for nproc in (1, 2):
        folder = tmp_path_factory.mktemp(f"world{nproc}")
        done = _run(PRETRAIN + ["--ckpt-dir", str(folder)], nproc)
        assert done.returncode == 0, done.stderr[-2000:]
        if nproc == 2:
            assert done.stdout.splitlines()[0] == "world size 2", done.stdout[:200]
        folders[nproc] = folder
    return folders


def test_two_processes_train_the_one_process_run(pretrained):
    """Each process takes half of the global batch of 8 and the gradients are summed over the two: the loss
    curve equals the one-process run's up to float reduction order (the sum of two half-batch sums is not
    bit for bit the one-batch sum), measured at < 1e-5 relative here; tolerance 1e-4 over 30 Adam steps."""
    one = checkpoint.load(pretrained[1] / "tiny-pretrain.pt")
    two = checkpoint.load(pretrained[2] / "tiny-pretrain.pt")
    assert len(one["record"]["loss"]) == len(two["record"]["loss"]) == 30
    assert two["record"]["loss"] == pytest.approx(one["record"]["loss"], rel=1e-4)
    assert two["record"]["tokens"] == one["record"]["tokens"], "tokens count the global batch"
    for name, value in one["state_dict"].items():
        assert torch.allclose(two["state_dict"][name], value, atol=1e-4), name


def test_two_process_reinforce_ends_on_the_one_process_weights(pretrained, tmp_path):
    """REINFORCE with the groups split over two processes (each group sampled from its own seeded stream)
    ends on the weights of the one-process run with --group-streams, to float tolerance; with replay, every
    process draws the same unsolved problems again."""
    warmup = _run(["train_sft.py", "--size", "tiny", "--stage", "warmup", "--steps", "300", "--batch-size",
                   "32", "--eval-every", "1000", "--lr", "3e-3", "--device", "cpu", "--threads", "1",
                   "--ckpt-dir", str(pretrained[1])])  # a 5% start, so that some groups have a signal
    assert warmup.returncode == 0, warmup.stderr[-2000:]
    rl = ["train_rl.py", "--size", "tiny", "--steps", "6", "--prompts", "4", "--samples", "8",
          "--temperature", "1", "--max-new-tokens", "40", "--eval-every", "100", "--eval-problems", "8",
          "--pass-problems", "4", "--pass-k", "2", "--device", "cpu", "--threads", "1", "--warmup-steps", "0",
          "--lr", "3e-3", "--replay", "0.5"]  # the unsolved problems are known to every process
    weights = {}
    for nproc in (1, 2):
        folder = tmp_path / f"world{nproc}"  # both start from the same warm-up
        folder.mkdir()
        for name in ("tiny-pretrain.pt", "tiny-warmup.pt"):
            (folder / name).write_bytes((pretrained[1] / name).read_bytes())
        done = _run(rl + ["--ckpt-dir", str(folder)] + (["--group-streams"] if nproc == 1 else []), nproc)
        assert done.returncode == 0, done.stderr[-2000:]
        saved = checkpoint.load(folder / "tiny-cot.pt")
        assert saved["rl_config"]["group_streams"] is True
        weights[nproc] = saved["state_dict"]
        assert sum(s["skipped"] == 0 for s in saved["record"]["steps"]) >= 2, "the test needs learning steps"
    moved = checkpoint.load(pretrained[1] / "tiny-warmup.pt")["state_dict"]
    assert any(not torch.equal(weights[1][k], moved[k]) for k in moved), "the test needs the weights to move"
    for name, value in weights[1].items():
        assert torch.allclose(weights[2][name], value, atol=1e-4), name


@pytest.mark.parametrize("args, message", [
    (PRETRAIN[:8] + ["7", "--device", "cpu"], "--batch-size 7 does not split evenly over 2 processes"),
    (PRETRAIN + ["--backend", "nccl"], "backend nccl needs CUDA"),  # --device cpu
    (["-m", "nanocot", "--quick", "--seeds", "0"], "1 seeds for 2 processes"),
])
def test_bad_launches_are_one_line_errors(tmp_path, args, message):
    """As torchrun would start rank 0 of 2, but with no second process: each mistake is caught before the
    processes connect, so the run exits 2 with one line instead of waiting for a peer forever."""
    env = {**_env(), "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29531"}
    done = _run(args + (["--ckpt-dir", str(tmp_path)] if args[0].endswith(".py") else
                        ["--ckpt-dir", str(tmp_path), "--out", str(tmp_path / "eval")]), env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr[-1000:]


def test_seed_ranges():
    import argparse

    assert seed_list("0-3,7") == [0, 1, 2, 3, 7] and seed_list("5") == [5] and len(seed_list("0-31")) == 32
    for bad in ("9-5", "0-3,2", "a-b", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)


def test_a_sweep_spreads_seeds_over_processes(tmp_path):
    """`torchrun --nproc_per_node 2 -m nanocot --quick --seeds 0-2` (tiny presets here, for time): each
    process runs whole seeds (0 and 2, then 1); seed 2 cannot write its first checkpoint (a folder stands
    where the file goes), so it is reported by seed, the others' results are kept and summarised, and the
    run exits 1."""
    (tmp_path / "seed-2" / "tiny-pretrain.pt").mkdir(parents=True)
    done = _run(["-m", "nanocot", "--quick", "--seeds", "0-2", "--small", "tiny", "--large", "tiny",
                 "--device", "cpu", "--ckpt-dir", str(tmp_path), "--out", str(tmp_path / "eval")], nproc=2)
    assert done.returncode != 0 and "seed 2 failed" in done.stderr, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "world size 2"
    summary = (tmp_path / "eval" / "seeds.md").read_text()
    assert "seeds 0, 1\n" in summary
    for seed in (0, 1):
        assert (tmp_path / f"seed-{seed}" / "tiny-cot.pt").exists()
        assert (tmp_path / "eval" / f"seed-{seed}" / "metrics.json").exists()
