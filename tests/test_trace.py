"""Trace structure: parse/render round trips on reference traces, the steps execute, malformed text is
rejected, split_answer, and the swap paraphraser keeps every step's meaning."""

import random

import numpy as np
import pytest

from nanocot.config import TaskConfig
from nanocot.ood import ood_splits
from nanocot.paraphrase import PARAPHRASERS, swap_operands
from nanocot.task import ModularAddition, Problem, reference_trace
from nanocot.trace import Step, Trace, parse_step, parse_trace, split_answer


@pytest.fixture(scope="module")
def task() -> ModularAddition:
    return ModularAddition(TaskConfig())


@pytest.fixture(scope="module")
def problems(task) -> list[Problem]:
    """In-distribution problems of every operand count plus every OOD split (negatives, larger operands,
    unseen moduli, more operands): the shapes a trace can take."""
    rng = np.random.default_rng(0)
    out = [p for k in range(2, task.config.num_operands + 1) for p in task.sample_train(rng, 60, k=k)]
    out += task.test_set(100)
    for split in ood_splits(task, size=50).values():
        out += split
    return out


def _check_executes(problem: Problem, trace: Trace) -> None:
    """Run the trace as a program: every written number is what the arithmetic says it is."""
    assert trace.steps[0].left == problem.operands[0]
    previous = None
    for step, operand in zip(trace.steps, problem.operands[1:]):
        if previous is not None:
            assert step.left == previous.result, "each step carries the previous step's result"
        assert step.right == operand
        assert step.left + step.right == step.total
        value = step.total
        for amount, written in step.reductions:
            assert written == value + amount
            value = written
        assert step.result == value
        previous = step
    assert len(trace.steps) == len(problem.operands) - 1
    assert trace.steps[-1].result == trace.answer == problem.answer


def test_reference_traces_parse_render_and_execute(problems):
    """Paraphrasers and the monitor work on the parsed form: it must be lossless and mean what it says,
    including negative operands and sums (reductions by +m) and the OOD shapes."""
    kinds = {"negative": 0, "plus_reduction": 0, "minus_reduction": 0, "unreduced": 0}
    for p in problems:
        text = reference_trace(p)
        trace = parse_trace(text)
        assert trace is not None, text
        assert trace.render() == text
        assert parse_trace(text + "\n") == trace, "the completion's newline is not part of the trace"
        _check_executes(p, trace)
        kinds["negative"] += any(x < 0 for x in p.operands)
        for s in trace.steps:
            kinds["plus_reduction"] += any(a > 0 for a, _ in s.reductions)
            kinds["minus_reduction"] += any(a < 0 for a, _ in s.reductions)
            kinds["unreduced"] += not s.reductions
    assert all(n > 0 for n in kinds.values()), f"problems must cover every step shape: {kinds}"


def test_hand_example():
    trace = parse_trace("8+7=15,15+12=27-21=6,6+5=11;11\n")
    assert trace == Trace((Step(8, 7, 15), Step(15, 12, 27, ((-21, 6),)), Step(6, 5, 11)), 11)
    assert parse_step("-3+-5=-8+7=-1+7=6") == Step(-3, -5, -8, ((7, -1), (7, 6)))
    assert parse_step("-3+-5=-8+7=-1+7=6").result == 6


@pytest.mark.parametrize("text", ["", ";3", "8+7=15", "8+7=15;;3", "8+7=15,;3", "8+7=;3", "a+b=c;3",
                                  "8+7=15;3;4", "8+7=15;", "8+7=15; 3", "8+7=15-=3;3", "8+7=15*2=30;3",
                                  ",8+7=15;3", "8+7+1=16;3", "8 + 7 = 15;3"])
def test_parse_trace_rejects_malformed(text):
    """A lenient parser would let paraphrasers and the monitor act on junk."""
    assert parse_trace(text) is None


def test_parse_trace_reads_only_the_first_line():
    assert parse_trace("8+7=15;15\n9+9=18;18") == Trace((Step(8, 7, 15),), 15)
    assert parse_trace("\n8+7=15;15") is None


def test_split_answer():
    """RL re-samples the answer after a paraphrased body: the split must keep ';' with the body and
    end the answer with the newline that stops generation."""
    assert split_answer("8+7=15,15+12=27-21=6;6\n") == ("8+7=15,15+12=27-21=6;", "6\n")
    assert split_answer("8+7=15;15") == ("8+7=15;", "15\n")
    assert split_answer("8+7=15;15\nmore;text") == ("8+7=15;", "15\n"), "only the first line counts"
    assert split_answer("8+7=15;\n") == ("8+7=15;", "\n")
    assert split_answer("junk;x") == ("junk;", "x\n"), "split_answer does not parse, it only splits"
    for bad in ["", "8+7=15", "8+7=15;;3", "a;b;c", "\n8+7=15;15"]:
        assert split_answer(bad) is None, bad
    for p in [Problem((8, 7, 12, 5), 21), Problem((-3, 19, 0), 11)]:
        text = reference_trace(p) + "\n"
        body, answer = split_answer(text)
        assert body + answer == text


# --------------------------------------------------------------------------------------------- paraphrase


def _body(problem: Problem) -> str:
    return reference_trace(problem).split(";")[0] + ";"


def _steps(body: str) -> list[Step]:
    return list(parse_trace(body + "0").steps)


def test_swap_operands_keeps_meaning(problems):
    """The paraphrase must change only the order of each swapped step's operands: same totals, same
    reductions, same results, so the rewritten trace executes to the same value."""
    rng = random.Random(0)
    assert PARAPHRASERS["swap"] is swap_operands
    changed = 0
    for p in problems:
        body = _body(p)
        new = swap_operands(body, rng)
        assert new is not None and new.endswith(";") and new.count(";") == 1
        before, after = _steps(body), _steps(new)
        assert len(after) == len(before)
        swapped = 0
        for a, b in zip(before, after):
            assert {a.left, a.right} == {b.left, b.right}
            assert (b.left, b.right) in ((a.left, a.right), (a.right, a.left))
            assert b.total == a.total and b.reductions == a.reductions and b.result == a.result
            assert b.left + b.right == b.total  # still executes
            swapped += (b.left, b.right) == (a.right, a.left)
        assert swapped >= 1, "at least one step must be swapped"
        changed += new != body
    assert changed >= len(problems) * 0.9, \
        "nearly every body has an asymmetric step, so nearly every one changes"


def test_swap_operands_hand_example():
    body = "8+7=15,15+12=27-21=6;"
    outs = {swap_operands(body, random.Random(seed)) for seed in range(40)}
    assert outs == {"7+8=15,15+12=27-21=6;", "8+7=15,12+15=27-21=6;", "7+8=15,12+15=27-21=6;"}, \
        "every non-empty subset of steps is swapped for some seed, never none"
    assert swap_operands("-3+-5=-8+21=13;", random.Random(0)) == "-5+-3=-8+21=13;"


def test_swap_operands_is_deterministic_per_seed(problems):
    bodies = [_body(p) for p in problems[:100]]
    a = [swap_operands(b, random.Random(7)) for b in bodies]
    b = [swap_operands(b, random.Random(7)) for b in bodies]
    assert a == b
    rng1, rng2 = random.Random(3), random.Random(3)
    assert [swap_operands(x, rng1) for x in bodies] == [swap_operands(x, rng2) for x in bodies]


@pytest.mark.parametrize("body", ["", ";", "8+7=15", "8+7=15;3", "8+7=15,;", "a+b=c;", "8+7=;", "8+7=15;3;",
                                  ",8+7=15;"])
def test_swap_operands_rejects_malformed(body):
    assert swap_operands(body, random.Random(0)) is None
