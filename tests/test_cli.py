"""train_sft.py as a user meets it: bad input gives one line on stderr and exit code 2, never a traceback,
and never touches a checkpoint; a tiny pretrain -> direct run succeeds and writes checkpoints and plots.

Each subprocess pays ~3 s of imports, so only one error case per error path runs as a subprocess (all of
them concurrently with the end-to-end run, from one fixture); every case also runs in-process.
"""

import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import cli_exit_code

from nanocot import checkpoint

TIMEOUT = 120


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # tiny models; avoid oversubscribing a small shared machine
    env["MKL_NUM_THREADS"] = "1"
    return env


def _run(root: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "train_sft.py"), *args], cwd=cwd, env=_env(root),
                          capture_output=True, text=True, timeout=TIMEOUT)


def _snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes' hash and mtime: 'nothing written' must be checkable."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# (id, arguments, files to place in the checkpoint folder, text the error line must contain)
# Arguments add --steps 1 and a small corpus wherever possible, so a missed check fails fast instead of
# training.
QUICK = ["--steps", "1", "--corpus-lines", "300"]
ERROR_CASES = [
    ("unknown_size", ["--size", "huge", "--stage", "pretrain", *QUICK], {"tiny-pretrain.pt": "good"},
     "--size"),
    ("unknown_stage", ["--size", "tiny", "--stage", "rl", *QUICK], {"tiny-pretrain.pt": "good"}, "--stage"),
    ("steps_zero", ["--size", "tiny", "--stage", "pretrain", "--steps", "0", "--corpus-lines", "300"],
     {"tiny-pretrain.pt": "good"}, "--steps"),
    ("steps_negative", ["--size", "tiny", "--stage", "pretrain", "--steps", "-3", "--corpus-lines", "300"],
     {"tiny-pretrain.pt": "good"}, "--steps"),
    ("min_modulus_1", ["--size", "tiny", "--stage", "pretrain", "--min-modulus", "1", *QUICK],
     {"tiny-pretrain.pt": "good"}, "modulus"),
    ("modulus_inverted", ["--size", "tiny", "--stage", "pretrain", "--min-modulus", "20",
                          "--max-modulus", "12", *QUICK], {"tiny-pretrain.pt": "good"}, "modulus"),
    ("easier_fraction", ["--size", "tiny", "--stage", "pretrain", "--easier-fraction", "1.5", *QUICK],
     {"tiny-pretrain.pt": "good"}, "--easier-fraction"),
    ("stop_nearest_pretrain", ["--size", "tiny", "--stage", "pretrain", "--stop-nearest", *QUICK],
     {"tiny-pretrain.pt": "good"}, "--stop-nearest"),
    ("stop_bisect_pretrain", ["--size", "tiny", "--stage", "pretrain", "--stop-bisect", *QUICK],
     {"tiny-pretrain.pt": "good"}, "--stop-bisect"),
    ("stop_nearest_and_bisect", ["--size", "tiny", "--stage", "warmup", "--stop-nearest", "--stop-bisect",
                                 *QUICK], {"tiny-pretrain.pt": "good"}, "give one"),
    ("missing_pretrain", ["--size", "tiny", "--stage", "direct", *QUICK], {}, "tiny-pretrain.pt"),
    ("corrupt_pretrain", ["--size", "tiny", "--stage", "direct", *QUICK], {"tiny-pretrain.pt": "truncated"},
     "tiny-pretrain.pt"),
    ("random_bytes_pretrain", ["--size", "tiny", "--stage", "warmup", *QUICK], {"tiny-pretrain.pt": "random"},
     "tiny-pretrain.pt"),
    ("other_size_pretrain", ["--size", "small", "--stage", "direct", *QUICK], {"small-pretrain.pt": "good"},
     "size"),
    # flags one stage reads are refused at another, not silently ignored
    ("num_examples_pretrain", ["--size", "tiny", "--stage", "pretrain", "--num-examples", "5", *QUICK], {},
     "--num-examples applies to the warmup and direct stages only"),
    ("read_paraphrasers_direct",
     ["--size", "tiny", "--stage", "direct", "--read-paraphrasers", "swap", *QUICK],
     {"tiny-pretrain.pt": "good"}, "--read-paraphrasers applies to the warmup stage only"),
    ("balanced_steps_direct",
     ["--size", "tiny", "--stage", "direct", "--balanced-steps", "0.5", *QUICK],
     {"tiny-pretrain.pt": "good"}, "--balanced-steps applies to the warmup stage only"),
    ("resume_nothing", ["--size", "tiny", "--stage", "pretrain", "--resume", *QUICK], {},
     "nothing to resume"),
]


SUBPROCESS_CASES = ["unknown_size", "min_modulus_1", "missing_pretrain", "corrupt_pretrain",
                    "other_size_pretrain"]
# One per distinct error path (argparse, validate -> UsageError, missing file, CheckpointError: corrupt,
# mismatch); every case also runs in-process below, which costs no import time.


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, tiny_pretrain_payload) -> bytes:
    path = tmp_path_factory.mktemp("good") / "tiny-pretrain.pt"
    checkpoint.save(path, tiny_pretrain_payload)
    return path.read_bytes()


def _prepare(work: Path, case_id: str, good: bytes) -> tuple[Path, list[str]]:
    """A checkpoint folder holding the case's files; returns it and the full argument list."""
    _, args, files, _ = next(c for c in ERROR_CASES if c[0] == case_id)
    contents = {"good": good, "truncated": good[: len(good) // 2], "random": bytes(range(256)) * 16}
    folder = work / "ck"
    folder.mkdir(parents=True)
    for name, kind in files.items():
        (folder / name).write_bytes(contents[kind])
    return folder, [*args, "--ckpt-dir", str(folder)]


def _e2e_chain(root: Path, work: Path):
    pre = _run(root, ["--size", "tiny", "--stage", "pretrain", "--steps", "20", "--ckpt-dir", "tmp",
                      "--corpus-lines", "2000"], work)
    direct = _run(root, ["--size", "tiny", "--stage", "direct", "--steps", "20", "--eval-every", "10",
                         "--ckpt-dir", "tmp"], work) if pre.returncode == 0 else None
    return work / "tmp", pre, direct


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory, good_checkpoint, root) -> dict:
    """All subprocesses of this module, started together: the end-to-end chain and the error cases."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        e2e = pool.submit(_e2e_chain, root, tmp_path_factory.mktemp("e2e"))
        jobs = {}
        for case_id in SUBPROCESS_CASES:
            work = tmp_path_factory.mktemp(case_id)
            folder, args = _prepare(work, case_id, good_checkpoint)
            before = _snapshot(folder)
            jobs[case_id] = (pool.submit(_run, root, args, work), folder, before)
        results = {cid: (f.result(), before, _snapshot(folder)) for cid, (f, folder, before) in jobs.items()}
        results["e2e"] = e2e.result()
    return results


def _check_error(returncode, stderr: str, expected: str, before: dict, after: dict) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert returncode == 2, stderr
    assert len(lines) == 1, stderr
    assert expected in lines[0], lines[0]
    assert after == before, "a failed run must not create or overwrite any checkpoint"


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_subprocess(subprocess_runs, case_id):
    """The real entry point: one line on stderr, exit code 2, no traceback, nothing written."""
    proc, before, after = subprocess_runs[case_id]
    expected = next(c[3] for c in ERROR_CASES if c[0] == case_id)
    _check_error(proc.returncode, proc.stderr, expected, before, after)


@pytest.mark.parametrize("case_id", [c[0] for c in ERROR_CASES])
def test_bad_input_in_process(tmp_path, good_checkpoint, capsys, case_id):
    """Every bad-input case through train_sft.main + run_cli (what `python train_sft.py` runs)."""
    folder, args = _prepare(tmp_path, case_id, good_checkpoint)
    before = _snapshot(folder)
    code = _main_exit_code(args)
    expected = next(c[3] for c in ERROR_CASES if c[0] == case_id)
    _check_error(code, capsys.readouterr().err, expected, before, _snapshot(folder))


# ----------------------------------------------------------------------------------------------- success


@pytest.fixture(scope="module")
def end_to_end(subprocess_runs):
    return subprocess_runs["e2e"]


def test_tiny_pretrain_then_direct_succeeds(end_to_end):
    """The documented workflow, end to end: both stages exit 0 and leave checkpoints and plots."""
    folder, pre, direct = end_to_end
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert direct is not None and direct.returncode == 0, direct.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["direct-sft.png", "tiny-direct.png", "tiny-direct.pt",
                                                        "tiny-pretrain.png", "tiny-pretrain.pt"]
    for name in ("tiny-pretrain.png", "tiny-direct.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny-direct.pt" in direct.stdout and "test_accuracy" in direct.stdout


def test_end_to_end_checkpoints_are_consistent(end_to_end):
    """The direct checkpoint inherits the pretrained task and history, and evaluated where it was told to."""
    folder, pre, direct = end_to_end
    if direct is None or direct.returncode != 0:
        pytest.fail("end-to-end run failed (see test_tiny_pretrain_then_direct_succeeds)")
    pre_ck = checkpoint.load(folder / "tiny-pretrain.pt", expect={"size": "tiny", "stage": "pretrain"})
    dir_ck = checkpoint.load(folder / "tiny-direct.pt", expect={"size": "tiny", "stage": "direct"})
    assert dir_ck["task_config"] == pre_ck["task_config"]
    assert dir_ck["corpus_config"]["num_lines"] == 2000
    assert [h["stage"] for h in dir_ck["history"]] == ["pretrain", "direct"]
    assert len(pre_ck["record"]["loss"]) == 20 and len(dir_ck["record"]["loss"]) == 20
    evals = dir_ck["record"]["eval"]
    assert [e["step"] for e in evals] == [0, 10, 20]
    assert all(0.0 <= e["test_accuracy"] <= 1.0 and 0.0 <= e["train_accuracy"] <= 1.0 for e in evals)
    assert dir_ck["train_config"]["steps"] == 20


# ---------------------------------------------------------------------------- bugs found (run in-process)


def _main_exit_code(argv: list[str]) -> int:
    import train_sft

    return cli_exit_code(train_sft.main, argv)


def test_negative_seed_is_a_usage_error(tmp_path):
    assert _main_exit_code(["--size", "tiny", "--seed", "-1", *QUICK, "--ckpt-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.glob("*.pt"))


def test_modulus_beyond_vocabulary_is_a_usage_error(tmp_path):
    args = ["--size", "tiny", "--max-modulus", "150", "--steps", "1", "--corpus-lines", "2000"]
    assert _main_exit_code([*args, "--ckpt-dir", str(tmp_path)]) == 2


def test_too_small_corpus_is_a_usage_error(tmp_path):
    assert _main_exit_code(["--size", "tiny", "--steps", "1", "--corpus-lines", "5",
                            "--ckpt-dir", str(tmp_path)]) == 2


def test_infinite_lr_is_a_usage_error(tmp_path):
    assert _main_exit_code(["--size", "tiny", "--lr", "inf", "--steps", "3", "--corpus-lines", "300",
                            "--ckpt-dir", str(tmp_path)]) == 2


def test_text_file_as_pretrain_checkpoint_is_a_usage_error(tmp_path):
    (tmp_path / "tiny-pretrain.pt").write_text("hello world")
    assert _main_exit_code(["--size", "tiny", "--stage", "direct", "--steps", "1",
                            "--ckpt-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "tiny-direct.pt").exists()


def test_operands_that_do_not_fit_are_a_usage_error(tmp_path):
    folder = str(tmp_path)
    code = _main_exit_code(["--size", "tiny", "--operands", "60", "--min-operands", "60", *QUICK,
                            "--ckpt-dir", folder])
    if code == 0:  # pretraining accepted it; the task stage must then refuse it cleanly
        code = _main_exit_code(["--size", "tiny", "--stage", "direct", "--operands", "60",
                                "--min-operands", "60", "--steps", "1", "--eval-every", "1",
                                "--ckpt-dir", folder])
    assert code == 2


def test_easier_fraction_is_the_task_mix_at_pretraining_and_the_stage_mix_later(tmp_path, good_checkpoint):
    """--easier-fraction at pretraining sets the task (inherited by later stages); at warm-up it sets only
    that stage's own mix, recorded in its train config, and leaves the task (and so the test split) alone."""
    (tmp_path / "tiny-pretrain.pt").write_bytes(good_checkpoint)
    pretrained = checkpoint.load(tmp_path / "tiny-pretrain.pt")
    assert _main_exit_code(["--size", "tiny", "--stage", "warmup", "--steps", "1",
                            "--easier-fraction", "0.95", "--ckpt-dir", str(tmp_path)]) == 0
    warm = checkpoint.load(tmp_path / "tiny-warmup.pt")
    assert warm["train_config"]["easier_fraction"] == 0.95
    assert warm["task_config"] == pretrained["task_config"]
    assert _main_exit_code(["--size", "tiny", "--stage", "direct", "--steps", "1",
                            "--ckpt-dir", str(tmp_path)]) == 0
    # None: the task's mix
    assert checkpoint.load(tmp_path / "tiny-direct.pt")["train_config"]["easier_fraction"] is None
    assert _main_exit_code(["--size", "tiny", "--easier-fraction", "0.25", *QUICK,
                            "--ckpt-dir", str(tmp_path / "p")]) == 0
    assert checkpoint.load(tmp_path / "p" / "tiny-pretrain.pt")["task_config"]["easier_fraction"] == 0.25


@pytest.mark.parametrize("argv", [["--stage", "direct"], ["--stage", "pretrain", "--resume"]])
def test_a_missing_input_creates_no_folder(tmp_path, capsys, argv):
    """A mistyped --ckpt-dir is refused before anything is created: no empty folder is left behind."""
    folder = tmp_path / "typo"
    assert _main_exit_code(["--size", "tiny", *argv, *QUICK, "--ckpt-dir", str(folder)]) == 2
    assert "not found" in capsys.readouterr().err and not folder.exists()
