"""The instrument controls (nanocot/controls.py) and how `python -m nanocot --controls` adds them: the
negative control's traces say nothing about the answer, and each control is its own stage and checkpoint."""

import json

import numpy as np
import pytest
import torch

from nanocot import checkpoint
from nanocot.__main__ import main as pipeline_main
from nanocot.config import STAGE_DEFAULTS, TaskConfig
from nanocot.controls import LARGE_COT_DIRECT_FRACTION, LARGE_COT_LR, noise_trace
from nanocot.monitor import check
from nanocot.pipeline import CONTROLS, check_reusable, control_list, control_models, reusable_metrics, stages
from nanocot.task import ModularAddition, parse_answer
from nanocot.tokenizer import Tokenizer
from nanocot.trace import parse_trace
from tests.conftest import cli_exit_code


@pytest.fixture(scope="module")
def problems():
    return ModularAddition(TaskConfig()).sample_train(np.random.default_rng(0), 400, k=4)


def test_noise_traces_have_the_format_and_the_true_answer(problems):
    rng = np.random.default_rng(1)
    for p in problems:
        text = noise_trace(p, rng)
        trace = parse_trace(text)
        assert trace is not None and text.endswith("\n")
        assert parse_answer(text, "cot") == p.answer
        assert [s.right for s in trace.steps] == list(p.operands[1:])  # step i adds operand i+1
        for s in trace.steps:  # every step is locally right: its sum, and a reduction into [0, m)
            assert s.left + s.right == s.total and 0 <= s.result < p.modulus


def test_noise_traces_carry_nothing_from_step_to_step(problems):
    """The value a step carries in is uniform, whatever the step before it handed on: the trace holds no
    running sum (the monitor rejects almost every trace; its answer agrees with its own trace at chance)."""
    rng = np.random.default_rng(2)
    texts = [noise_trace(p, rng) for p in problems]
    carried = [parse_trace(t).steps[i].left == parse_trace(t).steps[i - 1].result
               for t in texts for i in (1, 2)]
    assert np.mean(carried) < 0.15
    checks = [check(p, t) for p, t in zip(problems, texts)]
    assert np.mean([c.valid for c in checks]) < 0.1
    assert np.mean([c.consistent for c in checks]) < 0.15
    # the same stream gives the same traces (a resumed run replays its batches)
    again = np.random.default_rng(2)
    assert [noise_trace(p, again) for p in problems] == texts


def test_control_names():
    assert control_list("all") == list(CONTROLS)
    assert control_list("large-ignore, large-cot") == ["large-cot", "large-ignore"]  # CONTROLS' order
    for bad in ("large-stegosaurus", "", ","):
        with pytest.raises(ValueError, match="unknown control"):
            control_list(bad)


def test_controls_add_their_stages_after_the_checkpoint_they_start_from():
    base = stages("small", "large", quick=False)
    full = stages("small", "large", quick=False, controls=tuple(CONTROLS))
    assert full[: len(base)] == base  # the experiment itself is unchanged
    added = {s.name: s for s in full[len(base):]}
    assert set(added) == {"large-warmup", "large-cot", "large-ignore"}
    assert added["large-warmup"].after == "large-direct" and "--start" in added["large-warmup"].args
    assert added["large-cot"].after == "large-warmup" and added["large-cot"].script == "train_rl.py"
    assert added["large-ignore"].after == "large-direct" and "--start" not in added["large-ignore"].args
    assert len({s.output for s in full}) == len(full)  # one writer per checkpoint
    assert all(s.output == f"{s.name}.pt" for s in full)
    quick = {s.name: s for s in stages("small", "large", quick=True, controls=tuple(CONTROLS))}
    assert all("--steps" in s.args for s in quick.values())  # every control has a smoke-test budget too
    with pytest.raises(ValueError, match="two different presets"):
        stages("tiny", "tiny", quick=True, controls=("large-cot",))


@pytest.mark.parametrize("argv, message", [
    (["--controls", "bogus"], "unknown control bogus"),
    (["--controls", ""], "unknown control ''"),
    (["--controls", "--small", "tiny", "--large", "tiny"], "different --small and --large"),
])
def test_bad_controls_exit_2_with_one_line(tmp_path, capsys, argv, message):
    code = cli_exit_code(pipeline_main, [*argv, "--ckpt-dir", str(tmp_path / "ck"), "--out", str(tmp_path)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "ck").exists()


def _rate(value: float, n: int = 1000) -> dict:
    from nanocot.stats import proportion

    hits = round(value * n)
    return proportion([True] * hits + [False] * (n - hits))


def _model(params: int, accuracy: float, no_trace: float, follow: float,
           direct: float = 0.0) -> tuple[dict, dict, dict]:
    """(models entry, faithfulness entry, monitor entry) with just what the controls table reads."""
    model = {"params": params, "mode": "cot", "intervals": {"test": _rate(accuracy)}}
    faith = {"no_trace": _rate(no_trace), "direct_prompt": _rate(direct),
             "mistakes": {"off_by_one/continue": {"follow_rate": _rate(follow)}},
             "transplant": {"follow_rate": _rate(follow)}, "filler": {"dots": _rate(0.0)},
             "early": {"aoc": follow}, "paraphrase_accuracy": accuracy}
    monitor = {"splits": {"test": {"step_validity": _rate(0.9), "consistency": _rate(follow)}}}
    return model, faith, monitor


def test_the_report_reads_each_instrument_against_the_controls(tmp_path):
    """The headline CoT model stays small-cot when larger or control CoT models are present, and the controls
    table says whether the follow-rate instrument tells each control apart from it."""
    from nanocot.plots import plot_controls
    from nanocot.report import _controls_section, controls_table, headline_cot

    parts = {"small-cot": _model(50_000, 0.97, 0.01, 0.99),
             "large-cot": _model(126_000, 0.99, 0.0, 0.98, direct=0.8),
             "large-ignore": _model(126_000, 0.99, 0.99, 0.01, direct=0.99)}
    metrics = {key: {name: part[i] for name, part in parts.items()}
               for i, key in enumerate(("models", "faithfulness", "monitor"))}
    metrics["task"] = {"moduli": [10, 29]}  # chance: 5.7%
    assert headline_cot(metrics, list(parts)) == "small-cot"  # not the more accurate large-cot
    text = "\n".join(_controls_section(metrics))
    assert "| instrument | small-cot (the model under test) | large-cot (answers directly 80.0%: can " \
           "answer without a trace) | large-ignore (negative control: its answer ignores its trace) |" in text
    lines = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    cot, ignore = lines["large-cot"], lines["large-ignore"]
    assert "does NOT tell them apart" in cot and "(its trace is necessary)" in cot
    assert "tells them apart" in ignore and "not shown to be necessary" in ignore
    assert "twice chance" not in cot + ignore
    # a larger model whose warm-up erased its direct answer is not the counterfactual; a control at chance
    # calibrates nothing, and the reading says so
    metrics["faithfulness"]["large-cot"]["direct_prompt"] = _rate(0.05)
    metrics["models"]["large-ignore"]["intervals"]["test"] = _rate(0.06)
    text = "\n".join(_controls_section(metrics))
    assert "large-cot (answers directly 5.0%: can NOT answer without a trace)" in text
    ignore = [line for line in text.splitlines() if line.startswith("- **large-ignore**")][0]
    assert "within twice chance (5.7%)" in ignore
    plot_controls(*controls_table(metrics), tmp_path / "controls.png")
    assert (tmp_path / "controls.png").stat().st_size > 1000
    # with no control and no larger CoT model there is nothing to compare
    alone = {key: {"small-cot": metrics[key]["small-cot"]} for key in ("models", "faithfulness", "monitor")}
    assert _controls_section(alone) == []


def test_a_warmup_without_the_rehearsal_is_not_reused_as_large_cots(tmp_path):
    """A large-warmup.pt made without the direct rehearsal (the literal recipe, which erases the direct
    answer) must not be skipped over and reported as the counterfactual; the rehearsing one may be."""
    todo = [s for s in stages("small", "large", quick=False, controls=("large-cot",))
            if s.name in ("large-warmup", "large-cot")]

    def reuse(name: str, payload: dict) -> None:
        checkpoint.save(tmp_path / name, payload)
        check_reusable(todo, tmp_path, seed=0)

    made = {"w": torch.zeros(1), "vocab": Tokenizer().vocab,
            "train_config": {"seed": 0, "steps": todo[0].steps, "direct_fraction": 0.0,
                             "balanced_steps": STAGE_DEFAULTS["warmup"].balanced_steps}}
    with pytest.raises(ValueError, match="large-warmup.pt was made with direct_fraction 0.0"):
        reuse("large-warmup.pt", made)
    made["train_config"]["direct_fraction"] = LARGE_COT_DIRECT_FRACTION
    reuse("large-warmup.pt", made)
    # REINFORCE's checkpoint carries its warm-up's train_config, and is held to the same setting
    cot = {**made, "train_config": {**made["train_config"], "direct_fraction": 0.0},
           "rl_config": {"seed": 0, "steps": todo[1].steps, "lr": LARGE_COT_LR}}
    with pytest.raises(ValueError, match="large-cot.pt was made with direct_fraction"):
        reuse("large-cot.pt", cot)
    # ... and to its own learning rate, not the warm-up's (small-cot's rate collapsed the large model)
    cot["train_config"]["direct_fraction"] = LARGE_COT_DIRECT_FRACTION
    reuse("large-cot.pt", cot)
    cot["rl_config"]["lr"] = 4e-4
    with pytest.raises(ValueError, match="large-cot.pt was made with lr 0.0004"):
        reuse("large-cot.pt", cot)


def test_an_evaluation_without_the_controls_asked_for_is_redone(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"seed": 0, "quick": False, "models": {"small-cot": {}, "large-cot": {}}}))
    assert reusable_metrics(path, 0, False, control_models(("large-cot",), "large"))
    assert not reusable_metrics(path, 0, False, control_models(("large-cot", "large-ignore"), "large"))
    # under another large preset the control's model carries that preset's name
    assert control_models(("large-cot", "large-ignore"), "small") == ("small-cot", "small-ignore")
