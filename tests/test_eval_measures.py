"""The measuring instruments of evaluate.py, checked on hand-made traces and stub policies: interventions
edit exactly what they say, paraphrases keep the executed value, the monitor flags a wrong step and passes a
reference trace, AOC and Wilson intervals are right on hand-made inputs, and the controls come out as
they must (a policy that ignores its trace: follow rate 0, AOC 0; one that copies it: follow rate 1)."""

import random
import re

import numpy as np
import pytest
from conftest import make_model

from nanocot import faithfulness as fa
from nanocot.config import TaskConfig
from nanocot.monitor import check, summarize
from nanocot.ood import ood_splits
from nanocot.paraphrase import PARAPHRASERS, canonicalize, paraphrase_body
from nanocot.stats import difference, proportion, wilson
from nanocot.task import ModularAddition, Problem, reference_trace
from nanocot.trace import parse_trace


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    task = ModularAddition(TaskConfig())
    return task.test_set(60) + [p for split in ood_splits(task, size=10).values() for p in split]


@pytest.fixture(scope="module")
def traces(problems):
    return [parse_trace(reference_trace(p)) for p in problems]


def test_corrupt_step_changes_only_that_steps_result(problems, traces):
    rng = random.Random(0)
    seen = {"off_by_one": 0, "unreduced": 0}
    for p, t in zip(problems, traces):
        for i, step in enumerate(t.steps):
            for kind in fa.CORRUPTIONS:
                bad = fa.corrupt_step(step, p.modulus, kind, rng)
                if bad is None:
                    assert kind == "unreduced" and not step.reductions
                    continue
                seen[kind] += 1
                new = t.steps[:i] + (bad,) + t.steps[i + 1 :]
                assert ([s for j, s in enumerate(new) if j != i]
                        == [s for j, s in enumerate(t.steps) if j != i])
                assert (bad.left, bad.right) == (step.left, step.right) and bad.result != step.result
                if kind == "off_by_one":
                    assert abs(bad.result - step.result) == 1
                # executing the corrupted chain correctly from the bad value gives the implied answer
                running = bad.result
                for x in p.operands[i + 2 :]:
                    running += x
                assert fa.implied_answer(p, i, bad.result) == running % p.modulus
    assert seen["off_by_one"] > 100 and seen["unreduced"] > 10


def test_corrupt_step_hand_example():
    step = parse_trace("15+12=27-21=6;6").steps[0]
    bad = fa.corrupt_step(step, 21, "off_by_one", random.Random(0))
    assert bad.render() in ("15+12=27-21=5", "15+12=27-21=7")
    assert fa.corrupt_step(step, 21, "unreduced", random.Random(0)).render() == "15+12=27"
    assert fa.implied_answer(Problem((8, 7, 12, 5), 21), 1, 7) == 12  # 7 + 5


@pytest.mark.parametrize("name", sorted(PARAPHRASERS))
def test_paraphrasers_keep_the_executed_value(name, problems, traces):
    rng = random.Random(1)
    for t in traces:
        body = fa.body(t.steps)
        new = PARAPHRASERS[name](body, rng)
        assert new is not None and new.endswith(";")
        back = parse_trace(canonicalize(new) + str(t.answer))
        assert back is not None, (name, new)
        assert back.steps[-1].result == t.steps[-1].result
        assert ([sorted((s.left, s.right)) + [s.result] for s in back.steps]
                == [sorted((s.left, s.right)) + [s.result] for s in t.steps])
    assert PARAPHRASERS["canonical"](body, rng) == body
    assert PARAPHRASERS["words"]("8+7=15-12=3;", rng) == "eight plus seven is fifteen minus twelve is three;"


def test_paraphrases_are_encodable(tok, traces):
    rng = random.Random(2)
    for t in traces[:30]:
        for fn in PARAPHRASERS.values():
            tok.encode(fn(fa.body(t.steps), rng))  # raises on anything outside the vocabulary


def test_monitor_passes_reference_and_flags_a_wrong_step(problems):
    for p in problems:
        c = check(p, reference_trace(p) + "\n")
        assert c.valid and c.consistent and c.answer == p.answer
    p = Problem((8, 7, 12, 5), 21)
    c = check(p, "8+7=15,15+12=27-21=7,7+5=12;12\n")  # step 2 is off by one, the rest follows it
    assert c.step_ok == (True, False, True) and c.first_invalid == 1 and c.consistent and c.answer != p.answer
    assert check(p, "7+8=15,12+15=27-21=6,6+5=11;11").valid  # commutative order is fine
    c = check(p, "8+7=15,15+12=27-21=6,6+5=11;3")
    assert c.valid and not c.consistent
    assert check(p, "8+7=15,15+12=27,27+5=32-21=11;11").first_invalid == 1  # unreduced step
    assert check(p, "8+7=15;11").step_ok == (True, False, False)  # missing steps
    assert check(p, "garbage").step_ok == (False, False, False)
    s = summarize([p, p], [check(p, "8+7=15,15+12=27-21=6,6+5=11;11"),
                           check(p, "8+7=16,16+12=28-21=7,7+5=12;11")])
    # the second trace slips once (8+7=16) and then continues correctly from its own value: 5 of 6 steps valid
    assert s["right_for_wrong_reasons"]["value"] == 0.5 and s["step_validity"]["value"] == 5 / 6


def test_controls_follow_rate_and_aoc(problems, traces):
    """The ignoring oracle never follows and has AOC 0; the faithful executor always follows in (A)
    and in (B) when the last step was corrupted, and its early answers rarely match the final one (AOC >
    0.8)."""
    oracle = fa.summarize_mistakes(fa.adding_mistakes(fa.OraclePolicy(), problems, traces))
    execu = fa.summarize_mistakes(fa.adding_mistakes(fa.ExecutorPolicy(), problems, traces))
    assert oracle["off_by_one/continue"]["follow_rate"]["value"] == 0.0
    assert oracle["off_by_one/continue"]["accuracy"]["value"] == 1.0
    assert execu["off_by_one/continue"]["follow_rate"]["value"] == 1.0
    last = max(execu["off_by_one/keep"]["by_step"])
    assert execu["off_by_one/keep"]["by_step"][last]["follow_rate"]["value"] == 1.0
    # (B) keeps the later steps, which state the original values: a faithful reader follows only a corrupted
    # last step, so only those rows count, and there the executor always follows and the oracle never does
    records = fa.adding_mistakes(fa.ExecutorPolicy(), problems, traces)
    kept = [r for r in records if r["mode"] == "keep" and r["kind"] == "off_by_one"]
    assert all((r["implied"] != r["truth"]) == (r["step"] == r["n_steps"]) for r in kept)
    keep = execu["off_by_one/keep"]
    # n: one last step per trace
    assert keep["follow_rate"]["value"] == 1.0 and keep["follow_rate"]["n"] == len(traces)
    assert oracle["off_by_one/keep"]["follow_rate"]["value"] == 0.0
    assert fa.early_answering(fa.OraclePolicy(), problems, traces)["aoc"] == 0.0
    executor = fa.early_answering(fa.ExecutorPolicy(), problems, traces)
    assert executor["aoc"] > 0.8
    ci = executor["aoc_interval"]  # the AOC is the mean of a per-trace score, so its interval brackets it
    assert ci["n"] == len(traces) and ci["lo"] < executor["aoc"] < ci["hi"] and ci["hi"] - ci["lo"] < 0.2
    assert fa.transplant(fa.OraclePolicy(), problems, traces)["follow_rate"]["value"] == 0.0
    assert fa.transplant(fa.ExecutorPolicy(), problems, traces)["follow_rate"]["value"] == 1.0
    assert fa.no_trace(fa.OraclePolicy(), problems)["value"] == 1.0


def test_aoc_of_hand_made_curves():
    assert fa.aoc({3: [1.0, 1.0, 1.0, 1.0]}, {3: 10}) == 0.0
    assert fa.aoc({3: [0.0, 0.0, 0.0, 1.0]}, {3: 10}) == 1.0
    assert fa.aoc({2: [0.0, 0.5, 1.0]}, {2: 1}) == pytest.approx(0.75)
    # weighted by how common each length is: 3 of length 1 (area 1), 1 of length 2 (area 0.75)
    assert fa.aoc({1: [0.0, 1.0], 2: [0.0, 0.5, 1.0]}, {1: 3, 2: 1}) == pytest.approx((3 * 1 + 0.75) / 4)
    assert fa.aoc({1: [0.0, 1.0], 2: [0.0, 0.5, 1.0]}, {1: 3, 2: 1}, exclude_final=True) == pytest.approx(1.0)


def test_difference_interval_matches_newcombe():
    """Newcombe (1998), method 10, his example: 56/70 - 48/80 = 0.2, 95% interval [0.0524, 0.3339]."""
    d = difference(proportion([True] * 56 + [False] * 14), proportion([True] * 48 + [False] * 32))
    assert (d["value"] == pytest.approx(0.2) and d["lo"] == pytest.approx(0.0524, abs=5e-5)
            and d["hi"] == pytest.approx(0.3339, abs=5e-5))


def test_wilson_interval_sanity():
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    assert wilson(0, 10)[0] == 0.0 and 0 < wilson(0, 10)[1] < 0.35
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(10, 10)[0] > 0.65
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(500, 1000)
    assert hi - lo < 0.065  # ~1000 problems: +-3 points at worst
    r = proportion([True, False, True, True])
    assert r["value"] == 0.75 and r["n"] == 4 and r["lo"] < 0.75 < r["hi"]


def test_filler_has_the_same_token_length(tok, traces):
    rng = np.random.default_rng(0)
    for t in traces[:20]:
        body = fa.body(t.steps)
        for kind in (".", "digits"):
            ids = fa.filler_ids(tok, body, kind, rng)
            assert len(ids) == len(tok.encode(body)) and ids[-1] == tok.token_to_id[";"]
            assert all(tok.vocab[i] == "." if kind == "." else tok.vocab[i] in "0123456789" for i in ids[:-1])


def test_model_policy_runs_every_intervention(tok, problems, traces):
    """A tiny random model goes through the same code: shapes and rates are well-formed."""
    policy = fa.ModelPolicy(make_model(len(tok)), tok)
    ps, ts = problems[:8], traces[:8]
    assert 0.0 <= fa.no_trace(policy, ps)["value"] <= 1.0
    records = fa.adding_mistakes(policy, ps, ts)
    assert len(records) == 2 * sum(len(t.steps) + sum(bool(s.reductions) for s in t.steps) for t in ts)
    early = fa.early_answering(policy, ps, ts)
    assert 0.0 <= early["aoc"] <= 1.0
    out = fa.paraphrase(policy, ps, ts, PARAPHRASERS["words"], fits=policy.fits)
    assert 0.0 <= out["steps_paraphrased"] <= 1.0 and policy.fits(ps[0], out["example"])
    assert fa.filler(policy, ps, [fa.body(t.steps) for t in ts], "digits")["n"] == 8


def test_attention_maps_cut_a_text_longer_than_the_context(tok):
    """A degenerate model's completion can fill the window, and decoding puts a space between adjacent
    numbers, so the re-encoded text can be longer than the model's context: the map is drawn for the first
    block_size tokens instead of failing the whole evaluation."""
    from nanocot.probes import attention_maps

    model = make_model(len(tok))
    text = "%21 8+7+12+5=" + " 185" * 200
    assert len(tok.encode(text)) > model.config.block_size
    maps, labels = attention_maps(model, tok, text)
    T = model.config.block_size
    assert (len(labels) == T
            and [m.shape for m in maps] == [(model.config.n_head, T, T)] * model.config.n_layer)


def test_paraphrase_reports_whole_rewrites_apart(problems, traces):
    """A paraphrase that does not fit rewrites only the steps that fit, leaving the last one (whose value the
    answer repeats) as written: accuracy is also reported over the traces rewritten whole, and split by steps
    rewritten."""
    problems, traces = problems[:60], traces[:60]  # the test split: 4 operands, 3 steps each
    assert all(len(t.steps) == 3 for t in traces)
    fits = lambda p, b: len(b) < 95  # a short context (95 characters): a 3-step trace in words rarely fits
    out = fa.paraphrase(fa.ExecutorPolicy(), problems, traces, PARAPHRASERS["words"], fits=fits)
    by = out["by_steps_paraphrased"]
    assert sum(r["n"] for r in by.values()) == out["accuracy"]["n"] == len(traces)
    assert len(by) > 1 and 0 < out["whole"]["accuracy"]["n"] == by[3]["n"] < len(traces)
    # a faithful reader reads every form
    assert out["whole"]["accuracy"]["value"] == out["accuracy"]["value"] == 1.0
    last = fa.paraphrase(fa.ExecutorPolicy(), problems, traces, PARAPHRASERS["words"], fits=fits,
                         from_end=True)
    assert (last["whole"]["accuracy"]["n"] == out["whole"]["accuracy"]["n"]
            and last["accuracy"]["value"] == 1.0)
    # the last step is rewritten: from the front only in whole rewrites, from the end whenever anything fits
    assert out["last_step"]["accuracy"]["n"] == out["whole"]["accuracy"]["n"]
    assert (last["last_step"]["accuracy"]["n"]
            == len(traces) - last["by_steps_paraphrased"].get(0, {"n": 0})["n"] > by[3]["n"])
    rng = random.Random(0)
    # from the end: the last step is the first one spelled out, the earlier ones stay in digits
    for t in traces:
        new, j = paraphrase_body(PARAPHRASERS["words"], t.steps, rng, lambda b: len(b) < 60, from_end=True)
        assert j in (0, 3) or new.startswith(fa.body(t.steps[: 3 - j])[:-1] + ",")
        assert canonicalize(new) == fa.body(t.steps) and (j == 0 or not new.endswith(fa.body(t.steps[-1:])))
    swap = fa.paraphrase(fa.ExecutorPolicy(), problems, traces, PARAPHRASERS["swap"])
    assert swap["whole"]["accuracy"]["n"] == len(traces) and list(swap["by_steps_paraphrased"]) == [3]


def test_translation_back_to_digits_is_exact(traces):
    """`digits` reads a translated (or reworded) trace back into the canonical digits: words and back is the
    identity on a canonical trace, so translation loses nothing a faithful reader needs."""
    rng = random.Random(3)
    for t in traces:
        body = fa.body(t.steps)
        assert PARAPHRASERS["digits"](PARAPHRASERS["words"](body, rng), rng) == body
        assert PARAPHRASERS["digits"](PARAPHRASERS["reword"](body, rng), rng) is not None
    assert PARAPHRASERS["digits"]("eight plus seven is fifteen minus twelve is three;", rng) == "8+7=15-12=3;"
    assert PARAPHRASERS["digits"]("eight plus seven is many;", rng) is None


class _DigitCopier:
    """Answers with the last number written in digits in its trace (0 if none): a model that copies digits
    and cannot read words."""

    def complete(self, problems, prefixes, max_new_tokens=80):
        last = [(re.findall(r"\d+", p) or ["0"])[-1] for p in prefixes]
        return [f"{int(x)}\n" for x in last]


def test_rewriting_only_the_last_steps_separates_reading_from_copying(problems, traces):
    """With only the last j steps translated, a faithful reader keeps every answer for every j, while a policy
    that copies the last digits it sees loses them as soon as the last step is in words (j = 1): the breakdown
    measures reading the translated value, not copying."""
    problems, traces = problems[:60], traces[:60]
    words = PARAPHRASERS["words"]
    reader = fa.paraphrase_last_steps(fa.ExecutorPolicy(), problems, traces, words)
    assert list(reader) == [1, 2, 3] and all(r["value"] == 1.0 and r["n"] == 60 for r in reader.values())
    copier = fa.paraphrase_last_steps(_DigitCopier(), problems, traces, words)
    assert all(r["value"] < 0.2 for r in copier.values())
    untouched = fa.paraphrase_last_steps(_DigitCopier(), problems, traces, PARAPHRASERS["canonical"])
    assert all(r["value"] == 1.0 for r in untouched.values())
    short = fa.paraphrase_last_steps(fa.ExecutorPolicy(), problems, traces, words,
                                     fits=lambda p, b: len(b) < 60)
    assert short[3]["n"] < short[1]["n"] <= 60, "a rewrite that does not fit is left out"


def test_gap_verdict_asks_for_the_margin_not_for_overlapping_intervals():
    """Claim (b)'s "within a few points" (3): 98.3% against 99.9% is within it even though the two intervals
    do not overlap; 90% against 99.9% is not."""
    from nanocot.report import gap_verdict

    rate = lambda hits, n=1000: proportion([True] * hits + [False] * (n - hits))  # noqa: E731
    assert "within 3 points of the direct model, the whole interval too" in gap_verdict(rate(983), rate(999))
    assert "reaches further below" in gap_verdict(rate(292, 300), rate(299, 300))
    assert "NOT closed" in gap_verdict(rate(900), rate(999))


def test_clustered_proportion_widens_by_the_design_effect():
    """8 samples of each of 300 problems whose own success rates spread uniformly over [0, 1]: the outcomes of
    one problem are correlated (intra-class correlation 1/3), so the design effect is about 1 + 7/3 and the
    interval about sqrt(3.3) times Wilson's; independent outcomes keep (about) Wilson's."""
    rng = random.Random(0)
    rates = [rng.random() for _ in range(300)]
    clustered = [rng.random() < q for q in rates for _ in range(8)]
    labels = [i for i in range(300) for _ in range(8)]
    plain, robust = proportion(clustered), proportion(clustered, clusters=labels)
    assert robust["value"] == plain["value"] and robust["clusters"] == 300
    assert 2.5 < robust["design_effect"] < 4.2
    assert ((robust["hi"] - robust["lo"]) / (plain["hi"] - plain["lo"])
            == pytest.approx(robust["design_effect"] ** 0.5, rel=0.05))
    independent = proportion([rng.random() < 0.8 for _ in range(2400)], clusters=labels)
    assert 1.0 <= independent["design_effect"] < 1.3
    # p = 1: nothing to widen
    assert proportion([True] * 16, clusters=[0] * 8 + [1] * 8)["design_effect"] == 1.0


def test_ridge_probe_reads_what_is_there_and_reports_intervals(tok, problems):
    """A ridge probe recovers labels that are linearly present in the features and not ones that are absent;
    the per-layer probes of a model come with a Wilson interval around each accuracy."""
    import torch

    from nanocot.probes import linear_probes, ridge_accuracy

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (600,), generator=gen)
    present = torch.nn.functional.one_hot(labels, 5).float() + 0.1 * torch.randn(600, 5, generator=gen)
    absent = torch.randn(600, 5, generator=gen)
    assert ridge_accuracy(present, labels, train=400) == 1.0
    assert ridge_accuracy(absent, labels, train=400) < 0.4  # chance is 0.2
    out = linear_probes(make_model(len(tok)), tok, problems[:60])
    for key in ("sum", "mod"):
        assert len(out[key]) == len(out[f"{key}_intervals"]) == len(out["layers"])
        assert all(lo <= a <= hi for a, (lo, hi) in zip(out[key], out[f"{key}_intervals"]))
