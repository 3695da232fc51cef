"""`python -m nanocot`: stage bookkeeping, the seed summary, and bad input."""

import math
import subprocess
import sys

import pytest
import torch

from nanocot import checkpoint, pipeline
from nanocot.__main__ import main as pipeline_main
from nanocot.config import STAGE_DEFAULTS
from nanocot.pipeline import Stage, StageFailed, checkpoint_state, flatten, stages, summarise
from nanocot.stats import t95
from nanocot.tokenizer import Tokenizer
from tests.conftest import ROOT, cli_exit_code


def test_stages_cover_the_experiment_in_order():
    names = [s.name for s in stages("small", "large", quick=False)]
    assert names == ["large-pretrain", "small-pretrain", "large-direct", "small-direct", "small-warmup",
                     "small-cot"]
    assert all(s.output == f"{s.name}.pt" for s in stages("small", "large", quick=False))


def test_each_stage_starts_from_the_checkpoint_it_reads():
    """`after` is what lets stages run side by side: direct SFT and the warm-up read the pretrained model of
    their size, REINFORCE the warm-up; nothing reads the other size's checkpoints."""
    after = {s.name: s.after for s in stages("small", "large", quick=False)}
    assert after == {"large-pretrain": "", "small-pretrain": "", "large-direct": "large-pretrain",
                     "small-direct": "small-pretrain", "small-warmup": "small-pretrain",
                     "small-cot": "small-warmup"}
    same = stages("tiny", "tiny", quick=True)  # one preset for both sizes: each checkpoint has one writer
    assert [s.name for s in same] == ["tiny-pretrain", "tiny-direct", "tiny-warmup", "tiny-cot"]


def _timed_script(folder, name: str, seconds: float) -> Stage:
    """A stage whose script records when it started and ended (in ends.txt) after sleeping."""
    (folder / f"{name}.py").write_text(
        f"import time\nstart = time.time()\ntime.sleep({seconds})\n"
        f"open({str(folder / 'ends.txt')!r}, 'a').write(f'{name} {{start}} {{time.time()}}\\n')\n")
    return Stage(name, f"{name}.py", (), f"{name}.pt")


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_stages_wait_for_their_checkpoint_and_at_most_jobs_run_at_once(tmp_path, monkeypatch, jobs):
    from dataclasses import replace

    monkeypatch.setattr(pipeline, "REPO", tmp_path)
    pre = _timed_script(tmp_path, "pre", 0.6)
    todo = [pre, replace(_timed_script(tmp_path, "a", 0.6), after="pre"),
            replace(_timed_script(tmp_path, "b", 0.6), after="pre"),
            replace(_timed_script(tmp_path, "c", 0.3), after="b"), _timed_script(tmp_path, "free", 0.3)]
    timings = {}
    pipeline.run_side_by_side(todo, tmp_path, [], False, timings, jobs=jobs, heartbeat_s=0.2)
    spans = {name: (float(t0), float(t1)) for name, t0, t1 in
             (line.split() for line in (tmp_path / "ends.txt").read_text().splitlines())}
    assert set(spans) == set(timings) == {"pre", "a", "b", "c", "free"}
    for stage in todo:
        if stage.after:
            assert spans[stage.name][0] >= spans[stage.after][1]  # started after what it reads was written
    moments = sorted(t for span in spans.values() for t in span)
    busiest = max(sum(t0 <= m < t1 for t0, t1 in spans.values()) for m in moments)
    assert busiest <= jobs and (jobs == 1 or busiest >= 2)


def test_a_failing_stage_stops_the_others_cleanly(tmp_path, monkeypatch):
    """One stage fails: its error is raised with the end of its log, the other running stage is sent SIGINT
    (the training scripts save a resumable checkpoint on it) instead of running to the end, and the stage
    that would have read the failed one's checkpoint never starts."""
    import time

    (tmp_path / "slow.py").write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: (print('saved, stopping'), sys.exit(130)))\n"
        "print('working', flush=True)\ntime.sleep(60)\n")
    (tmp_path / "bad.py").write_text("import sys, time\ntime.sleep(1)\nprint('error: bad input', "
                                     "file=sys.stderr)\nsys.exit(2)\n")
    monkeypatch.setattr(pipeline, "REPO", tmp_path)
    todo = [Stage("a-slow", "slow.py", (), "a.pt"), Stage("b-bad", "bad.py", (), "b.pt"),
            Stage("b-never", "slow.py", (), "c.pt", after="b-bad")]
    start, timings = time.perf_counter(), {}
    with pytest.raises(StageFailed) as failure:
        pipeline.run_side_by_side(todo, tmp_path, [], False, timings, heartbeat_s=0.5)
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
    # 11 degrees of freedom
    many = summarise({seed: {"acc": 0.9 + 0.01 * (seed % 3)} for seed in range(12)})["acc"]
    assert many["ci95"] == pytest.approx(2.201 * many["std"] / math.sqrt(12))  # not the normal 1.96
    assert t95(22) == 2.086 and t95(1000) == 1.96


@pytest.mark.parametrize("argv", [
    ["--seeds", "a,b"], ["--seeds", ""], ["--seeds", "1,1"], ["--seeds", "-1"],
    ["--small", "huge"], ["--threads", "-1"], ["--jobs", "-1"], ["--device", "tpu"], ["--bogus"],
])
def test_bad_input_exits_2_with_one_line(argv, tmp_path, capsys):
    code = cli_exit_code(pipeline_main,
                         argv + ["--ckpt-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_a_checkpoint_with_another_vocabulary_is_refused_naming_it(tmp_path, capsys):
    """A checkpoint made by an older nanocot, with an older vocabulary, would be misread token by token: the
    pipeline refuses it in one line naming the vocabulary, before anything runs, and so does each script."""
    old_vocab = Tokenizer().vocab[:242]
    for name in ("tiny-pretrain.pt", "tiny-warmup.pt"):
        made = {"w": torch.zeros(1), "vocab": old_vocab, "size": "tiny", "stage": name[5:-3],
                "train_config": {"seed": 0, "steps": 3000}}
        checkpoint.save(tmp_path / "c" / name, made)
    argv = ["--small", "tiny", "--large", "tiny", "--ckpt-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "o"), "--jobs", "1"]
    assert cli_exit_code(pipeline_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vocabulary" in err and "242 tokens" in err, err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["tiny-pretrain.pt", "tiny-warmup.pt"]
    for script, args in (("train_sft.py", ["--size", "tiny", "--stage", "direct"]),
                         ("train_rl.py", ["--size", "tiny"])):
        run = subprocess.run([sys.executable, script, *args, "--steps", "1", "--ckpt-dir",
                              str(tmp_path / "c")], capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "tokenizer vocabulary" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_a_checkpoint_from_another_run_is_refused_before_anything_runs(tmp_path, capsys):
    """`--quick` and then the real experiment in the same folder, or another seed's checkpoints: skipping the
    finished stage would report the 30-step model (or the other seed's) as this run's result."""
    quick_made = {"w": torch.zeros(1), "train_config": {"seed": 0, "steps": 30}, "vocab": Tokenizer().vocab}
    checkpoint.save(tmp_path / "c" / "tiny-pretrain.pt", quick_made)
    argv = ["--small", "tiny", "--large", "tiny", "--ckpt-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "o"), "--jobs", "1"]
    assert cli_exit_code(pipeline_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed 0 and 30 steps" in err and "--force" in err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["tiny-pretrain.pt"]  # nothing ran
    assert cli_exit_code(pipeline_main, argv[:4] + ["--seeds", "1"] + argv[4:]) == 2  # another seed
    assert "this run asks for seed 1" in capsys.readouterr().err
    todo = stages("tiny", "tiny", quick=True)
    pipeline.check_reusable(todo, tmp_path / "c", seed=0)  # the run that made it may reuse it
    balanced = STAGE_DEFAULTS["warmup"].balanced_steps
    rl_made = {"w": torch.zeros(1), "train_config": {"seed": 0, "steps": 30, "balanced_steps": balanced},
               "rl_config": {"seed": 0, "steps": 4}, "vocab": Tokenizer().vocab}
    # REINFORCE's own config, not the warm-up's it carries
    checkpoint.save(tmp_path / "c" / "tiny-cot.pt", rl_made)
    pipeline.check_reusable(todo, tmp_path / "c", seed=0)
    with pytest.raises(ValueError, match="tiny-cot.pt was made with seed 0 and 4 steps"):
        pipeline.check_reusable([s for s in stages("tiny", "tiny", quick=False) if s.name == "tiny-cot"],
                                tmp_path / "c", 0)
    # a warm-up made without the balanced steps the recipe now has
    unbalanced = {**quick_made, "train_config": {"seed": 0, "steps": 30}}
    checkpoint.save(tmp_path / "c" / "tiny-warmup.pt", unbalanced)
    with pytest.raises(ValueError, match="tiny-warmup.pt was made with balanced_steps None"):
        pipeline.check_reusable(todo, tmp_path / "c", seed=0)


def test_an_evaluation_is_reused_only_if_whole_and_made_for_this_seed(tmp_path):
    path = tmp_path / "metrics.json"
    assert not pipeline.reusable_metrics(path, 0, False)  # missing
    path.write_text('{"models": {"a": ')  # cut short
    assert not pipeline.reusable_metrics(path, 0, False)
    path.write_text('{"seed": 1, "quick": false}')
    assert not pipeline.reusable_metrics(path, 0, False)
    assert not pipeline.reusable_metrics(path, 1, True)
    assert pipeline.reusable_metrics(path, 1, False)
