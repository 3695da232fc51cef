"""Paraphrasers: rewrite a trace into an equivalent surface form that executes to the same value.

The seed's defence against steganography: if the answer depends only on what the trace *says*, a
rewording that keeps the meaning keeps the answer; anything hidden in the exact surface form is lost.
Each paraphraser maps the body of a trace (`steps;` without the answer) to another body.
"""

import random

from nanocot.trace import Step, parse_step


def swap_operands(body: str, rng: random.Random) -> str | None:
    """Commutative order: each step `a+b=t...` becomes `b+a=t...` with probability 1/2 (at least one
    step is swapped when there are any). Returns None for a body that does not parse."""
    if not body.endswith(";"):
        return None
    steps = [parse_step(s) for s in body[:-1].split(",")]
    if not steps or any(s is None for s in steps):
        return None
    flips = [rng.random() < 0.5 for _ in steps]
    if not any(flips):
        flips[rng.randrange(len(steps))] = True
    out = [Step(s.right, s.left, s.total, s.reductions) if flip else s for s, flip in zip(steps, flips)]
    return ",".join(s.render() for s in out) + ";"


PARAPHRASERS = {"swap": swap_operands}
