"""Modular addition, `(x1 + ... + xk) mod m`: problems, splits, prompts, reference traces, parser, reward.

- Two prompt formats that differ in one character, both starting with a newline as every corpus line does
  (an early calibration run: a prompt that does not look like the corpus loses the pretrained skills):
      direct:  "\\n8+7+12+5%21="  ->  "11\\n"
      cot:     "\\n8+7+12+5%21:"  ->  "8+7=15,15+12=27-21=6,6+5=11;11\\n"
  With `TaskConfig.modulus_first` the modulus leads ("\\n%21 8+7+12+5="); the completions are the same.
- The reference trace is a running sum, one step per operand, each step reduced into [0, m) by repeated
  subtraction (or addition, for negative sums) of m. It ends with ";answer".
- The train/test split is by the *whole problem* (a keyed hash of operands and modulus), so no test problem
  is ever trained on, whatever the seed; the out-of-distribution splits are ood.py's.
- Parsing is strict: a completion that is not exactly the expected shape earns no reward. A lenient parser
  that accepts junk, or a buggy one that rejects everything, silently breaks RL.
"""

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from nanocot.config import TaskConfig
from nanocot.tokenizer import MAX_NUMBER, NUMBER_FORMATS

DIRECT, COT = "direct", "cot"
MAX_OPERANDS = 8  # prompt + trace of k + 2 operands (the OOD split) must fit a 96-token context
_INT = r"(0|-?[1-9]\d*)"  # no leading zeros, no "-0": one number has one spelling
_DIRECT_ANSWER = re.compile(rf"^{_INT}$")
_COT_ANSWER = re.compile(rf"^([^;\n]+);{_INT}$")


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]
    modulus: int
    modulus_first: bool = False  # how the prompt writes it (TaskConfig.modulus_first); not part of the maths

    @property
    def answer(self) -> int:
        return sum(self.operands) % self.modulus  # Python's % is in [0, m) for negative sums too

    def expression(self) -> str:
        terms = "+".join(str(x) for x in self.operands)
        return f"%{self.modulus} {terms}" if self.modulus_first else f"{terms}%{self.modulus}"


def prompt(problem: Problem, mode: str) -> str:
    if mode not in (DIRECT, COT):
        raise ValueError(f"unknown prompt mode {mode!r}: use {DIRECT!r} or {COT!r}")
    return "\n" + problem.expression() + ("=" if mode == DIRECT else ":")


def reduce_chain(total: int, modulus: int) -> str:
    """'27-21=6' style reduction of `total` into [0, m); empty if already there."""
    text = ""
    while total >= modulus:
        text += f"-{modulus}={total - modulus}"
        total -= modulus
    while total < 0:
        text += f"+{modulus}={total + modulus}"
        total += modulus
    return text


def reference_steps(problem: Problem) -> list[str]:
    """One step per added operand: '15+12=27-21=6'."""
    steps, running = [], problem.operands[0]
    for x in problem.operands[1:]:
        total = running + x
        steps.append(f"{running}+{x}={total}" + reduce_chain(total, problem.modulus))
        running = total % problem.modulus
    return steps


def reference_trace(problem: Problem) -> str:
    """The full CoT completion without the final newline: 'steps;answer'."""
    return ",".join(reference_steps(problem)) + f";{problem.answer}"


def completion(problem: Problem, mode: str) -> str:
    """The supervised target that follows `prompt(problem, mode)`."""
    return (str(problem.answer) if mode == DIRECT else reference_trace(problem)) + "\n"


def parse_answer(text: str, mode: str) -> int | None:
    """The final answer of a completion, or None if it is malformed. Stops at the first newline (where
    generation stops); anything else that does not match the format exactly is rejected."""
    line = text.split("\n", 1)[0]
    if mode == DIRECT:
        match = _DIRECT_ANSWER.match(line)
        return int(match.group(1)) if match else None
    if mode == COT:
        match = _COT_ANSWER.match(line)
        return int(match.group(2)) if match else None
    raise ValueError(f"unknown prompt mode {mode!r}")


def reward(problem: Problem, text: str, mode: str = COT) -> float:
    """1.0 for a well-formed completion whose final answer is right, else 0.0 (outcome only)."""
    return 1.0 if parse_answer(text, mode) == problem.answer else 0.0


def operand_bound(config: TaskConfig, modulus: int) -> int:
    """In distribution, operands lie in [0, this): max_operand if set, else the modulus."""
    return config.max_operand or modulus


_TEST_SETS: dict[TaskConfig, list[Problem]] = {}  # ModularAddition.test_set's longest draw per task


class ModularAddition:
    """Owns the task's problem distribution and its splits."""

    def __init__(self, config: TaskConfig) -> None:
        validate(config)
        self.config = config
        self.train_moduli = [
            m for m in range(config.min_modulus, config.max_modulus + 1) if m not in config.heldout_moduli
        ]

    def operand_bound(self, modulus: int) -> int:
        return operand_bound(self.config, modulus)

    def problem(self, operands, modulus: int) -> Problem:
        """A problem written in this task's prompt layout."""
        return Problem(tuple(map(int, operands)), int(modulus), self.config.modulus_first)

    def is_test(self, problem: Problem) -> bool:
        key = f"{self.config.split_seed}|{problem.operands}|{problem.modulus}".encode()
        bucket = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % 1_000_000
        return bucket < self.config.test_fraction * 1_000_000

    def sample_train(self, rng: np.random.Generator, n: int, k: int | None = None) -> list[Problem]:
        """n training problems. k=None mixes easier problems in (config.easier_fraction of them)."""
        cfg, problems = self.config, []
        while len(problems) < n:
            if k is not None:
                num = k
            elif cfg.min_operands < cfg.num_operands and rng.random() < cfg.easier_fraction:
                num = int(rng.integers(cfg.min_operands, cfg.num_operands))
            else:
                num = cfg.num_operands
            # indexing with rng.integers draws the same stream as rng.choice(list), ~10x faster per call
            m = self.train_moduli[int(rng.integers(len(self.train_moduli)))]
            problem = self.problem(rng.integers(0, self.operand_bound(m), size=num).tolist(), m)
            if not self.is_test(problem):
                problems.append(problem)
        return problems

    def sample_balanced_steps(self, rng: np.random.Generator, n: int) -> list[Problem]:
        """n two-operand training problems (one trace step each) that give every addition fact and both
        decisions their share. In the task's own mix a pair of large operands is rare (it needs a large
        modulus) and most totals have one right decision for nearly every modulus (t = 10 is reduced only when
        m = 10), so a model learns the common facts and a threshold on t alone first, and the exceptions
        last. Here the two operands are uniform over every pair the task has; then "reduce" (m <= t) and
        "keep" (m > t) are equally likely where both are possible; then m is uniform within its class."""
        widest = max(self.operand_bound(m) for m in self.train_moduli)
        problems = []
        while len(problems) < n:
            a, b = (int(x) for x in rng.integers(0, widest, size=2))
            able = [m for m in self.train_moduli if max(a, b) < self.operand_bound(m)]
            classes = [c for c in ([m for m in able if m <= a + b], [m for m in able if m > a + b]) if c]
            moduli = classes[int(rng.integers(len(classes)))]
            problem = self.problem((a, b), moduli[int(rng.integers(len(moduli)))])
            if not self.is_test(problem):
                problems.append(problem)
        return problems

    def test_set(self, size: int | None = None) -> list[Problem]:
        """Held-out in-distribution problems with k = num_operands; the same list for every seed. Drawn once
        per task (REINFORCE and the warm-up evaluate every few steps, and a draw hashes ~50,000 candidates): a
        shorter list is the first `size` problems of a longer one, so the longest drawn so far serves every
        size."""
        size = size or self.config.test_size
        drawn = _TEST_SETS.get(self.config, [])
        if len(drawn) < size:
            drawn = _TEST_SETS[self.config] = self._draw_test_set(size)
        return drawn[:size]

    def _draw_test_set(self, size: int) -> list[Problem]:
        rng = np.random.default_rng([self.config.split_seed, 7])
        seen, problems = set(), []
        while len(problems) < size:
            # candidates in vectorised chunks (only ~test_fraction of them are test problems)
            moduli = rng.choice(self.train_moduli, size=4096)
            # max_operand, or each row's modulus
            bounds = np.reshape(operand_bound(self.config, moduli), (-1, 1))
            operands = (rng.random((4096, self.config.num_operands)) * bounds).astype(np.int64)
            for ops, m in zip(operands.tolist(), moduli.tolist()):
                problem = self.problem(ops, m)
                if self.is_test(problem) and problem not in seen:
                    seen.add(problem)
                    problems.append(problem)
                    if len(problems) == size:
                        break
        return problems

    def train_sample(self, size: int) -> list[Problem]:
        """A fixed sample of k = num_operands training problems, for train-accuracy curves."""
        rng = np.random.default_rng([self.config.split_seed, 11])
        return self.sample_train(rng, size, k=self.config.num_operands)


def validate(config: TaskConfig) -> None:
    """Reject impossible task settings with a message a user can act on."""
    if config.min_modulus < 2:
        raise ValueError(f"min modulus must be >= 2, got {config.min_modulus}")
    if config.max_modulus < config.min_modulus:
        raise ValueError(f"modulus range is inverted: {config.min_modulus}..{config.max_modulus}")
    if config.num_operands < 2 or not 2 <= config.min_operands <= config.num_operands:
        raise ValueError(f"need 2 <= min operands <= operands, got {config.min_operands}, "
                         f"{config.num_operands}")
    if not 0.0 <= config.easier_fraction <= 1.0:
        raise ValueError(f"easier fraction must be in [0, 1], got {config.easier_fraction}")
    if config.number_format not in NUMBER_FORMATS:
        raise ValueError(f"number format must be one of {NUMBER_FORMATS}, got {config.number_format!r}")
    if not 0.0 < config.test_fraction < 0.5:
        raise ValueError(f"test fraction must be in (0, 0.5), got {config.test_fraction}")
    if config.max_operand < 0 or config.max_operand == 1:
        raise ValueError("max operand must be 0 (operands below the modulus) or >= 2, got "
                         f"{config.max_operand}")
    # the "larger" OOD split's running sums reach (m - 1) + (2b - 1), b = the operand bound (m by default)
    if config.max_modulus + 2 * operand_bound(config, config.max_modulus) - 2 > MAX_NUMBER:
        raise ValueError(f"max modulus + 2 x max operand must be <= {MAX_NUMBER + 2} so every number stays "
                         "in the vocabulary")
    if config.num_operands > MAX_OPERANDS:
        raise ValueError(f"at most {MAX_OPERANDS} operands fit the models' context (with the OOD +2), got "
                         f"{config.num_operands}")
    train = [m for m in range(config.min_modulus, config.max_modulus + 1) if m not in config.heldout_moduli]
    if not train:
        raise ValueError("every modulus is held out: nothing is left to train on")
    test_problems = sum(operand_bound(config, m) ** config.num_operands for m in train) * config.test_fraction
    if test_problems < 2 * config.test_size:
        raise ValueError(f"only about {test_problems:.0f} test problems exist for this range; widen the "
                         "moduli or use more operands")
