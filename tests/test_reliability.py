"""Reliability: exact resume, kill-safe checkpoints, divergence, safe loading, bad input, determinism.

Each guarantee is one test (or one small group) here; the whole file must stay fast on a 2-core CPU:
training runs are tiny and in-process, and only the SIGKILL/SIGTERM test starts real `train_sft.py`
processes (~3 s of imports each). Proven elsewhere and not repeated: a crafted pickle checkpoint is refused
without running its code (tests/test_checkpoint.py::test_pickled_code_is_not_executed), RL's trainer state
continues exactly (tests/test_rl.py::test_state_dict_round_trip_continues_exactly; here only its trip
through a checkpoint file is added).
"""

import copy
import errno
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import cli_exit_code, make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanocot.fast.cpu
import nanocot.sft
import train_rl
import train_sft
from nanocot import checkpoint
from nanocot.cli import adam_beta, nonnegative_float, positive_float, positive_int, probability, seed_int
from nanocot.config import CorpusConfig, TaskConfig, TrainConfig
from nanocot.rl import Reinforce, RLConfig
from nanocot.sft import finetune, pretrain
from nanocot.task import COT, DIRECT, ModularAddition, parse_answer
from nanocot.tokenizer import Tokenizer
from nanocot.trace import Trace, parse_trace, split_answer

TINY_TRAIN = TrainConfig(steps=8, batch_size=4, warmup_steps=2, eval_every=0, lr=1e-2, seed=3)
TINY_CORPUS = CorpusConfig(num_lines=300)


def _interrupt_at(monkeypatch, call: int, sig: int = signal.SIGINT) -> None:
    """Deliver a real signal (Ctrl-C's SIGINT by default) while the `call`-th training step (0-based)
    computes its loss: the loop must finish that step, save, and stop before the next."""
    calls = {"n": 0}
    real = nanocot.fast.cpu.masked_loss  # the loss the loop takes on a CPU

    def loss_then_signal(model, batch):
        if calls["n"] == call:
            signal.raise_signal(sig)
        calls["n"] += 1
        return real(model, batch)

    monkeypatch.setattr(nanocot.fast.cpu, "masked_loss", loss_then_signal)


def _through_file(payload: dict, tmp_path: Path) -> dict:
    """Save and load, as a real resume would: everything must survive weights_only loading."""
    path = tmp_path / "resume.pt"
    checkpoint.save(path, payload)
    return checkpoint.load(path)


def _assert_same_run(a: dict, b: dict) -> None:
    for key in ("step", "loss", "token_accuracy", "eval", "tokens", "flops"):
        assert a["record"][key] == b["record"][key], key
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name


@pytest.fixture(scope="module")
def uninterrupted() -> dict:
    return pretrain("tiny", TINY_TRAIN, TaskConfig(), TINY_CORPUS, "cpu")


# ------------------------------------------------------------------------------------------- exact resume


def test_pretrain_resume_is_bit_exact(uninterrupted, monkeypatch, tmp_path):
    """Ctrl-C at step 5 saves a resumable payload; resuming it reproduces the uninterrupted run's losses and
    final weights exactly (model, optimizer, scheduler step, torch and numpy streams, data position)."""
    saved = []
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        pretrain("tiny", TINY_TRAIN, TaskConfig(), TINY_CORPUS, "cpu", save=saved.append)
    monkeypatch.undo()
    assert [p["step"] for p in saved] == [5] and saved[0]["train_state"]["step"] == 5
    resumed = pretrain("tiny", TINY_TRAIN, TaskConfig(), TINY_CORPUS, "cpu",
                       resume=_through_file(saved[0], tmp_path))
    _assert_same_run(uninterrupted, resumed)
    assert "train_state" not in resumed and resumed["step"] == TINY_TRAIN.steps


@pytest.mark.parametrize("stage, num_examples", [("direct", 0), ("warmup", 16)])
def test_finetune_resume_is_bit_exact(tiny_pretrain_payload, monkeypatch, tmp_path, stage, num_examples):
    """Direct SFT (fresh problems each step) and CoT warm-up (a fixed pool): interrupted at step 4, where an
    evaluation is due, and resumed, they match the uninterrupted run, evaluations included; the periodic
    checkpoint (every 3 steps) is resumable too."""
    for name in ("direct_accuracy", "cot_accuracy"):  # the real evaluations, on 20 problems instead of 1,300
        real = getattr(nanocot.sft, name)
        monkeypatch.setattr(nanocot.sft, name,
                            lambda m, tok, problems, real=real: real(m, tok, problems[:20]))
    # a 50-problem test set: drawing the default 1,000 by rejection takes seconds per run
    tiny_pretrain_payload = {**tiny_pretrain_payload,
                             "task_config": {**tiny_pretrain_payload["task_config"], "test_size": 50}}
    cfg = replace(TINY_TRAIN, eval_every=4 if stage == "direct" else 0)
    whole = finetune(tiny_pretrain_payload, stage, cfg, "cpu", num_examples=num_examples)
    saved, real_loss = [], nanocot.fast.cpu.masked_loss
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_pretrain_payload, stage, cfg, "cpu", num_examples=num_examples, save=saved.append,
                 save_every=3)
    monkeypatch.setattr(nanocot.fast.cpu, "masked_loss", real_loss)
    assert [p["step"] for p in saved] == [3, 4]
    for partial in saved:
        loaded = _through_file(partial, tmp_path)
        resumed = finetune(loaded, stage, cfg, "cpu", num_examples=num_examples, resume=loaded)
        _assert_same_run(whole, resumed)
        assert resumed["history"] == [*tiny_pretrain_payload["history"], resumed["history"][-1]]


def test_rl_trainer_state_survives_a_checkpoint_file(tmp_path):
    """RL's exact resume (tests/test_rl.py) needs its trainer state (AdamW, numpy/python/torch streams, with
    128-bit integers) to pass through checkpoint.save and weights_only loading unchanged."""
    task = ModularAddition(TaskConfig())
    trainer = Reinforce(make_model(len(Tokenizer()), std=0.1).train(), task,
                        RLConfig(prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, seed=5))
    trainer.step()
    state = trainer.state_dict()
    loaded = _through_file({"rl_state": state}, tmp_path)["rl_state"]
    other = Reinforce(copy.deepcopy(trainer.model), task, trainer.config)
    other.load_state_dict(loaded)
    assert other.rng.bit_generator.state == trainer.rng.bit_generator.state
    assert other.py_rng.getstate() == trainer.py_rng.getstate()
    assert torch.equal(other.generator.get_state(), trainer.generator.get_state())
    assert (other.step_index == 1
            and other.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys())


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_run_different_seed_differs(uninterrupted):
    """Tiny pretraining on CPU: the same seed gives identical losses and weights; another seed does not.
    (The end-to-end metrics.json version of this check belongs to evaluate.py's tests.)"""
    again = pretrain("tiny", TINY_TRAIN, TaskConfig(), TINY_CORPUS, "cpu")
    _assert_same_run(uninterrupted, again)
    other = pretrain("tiny", replace(TINY_TRAIN, seed=4), TaskConfig(), TINY_CORPUS, "cpu")
    assert other["record"]["loss"] != uninterrupted["record"]["loss"]
    assert not torch.equal(other["state_dict"]["W_E.weight"], uninterrupted["state_dict"]["W_E.weight"])


# ------------------------------------------------------------------------------------ kills from outside


def _env(root: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _launch(root: Path, work: Path, resume: bool) -> subprocess.Popen:
    args = ["--size", "tiny", "--stage", "pretrain", "--steps", "100000", "--save-every", "1",
            "--corpus-lines", "300", "--device", "cpu", "--threads", "1", "--ckpt-dir", "ck",
            *(["--resume"] if resume else [])]
    return subprocess.Popen([sys.executable, str(root / "train_sft.py"), *args], cwd=work, env=_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _complete_step(path: Path) -> int:
    """Load the checkpoint on disk (it must always load) and check it is one whole snapshot."""
    payload = checkpoint.load(path, expect={"size": "tiny", "stage": "pretrain"})
    state = payload["train_state"]
    assert payload["step"] == state["step"] == len(state["record"]["loss"]) == len(payload["record"]["loss"])
    return payload["step"]


def _watch(path: Path, proc: subprocess.Popen, past: int, seconds: float) -> int:
    """Read the checkpoint over and over while the process rewrites it every step, for `seconds` after it
    has moved past step `past`: a reader must never see a partial file, and steps never go back."""
    last, deadline = past, None
    while deadline is None or time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if path.exists():
            step = _complete_step(path)
            assert step >= last
            last = step
            if deadline is None and step > past:
                deadline = time.monotonic() + seconds
        time.sleep(0.02)
    return last


def _kill_twice(root: Path, work: Path) -> list[tuple[int, int]]:
    """Start, SIGKILL at a random moment, resume, SIGKILL again; returns (seen, on disk) per kill."""
    rng = random.Random(7)
    path, last, kills = work / "ck" / "tiny-pretrain.pt", 0, []
    for kill in range(2):
        proc = _launch(root, work, resume=kill > 0)
        seen = _watch(path, proc, last, rng.uniform(0.0, 0.4))
        proc.kill()  # SIGKILL: no handler, no cleanup, possibly mid-write
        proc.communicate(timeout=60)
        last = _complete_step(path)
        kills.append((seen, last))
    return kills


@pytest.fixture(scope="module", autouse=True)
def sigkill_runs(request, root, tmp_path_factory):
    """The two real training processes (~10 s, mostly imports) run in the background while the in-process
    tests of this module run (only when the SIGKILL test is selected)."""
    if not any(item.name == "test_sigkill_never_leaves_a_partial_checkpoint"
               for item in request.session.items):
        yield None
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_kill_twice, root, tmp_path_factory.mktemp("sigkill"))
        yield future
        future.result(timeout=300)  # never leave a subprocess behind


def test_sigkill_never_leaves_a_partial_checkpoint(sigkill_runs):
    """A tiny pretraining run saving every step is SIGKILLed at a random moment, resumed, and SIGKILLed
    again: while it runs, every read of the file loads as one whole snapshot and steps never go back;
    after each kill the file on disk loads and is the last snapshot a reader saw or a later one."""
    kills = sigkill_runs.result(timeout=300)
    assert len(kills) == 2 and all(after >= seen > 0 for seen, after in kills)
    assert kills[1][0] > kills[0][1], "the resumed run must have moved past the first kill"


def test_sigterm_saves_and_resume_continues_exactly(monkeypatch, capsys, tmp_path):
    """SIGTERM through the real entry point: exit 130, the message says how to resume, the checkpoint is
    resumable; `--resume` then finishes with the uninterrupted run's losses and weights."""
    argv = ["--size", "tiny", "--stage", "pretrain", "--steps", "8", "--corpus-lines", "300",
            "--device", "cpu", "--ckpt-dir", str(tmp_path / "a")]
    assert cli_exit_code(train_sft.main, argv) == 0
    real_loss = nanocot.fast.cpu.masked_loss
    _interrupt_at(monkeypatch, 4, signal.SIGTERM)
    stopped = [*argv[:-1], str(tmp_path / "b")]
    assert cli_exit_code(train_sft.main, stopped) == 130
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step 5" in message and "--resume" in message and "Traceback" not in message, message
    assert "train_state" in checkpoint.load(tmp_path / "b" / "tiny-pretrain.pt")
    monkeypatch.setattr(nanocot.fast.cpu, "masked_loss", real_loss)
    assert cli_exit_code(train_sft.main, [*stopped, "--resume"]) == 0
    whole, resumed = (checkpoint.load(tmp_path / d / "tiny-pretrain.pt") for d in "ab")
    _assert_same_run(whole, resumed)
    assert "train_state" not in resumed
    assert cli_exit_code(train_sft.main, [*stopped, "--resume"]) == 2  # a finished run: nothing to resume


# ----------------------------------------------------------------------------------------------- NaN / inf


def _poison(monkeypatch, step: int, where: str) -> None:
    """Make step `step` produce a NaN loss, or a finite loss whose gradient is NaN."""
    calls = {"n": 0}
    real = nanocot.fast.cpu.masked_loss  # the loss the loop takes on a CPU

    def poisoned(model, batch):
        loss, accuracy = real(model, batch)
        calls["n"] += 1
        if calls["n"] - 1 == step:
            if where == "loss":
                return loss * float("nan"), accuracy
            loss = loss.clone()
            loss.register_hook(lambda grad: grad * float("nan"))
        return loss, accuracy

    monkeypatch.setattr(nanocot.fast.cpu, "masked_loss", poisoned)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_stops_naming_the_step(monkeypatch, capsys, tmp_path, where):
    """NaN at step 4 with a checkpoint every 2 steps: exit 1, an error line naming the step, and the last
    good checkpoint (4 steps done) stays on disk with finite weights: the bad update never happened."""
    _poison(monkeypatch, 4, where)
    code = cli_exit_code(train_sft.main, ["--size", "tiny", "--stage", "pretrain", "--steps", "8",
                                          "--save-every", "2", "--corpus-lines", "300", "--device", "cpu",
                                          "--ckpt-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    assert ("Traceback" not in err and line.startswith("error:")
            and f"non-finite {where} at step 4" in line), line
    kept = checkpoint.load(tmp_path / "tiny-pretrain.pt")
    assert kept["step"] == 4 and "train_state" in kept
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())


# ------------------------------------------------------------------------------------------- safe loading


def _one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("change, flags, expected", [
    ({"model_config": "d_mlp"}, [], "d_mlp"),
    ({"vocab": 5}, [], "a different tokenizer vocabulary"),
    ({}, ["--max-modulus", "25"], "max_modulus=29"),
    ({"train_state": {}}, [], "unfinished pretrain run"),
], ids=["preset", "vocabulary", "task", "unfinished"])
def test_mismatched_checkpoint_is_refused_naming_the_mismatch(tiny_pretrain_payload, capsys, tmp_path,
                                                              change, flags, expected):
    """A pretrained checkpoint from another preset, vocabulary or task (or still in progress) is refused
    by the next stage with one line naming the field, and nothing is written."""
    payload = copy.deepcopy(tiny_pretrain_payload)
    if "model_config" in change:
        payload["model_config"]["d_mlp"] += 1
    if "vocab" in change:
        payload["vocab"][5] = "@"
    if "train_state" in change:
        payload["train_state"] = {}
    checkpoint.save(tmp_path / "tiny-pretrain.pt", payload)
    before = _snapshot(tmp_path)
    code = cli_exit_code(train_sft.main, ["--size", "tiny", "--stage", "direct", "--steps", "1",
                                          "--device", "cpu", "--ckpt-dir", str(tmp_path), *flags])
    assert expected in _one_error_line(code, capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


def test_disk_full_is_one_line_and_keeps_the_old_checkpoint(tiny_pretrain_payload, monkeypatch, capsys,
                                                            tmp_path):
    """ENOSPC while writing the checkpoint: one line, exit 2, the previous file untouched, no temp file."""
    checkpoint.save(tmp_path / "tiny-pretrain.pt", tiny_pretrain_payload)
    before = _snapshot(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    code = cli_exit_code(train_sft.main, ["--size", "tiny", "--stage", "pretrain", "--steps", "1",
                                          "--corpus-lines", "300", "--device", "cpu",
                                          "--ckpt-dir", str(tmp_path)])
    err = capsys.readouterr().err  # the progress bar shares stderr; the error is the last line
    assert code == 2 and "Traceback" not in err and "No space left" in err.strip().splitlines()[-1], err
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------- bad input, generated


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def _rejected_by(check):
    """Text that `check` (a flag's argparse type) refuses: a generator of bad values that cannot drift
    valid."""
    def refuses(text: str) -> bool:
        try:
            check(text)
        except Exception:
            return True
        return False

    typical = st.sampled_from(["0", "-1", "-7", "nan", "inf", "-inf", "1e999", "1.5", "abc", "", " ", "0x10",
                               "2**32", "4294967296", "1.0000001", "-0.5", "\n", "１"])
    return st.one_of(typical, st.text(max_size=12)).filter(refuses)


def _not_in(options):
    return st.one_of(st.sampled_from(["", "HUGE", "Tiny", " tiny", "pre-train", "\n"]),
                     st.text(max_size=10)).filter(lambda t: t not in options)


def _ints(*values: int):
    return st.sampled_from([str(v) for v in values])


BAD_DEVICE = st.one_of(st.just("cuda:x"),
                       st.sampled_from(["meta", "xla", "gpu", "CPU", "", "cpu:0:1", "tpu"]),
                       st.text(max_size=8).filter(
                           lambda t: t not in ("auto", "cpu", "mps") and not t.startswith("cuda")))
BAD_DIR = st.sampled_from(["afile", "afile/sub", "nul\x00byte"])  # a file, a folder under a file, a NUL byte

RUN_FLAGS = {  # flag: (valid values, generator of values that must be refused)
    "--seed": (["0", "3"], _rejected_by(seed_int)),
    "--device": (["cpu"], BAD_DEVICE),
    "--threads": (["1"], _rejected_by(positive_int)),
    "--ckpt-dir": (["ck"], BAD_DIR),
}
SFT_FLAGS = {
    **RUN_FLAGS,
    "--size": (["tiny", "small", "large"], _not_in(("tiny", "small", "large"))),
    "--stage": (["pretrain", "direct", "warmup"], _not_in(("pretrain", "direct", "warmup"))),
    "--steps": (["1", "5"], _rejected_by(positive_int)),
    "--batch-size": (["2"], _rejected_by(positive_int)),
    "--lr": (["0.01", "1e-3"], _rejected_by(positive_float)),
    "--eval-every": (["5"], _rejected_by(positive_int)),
    "--save-every": (["5"], _rejected_by(positive_int)),
    "--num-examples": (["0", "10"], st.one_of(_ints(-1, -100), _rejected_by(int))),
    "--operands": (["4", "3"], st.one_of(_ints(0, 1, -2, 99), _rejected_by(int))),
    "--min-operands": (["2"], st.one_of(_ints(0, 1, 5, 99), _rejected_by(int))),
    "--min-modulus": (["10"], st.one_of(_ints(1, 0, -5, 30, 1000), _rejected_by(int))),
    "--max-modulus": (["29", "20"], st.one_of(_ints(1, 5, 9, 67, 1000), _rejected_by(int))),
    "--number-format": (["tokens", "digits"], _not_in(("tokens", "digits"))),
    "--easier-fraction": (["0.5", "0", "1"], _rejected_by(probability)),
    "--corpus-lines": (["300"], st.one_of(_ints(99, 1, 0, -3), _rejected_by(positive_int))),
    "--worked-fraction": (["0.2"], _rejected_by(probability)),
    "--min-lr-ratio": (["0", "0.1"], _rejected_by(probability)),
    "--paraphrase-fraction": (["0"], _rejected_by(probability)),
    "--balanced-steps": (["0"], _rejected_by(probability)),
    "--read-paraphrasers": (["reword", "reword,words"],
                            st.sampled_from(["foo", "reword,", ",words", "Reword", ""])),
}
RL_FLAGS = {
    **RUN_FLAGS,
    "--size": (["tiny", "small"], _not_in(("tiny", "small", "large"))),
    "--init": (["auto", "warmup", "pretrain"], _not_in(("auto", "warmup", "pretrain"))),
    "--steps": (["1"], _rejected_by(positive_int)),
    "--prompts": (["2"], _rejected_by(positive_int)),
    "--samples": (["2", "8"], st.one_of(_ints(1, 0, -1), _rejected_by(positive_int))),
    "--lr": (["1e-4"], _rejected_by(positive_float)),
    "--temperature": (["1.0", "0.5"], _rejected_by(positive_float)),
    "--lr-schedule": (["constant", "cosine"], _not_in(("constant", "cosine"))),
    "--beta1": (["0.9", "0.99"], _rejected_by(adam_beta)),
    "--beta2": (["0.999"], _rejected_by(adam_beta)),
    "--top-k": (["0", "5"], st.one_of(_ints(-1, -10), _rejected_by(int))),
    "--baseline": (["loo", "mean", "none"], _not_in(("loo", "mean", "none"))),
    "--kl": (["0", "0.1"], _rejected_by(nonnegative_float)),
    "--entropy": (["0"], _rejected_by(nonnegative_float)),
    "--curriculum": (["mixed", "ramp"], _not_in(("mixed", "target", "ramp"))),
    "--paraphrase-prob": (["0.5"], _rejected_by(probability)),
    "--weight-decay": (["0"], _rejected_by(nonnegative_float)),
    "--grad-clip": (["1.0"], _rejected_by(positive_float)),
    "--warmup-steps": (["0", "10"], st.one_of(_ints(-1, -5), _rejected_by(int))),
    "--max-new-tokens": (["20"], _rejected_by(positive_int)),
    "--eval-problems": (["10"], _rejected_by(positive_int)),
    "--pass-k": (["2"], _rejected_by(positive_int)),
    "--pass-problems": (["5"], _rejected_by(positive_int)),
    "--eval-every": (["5"], _rejected_by(positive_int)),
    "--save-every": (["5"], _rejected_by(positive_int)),
}


@st.composite
def bad_argv(draw, table: dict, switches: list[str]) -> list[str]:
    """An argument vector with at least one refused element: a bad value of a known flag, an unknown flag
    (never an abbreviation of a real one: argparse accepts those), or a stray positional. Each flag appears
    at most once, so a later good value cannot override an earlier bad one."""
    known = [*table, *switches, "--help"]
    unknown = st.text(min_size=1, max_size=10).map(lambda t: "--" + t).filter(
        lambda f: not any(k.startswith(f.split("=")[0]) for k in known))
    stray = st.text(max_size=10).filter(lambda t: not t.startswith("-"))
    flags = draw(st.lists(st.sampled_from(list(table)), max_size=6, unique=True))
    bad = draw(st.sets(st.sampled_from(flags))) if flags else set()
    extras = draw(st.lists(st.one_of(unknown.map(lambda f: [f]), stray.map(lambda t: [t])),
                           min_size=0 if bad else 1, max_size=2))
    groups = [[s] for s in draw(st.lists(st.sampled_from(switches), max_size=1, unique=True))] + extras
    for flag in flags:
        good, refused = table[flag]
        value = draw(refused) if flag in bad else draw(st.sampled_from(good))
        groups.append([f"{flag}={value}"] if draw(st.booleans()) else [flag, value])
    return [arg for group in draw(st.permutations(groups)) for arg in group]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A working folder holding one plain file (for the bad --ckpt-dir cases); training is disarmed, so a
    vector that slipped through parsing fails fast instead of training."""
    folder = tmp_path_factory.mktemp("sandbox")
    (folder / "afile").write_text("not a folder")
    with pytest.MonkeyPatch.context() as mp:
        def refuse(*args, **kwargs):
            raise AssertionError("a bad argument vector reached training")
        for name in ("pretrain", "finetune"):
            mp.setattr(train_sft, name, refuse)
        mp.setattr(train_rl, "train_rl", refuse)
        mp.chdir(folder)
        yield folder


def _check_refused(main, argv: list[str], folder: Path) -> None:
    before = _snapshot(folder)
    err = io.StringIO()
    with redirect_stderr(err):
        code = cli_exit_code(main, argv)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err.getvalue(), (argv, err.getvalue())
    assert _snapshot(folder) == before, argv


SETTINGS = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@SETTINGS
@given(argv=bad_argv(SFT_FLAGS, ["--resume"]))
def test_generated_bad_train_sft_arguments_exit_2(sandbox, argv):
    _check_refused(train_sft.main, argv, sandbox)


@settings(SETTINGS, max_examples=400)
@given(argv=bad_argv(RL_FLAGS, ["--resume"]))
def test_generated_bad_train_rl_arguments_exit_2(sandbox, argv):
    _check_refused(train_rl.main, argv, sandbox)


# pieces of well-formed traces and answers, so generated strings are often *nearly* valid
PIECES = ["12", "3", "0", "-", "+", "=", ",", ";", "\n", "answer", " ", "199", "00", "1" * 40, "١", ":"]


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(text=st.one_of(st.text(max_size=40), st.lists(st.sampled_from(PIECES), max_size=20).map("".join)))
def test_generated_completions_parse_or_return_none(text):
    """Any completion a model might emit: the parsers return a value or None (at worst a ValueError), never
    crash, so a parser bug cannot silently zero the reward."""
    for mode in (DIRECT, COT):
        try:
            answer = parse_answer(text, mode)
        except ValueError:  # e.g. a number of > 4,300 digits
            continue
        assert answer is None or isinstance(answer, int)
    try:
        trace = parse_trace(text)
    except ValueError:
        trace = None
    assert trace is None or isinstance(trace, Trace)
    parts = split_answer(text)
    assert parts is None or "".join(parts) == text.split("\n", 1)[0] + "\n"
