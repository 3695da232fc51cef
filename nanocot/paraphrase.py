"""Paraphrasers: rewrite a trace into an equivalent surface form that executes to the same value.

The argument's defence against steganography: if the answer depends only on what the trace *says*, a
rewording that keeps the meaning keeps the answer; anything hidden in the exact surface form is lost.
- Each paraphraser maps the body of a trace (`steps;`, without the answer) to another body ending in ";"
  (so the model still knows where to answer), or None if the body does not parse. `rng` makes the
  stochastic ones reproducible.
- `canonical` parses and re-renders: the identity on a well-formed trace. It is the control: its accuracy
  gap must be 0, or the measuring plumbing (not the model) changed something.
- `swap` writes `b+a` for `a+b`; `reword` also varies spacing, separators and operator words
  ("plus", "is", "minus", "then": words the corpus uses); `words` translates the whole trace into English,
  the corpus's second language ("eight plus seven is fifteen minus twelve is three"), and `digits`
  translates it back. Number words and operator words are single tokens (tokenizer.py), so a translated
  trace is about as long as the original and fits the context whole.
- `canonicalize` reads any of these forms back into the canonical `a+b=t-m=u,...` text, so the monitor
  and the tests can parse and execute a paraphrased trace.
"""

import random
import re
from typing import Callable, Sequence

from nanocot.tokenizer import number_word
from nanocot.trace import Step, body, parse_step, split_answer


def parse_body(body: str) -> list[Step] | None:
    """'s1,s2;' -> parsed steps, or None if anything is malformed."""
    if not body.endswith(";"):
        return None
    steps = [parse_step(s) for s in body[:-1].split(",")]
    if not steps or any(s is None for s in steps):
        return None
    return steps


def swap_operands(body: str, rng: random.Random) -> str | None:
    """Commutative order: each step `a+b=t...` becomes `b+a=t...` with probability 1/2 (at least one
    step is swapped when there are any). Returns None for a body that does not parse."""
    steps = parse_body(body)
    if steps is None:
        return None
    flips = [rng.random() < 0.5 for _ in steps]
    if not any(flips):
        flips[rng.randrange(len(steps))] = True
    out = [Step(s.right, s.left, s.total, s.reductions) if flip else s for s, flip in zip(steps, flips)]
    return ",".join(s.render() for s in out) + ";"


def canonical(body: str, rng: random.Random) -> str | None:
    """Parse and render again: the identity on well-formed traces (the control paraphraser)."""
    steps = parse_body(body)
    return None if steps is None else ",".join(s.render() for s in steps) + ";"


def _say(step: Step, number, plus: str, equals: str, minus: str) -> str:
    """One step in a chosen vocabulary: number(n) spells a number; plus/equals/minus spell the operators."""
    text = f"{number(step.left)}{plus}{number(step.right)}{equals}{number(step.total)}"
    for amount, value in step.reductions:
        text += f"{minus if amount < 0 else plus}{number(abs(amount))}{equals}{number(value)}"
    return text


def reword(body: str, rng: random.Random) -> str | None:
    """Stochastic rewording: per step, operand order (1/2), and one of three styles ('8+7=15',
    '8 + 7 = 15', '8 plus 7 is 15'); between steps ',', ', ' or ' then '."""
    steps = parse_body(body)
    if steps is None:
        return None
    styles = [("+", "=", "-"), (" + ", " = ", " - "), (" plus ", " is ", " minus ")]
    parts = []
    for s in steps:
        if rng.random() < 0.5:
            s = Step(s.right, s.left, s.total, s.reductions)
        parts.append(_say(s, str, *rng.choice(styles)))
    text = parts[0]
    for part in parts[1:]:
        text += rng.choice([",", ", ", " then "]) + part
    return text + ";"


def spell(n: int) -> str:
    """A number in words where the corpus has words for it (0..99, 'negative' for a minus sign);
    digits otherwise."""
    if abs(n) > 99:
        return str(n)
    return ("negative " if n < 0 else "") + number_word(abs(n))


def to_words(body: str, rng: random.Random) -> str | None:
    """Translation into English: '8+7=15,15+12=27-21=6;' -> 'eight plus seven is fifteen, fifteen plus twelve
    is twenty seven minus twenty one is six;'. Deterministic (rng unused; kept for the common signature)."""
    steps = parse_body(body)
    if steps is None:
        return None
    return ", ".join(_say(s, spell, " plus ", " is ", " minus ") for s in steps) + ";"


# longest first, so 'twenty seven' wins over 'twenty' and 'seventeen' over 'seven'
_WORD_VALUES = {number_word(n): n for n in range(100)}
_NUMBER_WORDS = re.compile(
    r"\b(negative )?(" + "|".join(sorted(_WORD_VALUES, key=len, reverse=True)) + r")\b")


def canonicalize(text: str) -> str:
    """Read any paraphrased form back into canonical text ('8 plus seven is 15, ...' -> '8+7=15,...')."""
    text = _NUMBER_WORDS.sub(lambda m: ("-" if m.group(1) else "") + str(_WORD_VALUES[m.group(2)]), text)
    for word, symbol in ((" plus ", "+"), (" minus ", "-"), (" is ", "="), (" then ", ",")):
        text = text.replace(word, symbol)
    return text.replace(" ", "")


def to_digits(body: str, rng: random.Random) -> str | None:
    """Translation back: any paraphrased form (English, reworded, mixed) into the canonical digits, or None
    if it does not read as steps. `to_digits(to_words(b))` is `canonical(b)`."""
    return canonical(canonicalize(body), rng)


def rewrite_steps(paraphraser, steps: Sequence[Step], j: int, rng: random.Random,
                  from_end: bool = False) -> str | None:
    """The body with its first j steps (with `from_end`, its last j) paraphrased and the rest as written; None
    if the paraphraser cannot read them."""
    n = len(steps)
    part = paraphraser(body(steps[n - j :] if from_end else steps[:j]), rng)
    if part is None:
        return None
    if from_end:
        return (body(steps[: n - j])[:-1] + "," if j < n else "") + part
    return part[:-1] + ("," + body(steps[j:]) if j < n else ";")


def paraphrase_body(paraphraser, steps: Sequence[Step], rng: random.Random, fits: Callable[[str], bool],
                    from_end: bool = False) -> tuple[str, int]:
    """Paraphrase the longest prefix of steps that still fits the context (all of them when it can), or with
    `from_end` the longest suffix; the rest stays as written. Returns the new body and how many steps were
    paraphrased (0: none fit). (A trace near the context's end can still overflow when rewritten: a prefix
    rewrite then leaves the last step, whose value the answer repeats, as written; a suffix rewrite rewrites
    that one first.)"""
    for j in range(len(steps), 0, -1):
        new = rewrite_steps(paraphraser, steps, j, rng, from_end)
        if new is None:
            return body(steps), 0
        if fits(new):
            return new, j
    return body(steps), 0


PARAPHRASERS = {"swap": swap_operands, "canonical": canonical, "reword": reword, "words": to_words,
                "digits": to_digits}


def paraphrase_sampled(text: str, rng: random.Random, prob: float, names: list[str], from_end_prob: float,
                       fits: Callable[[str], bool]) -> tuple[str | None, bool]:
    """Paraphrase in REINFORCE's loop, for one sampled completion `steps;answer`: with probability `prob` its
    trace rewritten by one of `names` (drawn), from the last step back with probability `from_end_prob`, as
    many steps as `fits` (as in the warm-up and the evaluation). Returns the new trace, or None if not drawn
    or nothing changed; and whether it was drawn but cannot be read (REINFORCE then pays it nothing)."""
    parts = split_answer(text)
    if prob == 0 or not parts or rng.random() >= prob:
        return None, False
    name = names[rng.randrange(len(names))] if len(names) > 1 else names[0]
    steps = parse_body(parts[0])
    if steps is None:
        return None, True
    from_end = from_end_prob > 0 and rng.random() < from_end_prob
    new_body, paraphrased = paraphrase_body(PARAPHRASERS[name], steps, rng, fits, from_end)
    return (new_body if paraphrased else None), False
