"""The task: answers, reference traces, the train/test/OOD splits, the strict parser and the reward."""

import re
import signal

import numpy as np
import pytest

from nanocot.config import TaskConfig
from nanocot.ood import ood_splits
from nanocot.task import (
    COT,
    DIRECT,
    ModularAddition,
    Problem,
    completion,
    parse_answer,
    prompt,
    reference_trace,
    reward,
    validate,
)
from nanocot.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def task() -> ModularAddition:
    return ModularAddition(TaskConfig())


@pytest.fixture(scope="module")
def test_set(task) -> list[Problem]:
    return task.test_set()


@pytest.fixture(scope="module")
def ood(task) -> dict[str, list[Problem]]:
    return ood_splits(task, 300)


# ---------------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize("operands, m, answer", [
    ((6, 2), 5, 3),
    ((-3, 1), 5, 3),  # Python's %: the answer of a negative sum is still in [0, m)
    ((-5,), 5, 0),
    ((8, 7, 12, 5), 21, 11),
    ((0, 0), 10, 0),
    ((9, 1), 10, 0),
    ((-10, -10, -2), 7, 6),
])
def test_answer(operands, m, answer):
    assert Problem(operands, m).answer == answer


def test_formats_of_the_docstring_example():
    """Prompt and completion formats are what the corpus teaches; a one-character drift breaks transfer."""
    p = Problem((8, 7, 12, 5), 21)
    assert prompt(p, DIRECT) == "\n8+7+12+5%21="
    assert prompt(p, COT) == "\n8+7+12+5%21:"
    assert completion(p, DIRECT) == "11\n"
    assert completion(p, COT) == "8+7=15,15+12=27-21=6,6+5=11;11\n"
    assert reference_trace(Problem((6, 2), 5)) == "6+2=8-5=3;3"
    assert reference_trace(Problem((-3, 1), 5)) == "-3+1=-2+5=3;3"
    with pytest.raises(ValueError):
        prompt(p, "socratic")


# ------------------------------------------------------------------------------------ reference traces

_STEP = re.compile(r"^(-?\d+)\+(-?\d+)=(-?\d+)((?:[-+]\d+=-?\d+)*)$")
_REDUCTION = re.compile(r"([-+])(\d+)=(-?\d+)")


def check_trace(problem: Problem, trace: str) -> int:
    """An independent executor of 'a+b=t-m=u,...;answer': re-computes every step and returns the answer.

    Each step must add the next operand to the previous step's result, reduce by exactly m per hop, and
    land in [0, m); the final number must repeat the last step's result."""
    m = problem.modulus
    body, sep, final = trace.rpartition(";")
    assert sep == ";", trace
    steps = body.split(",")
    assert len(steps) == len(problem.operands) - 1, trace
    running = problem.operands[0]
    for step, operand in zip(steps, problem.operands[1:]):
        match = _STEP.match(step)
        assert match, f"malformed step {step!r} in {trace!r}"
        a, b, total = (int(match.group(i)) for i in (1, 2, 3))
        assert (a, b) == (running, operand), f"step {step!r} adds the wrong numbers"
        assert total == a + b, f"step {step!r} adds wrongly"
        value = total
        for sign, hop, result in _REDUCTION.findall(match.group(4)):
            assert int(hop) == m, f"step {step!r} reduces by {hop}, not the modulus {m}"
            assert (sign == "-") == (value >= m) and (sign == "+") == (value < 0), f"needless hop in {step!r}"
            value = value - m if sign == "-" else value + m
            assert int(result) == value, f"step {step!r} subtracts/adds wrongly"
        assert 0 <= value < m, f"step {step!r} ends outside [0, {m})"
        running = value
    assert int(final) == running, trace
    return int(final)


def _sample_problems(task, ood) -> list[Problem]:
    rng = np.random.default_rng(1)
    problems = task.sample_train(rng, 300) + task.test_set(100)
    for split in ood.values():
        problems += split
    # hand-made corner cases: big negatives needing several hops, operands far above m
    problems += [Problem((-28, -28, -28, -28), 29), Problem((57, 57, 57), 10), Problem((0, 0), 2),
                 Problem((5, -5), 3)]
    return problems


def test_reference_trace_executes_correctly(task, ood):
    """The CoT warm-up imitates these traces; one wrong step would teach wrong arithmetic."""
    problems = _sample_problems(task, ood)
    assert {"negative", "larger", "more_operands", "unseen_moduli"} <= set(ood)
    for p in problems:
        assert check_trace(p, reference_trace(p)) == p.answer
        assert completion(p, COT) == reference_trace(p) + "\n"
        assert parse_answer(completion(p, COT), COT) == p.answer
        assert parse_answer(completion(p, DIRECT), DIRECT) == p.answer


def test_checker_rejects_a_wrong_trace():
    """The checker above must itself be able to fail."""
    p = Problem((8, 7, 12, 5), 21)
    for bad in ("8+7=15,15+12=27-21=6,6+5=11;12", "8+7=15,15+12=27-21=5,5+5=10;10",
                "8+7=15,15+12=27,27+5=32-21=11;11", "8+7=15-21=-6+21=15,15+12=27-21=6,6+5=11;11"):
        with pytest.raises(AssertionError):
            check_trace(p, bad)


# --------------------------------------------------------------------------------------------- splits


def test_train_samples_never_hit_the_test_set(task, test_set):
    """No test problem is ever trained on, whatever the seed."""
    test = set(test_set)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for k in (None, 2, 4):
            for p in task.sample_train(rng, 2000, k=k):
                assert not task.is_test(p)
                assert p not in test


def test_test_set_is_test_and_deterministic(task, test_set):
    cfg = TaskConfig()
    assert len(test_set) == cfg.test_size
    assert len(set(test_set)) == len(test_set), "duplicates in the test set"
    assert all(task.is_test(p) for p in test_set)
    assert all(len(p.operands) == cfg.num_operands for p in test_set)
    assert ModularAddition(TaskConfig()).test_set() == test_set, "a fresh task object must agree"
    assert task.test_set(50) == test_set[:50]


def test_cached_test_sets_equal_fresh_draws_at_every_size():
    """test_set keeps its longest draw per task and slices it: that must be exactly what drawing anew at each
    size gives (the draw is a prefix of a longer one), whichever size was asked for first."""
    from nanocot import task as task_module

    task = ModularAddition(TaskConfig(max_modulus=19, test_size=200))
    task_module._TEST_SETS.pop(task.config, None)
    short = task.test_set(30)
    long = task.test_set(250)
    assert short == task._draw_test_set(30) and long == task._draw_test_set(250)
    assert task.test_set(30) == short and task.test_set() == long[:200]
    task.test_set(30).append(None)  # a caller's list is its own
    assert task.test_set(30) == short


def test_training_distribution(task):
    """Training draws operands in [0, m), moduli from the training range, and mixes in easier problems."""
    cfg = TaskConfig()
    problems = task.sample_train(np.random.default_rng(0), 3000)
    moduli = {p.modulus for p in problems}
    assert moduli == set(range(cfg.min_modulus, cfg.max_modulus + 1)) - set(cfg.heldout_moduli)
    assert all(0 <= x < p.modulus for p in problems for x in p.operands)
    ks = [len(p.operands) for p in problems]
    assert set(ks) == set(range(cfg.min_operands, cfg.num_operands + 1))
    share_easier = np.mean([k < cfg.num_operands for k in ks])
    assert abs(share_easier - cfg.easier_fraction) < 0.05


def test_balanced_steps_cover_every_fact_and_both_decisions(task):
    """Balanced single steps: two-operand training problems whose operand pairs are uniform over the task's
    pairs (so large pairs are common, where the task's own mix makes them rare) and whose decision is reduce
    about as often as keep, even at a total that only the smallest modulus reduces."""
    rng = np.random.default_rng(0)
    steps = task.sample_balanced_steps(rng, 6000)
    assert all(len(p.operands) == 2 and not task.is_test(p) for p in steps)
    assert all(0 <= x < p.modulus for p in steps for x in p.operands)
    assert {p.modulus for p in steps} == set(task.train_moduli)
    large_pair = lambda problems: np.mean([max(p.operands) >= 20 for p in problems])
    assert abs(large_pair(steps) - (1 - (20 / 29) ** 2)) < 0.03  # uniform pairs below 29
    assert large_pair(task.sample_train(rng, 6000, k=2)) < 0.25
    at_ten = [p for p in steps if sum(p.operands) == 10 and max(p.operands) < 10]  # m = 10 is possible
    assert 0.35 < np.mean([p.modulus == 10 for p in at_ten]) < 0.65  # the one modulus that reduces 10
    assert all(sum(p.operands) < p.modulus for p in steps if sum(p.operands) < 10)  # nothing to balance


def test_max_operand_decouples_operands_from_the_modulus():
    """max_operand = b: operands in [0, b) for every modulus, in training, test and the OOD splits' bounds."""
    from dataclasses import replace

    cfg = replace(TaskConfig(), max_operand=64)
    wide = ModularAddition(cfg)
    problems = wide.sample_train(np.random.default_rng(0), 3000)
    operands = [x for p in problems for x in p.operands]
    assert min(operands) == 0 and max(operands) == 63
    assert any(x >= p.modulus for p in problems for x in p.operands)
    test = wide.test_set(300)
    assert all(wide.is_test(p) and max(p.operands) < 64 for p in test)
    assert not set(test) & set(problems)
    ood = ood_splits(wide, 100)
    assert all(min(p.operands) < 0 and min(p.operands) > -64 for p in ood["negative"])
    assert all(64 <= max(p.operands) < 128 for p in ood["larger"])
    assert ModularAddition(TaskConfig()).operand_bound(21) == 21, "the default keeps operands below m"


def test_modulus_first_changes_the_prompt_only():
    """modulus_first moves the modulus to the front of the prompt; the problems, the split and every
    completion stay exactly the same."""
    from dataclasses import replace

    first = ModularAddition(replace(TaskConfig(), modulus_first=True))
    last = ModularAddition(TaskConfig())
    p, q = first.test_set(50), last.test_set(50)
    assert [(x.operands, x.modulus) for x in p] == [(x.operands, x.modulus) for x in q]
    assert prompt(p[0], DIRECT) == f"\n%{q[0].modulus} " + "+".join(map(str, q[0].operands)) + "="
    assert prompt(Problem((8, 7, 12, 5), 21, modulus_first=True), COT) == "\n%21 8+7+12+5:"
    assert all(completion(a, m) == completion(b, m) for a, b in zip(p, q) for m in (DIRECT, COT))
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert all(a.modulus_first and (a.operands, a.modulus) == (b.operands, b.modulus)
               for a, b in zip(first.sample_train(rng_a, 200), last.sample_train(rng_b, 200)))
    assert all(x.modulus_first for split in ood_splits(first, 20).values() for x in split)
    tok = Tokenizer()
    assert tok.decode(tok.encode(prompt(p[0], COT))) == prompt(p[0], COT), \
        "the space keeps m and x1 two tokens"


def test_unseen_moduli_never_trained_on(task, test_set, ood):
    held = set(TaskConfig().heldout_moduli)
    rng = np.random.default_rng(5)
    assert not held & {p.modulus for p in task.sample_train(rng, 5000)}
    assert not held & {p.modulus for p in task.train_sample(500)}
    assert not held & {p.modulus for p in test_set}
    assert {p.modulus for p in ood["unseen_moduli"]} <= held


def _in_distribution(p: Problem, cfg: TaskConfig) -> bool:
    return (cfg.min_modulus <= p.modulus <= cfg.max_modulus and p.modulus not in cfg.heldout_moduli
            and cfg.min_operands <= len(p.operands) <= cfg.num_operands
            and all(0 <= x < p.modulus for x in p.operands))


def test_ood_problems_are_out_of_distribution(ood):
    """An OOD split that overlaps training would measure memorisation, not generalisation."""
    cfg = TaskConfig()
    for name, problems in ood.items():
        assert len(problems) == 300, name
        assert not any(_in_distribution(p, cfg) for p in problems), name
    assert all(min(p.operands) < 0 for p in ood["negative"])
    assert all(max(p.operands) >= p.modulus for p in ood["larger"])
    assert all(len(p.operands) == cfg.num_operands + 2 for p in ood["more_operands"])
    assert ood_splits(ModularAddition(TaskConfig()), 300) == ood, "OOD splits must be deterministic"


@pytest.mark.parametrize("bad", [
    dict(min_modulus=1), dict(min_modulus=20, max_modulus=12), dict(easier_fraction=1.5),
    dict(min_operands=1), dict(min_operands=5), dict(test_fraction=0.0),
    dict(min_modulus=17, max_modulus=17),  # every modulus held out
    dict(max_operand=1), dict(max_operand=-3), dict(max_operand=90),  # 90: OOD sums leave the vocabulary
])
def test_validate_rejects_impossible_settings(bad):
    from dataclasses import replace

    with pytest.raises(ValueError):
        validate(replace(TaskConfig(), **bad))


class _Timeout(Exception):
    pass


def test_small_problem_space_does_not_hang():
    """A valid config must give a test set (or a clear ValueError) instead of hanging forever."""
    from dataclasses import replace

    cfg = replace(TaskConfig(), min_modulus=10, max_modulus=10)

    def on_alarm(*_):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(2)
    try:
        try:
            ModularAddition(cfg).test_set()
        except ValueError:
            pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------------- parser and reward


@pytest.mark.parametrize("text, answer", [
    ("8+7=15;15\n", 15),
    ("8+7=15;15", 15),
    ("8+7=15-10=5;5\nanything after the newline is ignored", 5),
    ("-3+1=-2+5=3;3\n", 3),
])
def test_parse_cot_accepts(text, answer):
    assert parse_answer(text, COT) == answer


@pytest.mark.parametrize("text", [
    "15", ";", "8+7=15;", "8+7=15;1 5", "8+7=15;15;15", "abc", "", "8+7=15;x", ";15", "8+7=15; 15",
    "8+7=15;15 ", "\n8+7=15;15", "8+7=15;15x",
])
def test_parse_cot_rejects(text):
    """A lenient parser would reward junk; this is the line the RL reward stands on."""
    assert parse_answer(text, COT) is None


@pytest.mark.parametrize("text, answer", [("11", 11), ("11\n", 11), ("11\n...", 11), ("0\n", 0),
                                          ("11\n12", 11)])
def test_parse_direct_accepts(text, answer):
    """Only the first line matters: generation stops at the newline."""
    assert parse_answer(text, DIRECT) == answer


@pytest.mark.parametrize("text", ["11 ", "1a", "", " 11", "\n11", "11;11", "8+3=11", "+11"])
def test_parse_direct_rejects(text):
    assert parse_answer(text, DIRECT) is None


def test_parse_unknown_mode_raises():
    with pytest.raises(ValueError):
        parse_answer("11", "socratic")


def test_reward_only_for_the_right_well_formed_answer():
    p = Problem((8, 7, 12, 5), 21)
    assert reward(p, completion(p, COT), COT) == 1.0
    assert reward(p, "junk;11\n", COT) == 1.0  # outcome-only: the trace itself is not graded
    assert reward(p, "8+7=15;12\n", COT) == 0.0
    assert reward(p, "8+7=15;11 \n", COT) == 0.0
    assert reward(p, "11\n", COT) == 0.0  # a direct answer under the CoT prompt is malformed
    assert reward(p, "11\n", DIRECT) == 1.0
    assert reward(p, "12\n", DIRECT) == 0.0
    assert reward(p, "", DIRECT) == 0.0
    assert reward(p, completion(p, COT)) == 1.0  # CoT is the default mode
