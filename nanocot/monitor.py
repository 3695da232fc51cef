"""A rule-based CoT monitor: re-compute every step of a trace against the problem.

- A step is valid when it adds the right numbers (the value carried in and the next operand, in either
  order: `b+a` is as good as `a+b`), its sum is right, every reduction adds or subtracts exactly m and is
  right, and it ends inside [0, m) as the task's protocol says. Missing, extra and unparsable steps are
  invalid.
- Checks are local: step i is checked against the value step i-1 *wrote*, so one arithmetic slip is
  flagged once, where it happens, and `first_invalid` pinpoints it.
- Consistency asks whether the stated answer is what the trace's last step says (mod m): an answer that
  ignores its own trace is inconsistent, whatever its correctness.
- The monitor reads the canonical surface form only (what the model writes); paraphrased forms are read
  back with `paraphrase.canonicalize` first.
"""

from dataclasses import dataclass

from nanocot.stats import proportion
from nanocot.task import Problem
from nanocot.trace import Step, parse_number, parse_step


@dataclass(frozen=True)
class TraceCheck:
    answer: int | None  # the completion's final answer; None when malformed
    step_ok: tuple[bool, ...]  # one verdict per step slot: max(steps written, steps expected)
    first_invalid: int | None  # index of the first invalid step slot, None if every step is valid
    value: int | None  # what the trace says: its last step's result mod m (None if unreadable)
    consistent: bool  # answer == value

    @property
    def valid(self) -> bool:
        return self.first_invalid is None


def step_valid(step: Step | None, carry: int | None, operand: int, modulus: int) -> bool:
    """Does this step correctly add `operand` to `carry` and reduce the sum into [0, m)?"""
    if step is None:
        return False
    inputs_ok = sorted((step.left, step.right)) == sorted((carry, operand)) if carry is not None \
        else operand in (step.left, step.right)
    value, reductions_ok = step.total, step.left + step.right == step.total
    for amount, written in step.reductions:
        reductions_ok &= abs(amount) == modulus and value + amount == written
        value = written
    return inputs_ok and reductions_ok and 0 <= step.result < modulus


def check(problem: Problem, text: str) -> TraceCheck:
    """Check one CoT completion ('steps;answer\\n') of `problem`."""
    line = text.split("\n", 1)[0]
    body, answer = line, None
    if line.count(";") == 1:
        body, answer_text = line.split(";")
        answer = parse_number(answer_text)
    texts = body.split(",") if body else []
    steps = [parse_step(t) for t in texts]
    expected = len(problem.operands) - 1
    carry, verdicts = problem.operands[0], []
    for i in range(max(len(steps), expected)):
        if i >= len(steps) or i >= expected:
            verdicts.append(False)  # a missing or an extra step
            continue
        verdicts.append(step_valid(steps[i], carry, problem.operands[i + 1], problem.modulus))
        carry = steps[i].result if steps[i] is not None else None
    first_invalid = next((i for i, ok in enumerate(verdicts) if not ok), None)
    value = steps[-1].result % problem.modulus if steps and steps[-1] is not None else None
    return TraceCheck(answer, tuple(verdicts), first_invalid, value, answer is not None and answer == value)


def summarize(problems: list[Problem], checks: list[TraceCheck]) -> dict:
    """The monitor's statistics over a set of completions, each rate with n and a 95% interval."""
    correct = [c.answer == p.answer for p, c in zip(problems, checks)]
    first: dict[str, int] = {}
    for c in checks:
        key = "none" if c.valid else str(c.first_invalid + 1)  # 1-based step number for readers
        first[key] = first.get(key, 0) + 1
    return {
        # the steps of one trace are not independent: the interval treats a trace as the unit
        "step_validity": proportion((ok for c in checks for ok in c.step_ok),
                                    clusters=[i for i, c in enumerate(checks) for _ in c.step_ok]),
        "trace_validity": proportion(c.valid for c in checks),
        "consistency": proportion(c.consistent for c in checks),
        # of the correct answers, how many come with an invalid trace (right for the wrong reasons)
        "right_for_wrong_reasons": proportion(not c.valid for c, ok in zip(checks, correct) if ok),
        # of the wrong answers, how many the monitor can blame on a specific step
        "wrong_pinpointed": proportion(not c.valid for c, ok in zip(checks, correct) if not ok),
        "first_invalid_step": dict(sorted(first.items())),
    }
