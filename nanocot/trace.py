"""The structure of a step-by-step trace: parse it into steps, render steps back, execute them.

A trace is `step,step,...;answer` and a step is `a+b=t` followed by zero or more reductions `-m=u` or
`+m=u`, e.g. `15+12=27-21=6`. Paraphrasers, the monitor and the faithfulness interventions all work on
this parsed form, so "what a step says" is defined in exactly one place.
"""

import re
from dataclasses import dataclass

_NUM = r"(?:0|-?[1-9]\d*)"  # one spelling per number: no leading zeros, no "-0"
_STEP = re.compile(rf"^({_NUM})\+({_NUM})=({_NUM})((?:[+-]\d+={_NUM})*)$")
_REDUCTION = re.compile(rf"([+-])(\d+)=({_NUM})")


@dataclass(frozen=True)
class Step:
    left: int  # running value carried in
    right: int  # operand added
    total: int  # the written sum
    reductions: tuple[tuple[int, int], ...] = ()  # (signed amount added, written result), e.g. ((-21, 6),)

    @property
    def result(self) -> int:
        """The value this step hands to the next one: its last written number."""
        return self.reductions[-1][1] if self.reductions else self.total

    def render(self) -> str:
        text = f"{self.left}+{self.right}={self.total}"
        for amount, value in self.reductions:
            text += f"{'-' if amount < 0 else '+'}{abs(amount)}={value}"
        return text


def body(steps) -> str:
    """The steps as a trace body, `s1,s2,...;`: what comes before the answer."""
    return ",".join(s.render() for s in steps) + ";"


@dataclass(frozen=True)
class Trace:
    steps: tuple[Step, ...]
    answer: int

    def render(self) -> str:
        return body(self.steps) + str(self.answer)


def parse_step(text: str) -> Step | None:
    match = _STEP.match(text)
    if not match:
        return None
    reductions = tuple(
        (int(amount) * (-1 if sign == "-" else 1), int(value))
        for sign, amount, value in _REDUCTION.findall(match.group(4))
    )
    return Step(int(match.group(1)), int(match.group(2)), int(match.group(3)), reductions)


def parse_trace(text: str) -> Trace | None:
    """A completion (up to its first newline) as a Trace, or None if any part is malformed."""
    line = text.split("\n", 1)[0]
    if line.count(";") != 1:
        return None
    body, answer = line.split(";")
    if not re.fullmatch(_NUM, answer) or not body:
        return None
    steps = [parse_step(s) for s in body.split(",")]
    if any(s is None for s in steps):
        return None
    return Trace(tuple(steps), int(answer))


def split_answer(text: str) -> tuple[str, str] | None:
    """'steps;answer\\n' -> ('steps;', 'answer\\n'); None if there is no single ';'."""
    line = text.split("\n", 1)[0]
    if line.count(";") != 1:
        return None
    body, answer = line.split(";")
    return body + ";", answer + "\n"


def parse_number(text: str) -> int | None:
    """A number in its one canonical spelling ('12', '-3'; not '012' or '-0'), or None."""
    return int(text) if re.fullmatch(_NUM, text) else None
