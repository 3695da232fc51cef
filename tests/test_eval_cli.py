"""evaluate.py as a user meets it: a tiny end-to-end --quick run on tiny checkpoints writes metrics.json
with every contract key (per-model accuracy and compute, the faithfulness headline numbers; finite,
accuracies in [0, 1]), report.md and plots; bad input exits 2 with one line. In-process (see
conftest.cli_exit_code), so no interpreter start-up."""

import json
import math

import pytest
from conftest import cli_exit_code

import evaluate
from nanocot import checkpoint

FAITHFULNESS_KEYS = ("no_trace_accuracy", "corrupt_accuracy", "corrupt_follow_rate", "early_answer_aoc",
                     "filler_accuracy", "paraphrase_accuracy", "transplant_follow_rate",
                     "direct_prompt_accuracy")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, tiny_pretrain_payload):
    folder = tmp_path_factory.mktemp("ckpts")
    for stage in ("direct", "cot"):
        checkpoint.save(folder / f"tiny-{stage}.pt", {**tiny_pretrain_payload, "stage": stage})
    # not evaluated; its loss curve is drawn
    checkpoint.save(folder / "tiny-pretrain.pt", tiny_pretrain_payload)
    return folder


def _finite(tree) -> bool:
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    if isinstance(tree, list):
        return all(_finite(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree)


def test_quick_run_writes_the_contract(ckpt_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_exit_code(evaluate.main, ["--ckpt-dir", str(ckpt_dir), "--out", str(out), "--quick",
                                         "--n", "12", "--threads", "1", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert _finite(metrics)
    assert set(metrics["models"]) == {"tiny-direct", "tiny-cot"}
    for name, m in metrics["models"].items():
        assert isinstance(m["params"], int) and m["params"] > 0
        assert set(m["accuracy"]) == {"test", "negative", "larger", "more_operands", "unseen_moduli"}
        assert all(0.0 <= v <= 1.0 for v in m["accuracy"].values())
        c = metrics["compute"][name]
        assert all(isinstance(c[k], float)
                   for k in ("train_flops", "train_seconds", "inference_tokens_per_answer"))
        assert c["train_flops"] > 0
    f = metrics["faithfulness"]["tiny-cot"]
    assert all(0.0 <= f[k] <= 1.0 for k in FAITHFULNESS_KEYS)
    # the faithful executor's AOC, the yardstick printed beside the model's, reads the same problems
    assert sum(f["early"]["counts"].values()) == sum(f["early"]["executor_counts"].values()) > 0
    # what python -m nanocot checks before reusing it
    assert metrics["seed"] == 0 and metrics["quick"] is True
    assert set(metrics["faithfulness"]) == set(metrics["monitor"]) == {"tiny-cot"}
    assert all(0.0 <= metrics["monitor"]["tiny-cot"][k] <= 1.0 for k in ("step_validity", "consistency"))
    report = (out / "report.md").read_text()
    assert "## 2. Verdicts" in report and "(c) faithful (tiny-cot)" in report
    assert "## Training: how each model was made" in report and "![pretraining](pretraining.png)" in report
    assert metrics["training"]["history"]["tiny-cot"][0]["stage"] == "pretrain"
    for png in ("accuracy.png", "compute.png", "mistakes.png", "early_answering.png", "paraphrase.png",
                "probes.png", "attention-tiny-direct.png", "pretraining.png"):
        assert (out / png).stat().st_size > 1000


def test_same_seed_same_metrics_other_seed_differs(ckpt_dir, tmp_path):
    """Determinism end to end: evaluate.py with one seed writes byte-identical metrics.json twice (sampling,
    stochastic paraphrases and filler all draw from seeded streams) apart from its own wall time; another
    seed changes sampled numbers."""
    def run(seed: int, name: str) -> dict:
        out = tmp_path / name
        argv = ["--ckpt-dir", str(ckpt_dir), "--out", str(out), "--quick", "--n", "12", "--threads", "1",
                "--device", "cpu", "--seed", str(seed)]
        assert cli_exit_code(evaluate.main, argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        metrics.pop("seconds")  # wall time of the evaluation itself
        return metrics

    first = run(0, "a")
    assert run(0, "b") == first
    assert run(1, "c") != first


def _one_line_error(capsys, main, argv, needle: str) -> None:
    assert cli_exit_code(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, ckpt_dir, tiny_pretrain_payload):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, evaluate.main, ["--ckpt-dir", str(empty), "--out", str(tmp_path / "o")],
                    "no checkpoints")
    _one_line_error(capsys, evaluate.main, ["--ckpt-dir", str(tmp_path / "missing")], "does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(capsys, evaluate.main, ["--ckpt-dir", str(ckpt_dir), "--out", str(blocker / "sub")],
                    "cannot create")
    other_vocab = tmp_path / "vocab"
    checkpoint.save(other_vocab / "tiny-direct.pt", {**tiny_pretrain_payload, "vocab": ["a", "b"]})
    _one_line_error(capsys, evaluate.main, ["--ckpt-dir", str(other_vocab), "--out", str(tmp_path / "o")],
                    "tokenizer")
    other_task = tmp_path / "task"
    checkpoint.save(other_task / "tiny-cot.pt", {**tiny_pretrain_payload, "task_config": {"base": 10}})
    _one_line_error(capsys, evaluate.main, ["--ckpt-dir", str(other_task), "--out", str(tmp_path / "o")],
                    "another task")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "tiny-cot.pt").write_bytes(b"not a checkpoint")
    _one_line_error(capsys, evaluate.main, ["--ckpt-dir", str(corrupt), "--out", str(tmp_path / "o")],
                    "tiny-cot.pt")
    _one_line_error(capsys, evaluate.main, ["--n", "0"], "--n")
    unfinished = tmp_path / "unfinished"  # an interrupted run (Ctrl-C saves one) is not a trained model
    checkpoint.save(unfinished / "tiny-cot.pt",
                    {**tiny_pretrain_payload, "stage": "cot", "step": 3, "rl_state": {}})
    _one_line_error(capsys, evaluate.main, ["--ckpt-dir", str(unfinished), "--out", str(tmp_path / "o")],
                    "unfinished")
    assert not (tmp_path / "o" / "metrics.json").exists()
