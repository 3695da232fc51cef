"""The toy pretraining corpus: deterministic text lines, no downloads.

What a small web-like text teaches before any task training (shares are of all lines):
(The held-out moduli of the task never appear as a modulus anywhere in the text.)
- prose (~30%): short sentences about people, animals and things, some with arithmetic in digits
  ("ana has 3 pears and gets 4 more, so she has 7 pears."); and (~19%, five eighths of the prose) English,
  the trace's second language: number words both ways ("twelve is 12.", "27 is twenty seven."), sums and
  differences in words ("thirty minus twelve is eighteen."), mixed lines ("twenty seven plus 5 is 32.") and
  chains ("three plus four is seven, then seven plus nine is sixteen.");
- arithmetic facts (~45%): additions "17+25=42", subtractions "27-21=6" (every one a trace needs), modular
  remainders "27%21=6", running sums without a modulus "3+4=7,7+9=16";
- worked one-step modular problems (~25%) in the task's CoT format, "\\n8+7%12:8+7=15-12=3;3" (a third of
  those with the step in English, "\\n8+7%12:eight plus seven is fifteen minus twelve is three;3"), and its
  direct format "\\n8+7%12=3": the model sees the format and the single step, never a chain of steps;
- optionally (`worked_fraction`) full worked k-operand traces of *training* problems, the lever that
  decides how often the pretrained small model already chains steps (an early calibration run: 10% was
  too much, 0% too little).
Every line is preceded by a newline, exactly like every task prompt.
"""

import numpy as np

from nanocot.config import CorpusConfig, TaskConfig
from nanocot.paraphrase import to_words
from nanocot.task import COT, DIRECT, ModularAddition, completion, operand_bound, prompt, reference_trace
from nanocot.tokenizer import number_word

NAMES = ["ana", "bob", "eve", "kim", "lea", "max", "sam", "zoe"]
THINGS = ["apples", "pears", "books", "coins", "cards", "stones", "shells", "cups"]
ANIMALS = ["cat", "dog", "fox", "owl", "hen", "cow", "bee", "rat"]
PLACES = ["the mat", "the hill", "the box", "the barn", "the road", "the tree"]
VERBS = ["sees", "likes", "follows", "finds", "helps", "watches"]


def _words_or_digits(rng: np.random.Generator, numbers: list[int]) -> list[str]:
    """Each number in words or in digits, at least one of each: a mixed line, as people write."""
    in_words = [bool(rng.random() < 0.5) for _ in numbers]
    if all(in_words) or not any(in_words):
        in_words[int(rng.integers(len(numbers)))] ^= True
    return [number_word(n) if w else str(n) for n, w in zip(numbers, in_words)]


def _prose(rng: np.random.Generator, moduli: list[int]) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    kind = int(rng.integers(8))
    if kind == 0:
        return f"the {pick(ANIMALS)} {pick(VERBS)} the {pick(ANIMALS)} on {pick(PLACES)}."
    if kind == 1:
        a, b = (int(x) for x in rng.integers(0, 30, size=2))
        name, thing = pick(NAMES), pick(THINGS)
        return f"{name} has {a} {thing} and gets {b} more, so {name} has {a + b} {thing}."
    if kind == 2:  # the dictionary between the two languages, both ways round
        n = int(rng.integers(0, 100))
        return f"{number_word(n)} is {n}." if rng.random() < 0.5 else f"{n} is {number_word(n)}."
    # the arithmetic a trace does, in words: sums and differences below 100, alone, mixed with digits, or
    # chained with "then" as a trace's steps are
    a, b = (int(x) for x in rng.integers(0, 50, size=2))
    if kind == 3:
        return f"{number_word(a)} plus {number_word(b)} is {number_word(a + b)}."
    if kind == 4:
        return f"{number_word(a + b)} minus {number_word(b)} is {number_word(a)}."
    if kind == 5:
        if rng.random() < 0.5:
            x, y, z = _words_or_digits(rng, [a, b, a + b])
            return f"{x} plus {y} is {z}."
        x, y, z = _words_or_digits(rng, [a + b, b, a])
        return f"{x} minus {y} is {z}."
    if kind == 6:
        c = int(rng.integers(0, 100 - a - b))
        return (f"{number_word(a)} plus {number_word(b)} is {number_word(a + b)}, "
                f"then {number_word(a + b)} plus {number_word(c)} is {number_word(a + b + c)}.")
    m = int(rng.choice(moduli))
    h = int(rng.integers(0, 2 * m))
    return f"a clock with {m} hours shows {h % m} after {h} hours."


def _fact(rng: np.random.Generator, moduli: list[int], task_config: TaskConfig) -> str:
    kind = int(rng.integers(4))
    if kind == 0:
        a, b = (int(x) for x in rng.integers(0, 60, size=2))
        return f"{a}+{b}={a + b}"
    if kind == 1:  # every subtraction a reference trace makes: a first sum x1 + x2 reaches 2b - 2
        m = int(rng.choice(moduli))
        total = int(rng.integers(m, 2 * max(m, operand_bound(task_config, m))))
        return f"{total}-{m}={total - m}"
    if kind == 2:
        m = int(rng.choice(moduli))
        total = int(rng.integers(0, 3 * m))
        return f"{total}%{m}={total % m}"
    ops = [int(x) for x in rng.integers(0, 30, size=int(rng.integers(3, 5)))]
    steps, running = [], ops[0]
    for x in ops[1:]:
        steps.append(f"{running}+{x}={running + x}")
        running += x
    return ",".join(steps)


def _one_step_problem(rng: np.random.Generator, task: ModularAddition) -> str:
    """A worked 2-operand problem of the task's format (drawn from the training side of the split); a third
    of the worked ones have their step written in English, as worked examples on the web come in both
    languages ("8+7%12:eight plus seven is fifteen minus twelve is three;3")."""
    problem = task.sample_train(rng, 1, k=2)[0]
    mode = COT if rng.random() < 0.7 else DIRECT
    if mode == COT and rng.random() < 1 / 3:
        body, answer = reference_trace(problem).split(";")
        return prompt(problem, COT)[1:] + to_words(body + ";", None) + answer
    return (prompt(problem, mode) + completion(problem, mode))[1:-1]  # strip the surrounding newlines


def generate_lines(config: CorpusConfig, task_config: TaskConfig) -> list[str]:
    rng = np.random.default_rng(config.seed)
    task = ModularAddition(task_config)
    # moduli the text may mention: never the held-out ones, so "unseen moduli" are unseen everywhere
    moduli = [m for m in range(2, task_config.max_modulus + 1) if m not in task_config.heldout_moduli]
    lines = []
    for _ in range(config.num_lines):
        u = rng.random()
        if u < config.worked_fraction:
            problem = task.sample_train(rng, 1, k=task_config.num_operands)[0]
            lines.append((prompt(problem, COT) + completion(problem, COT))[1:-1])
        elif u < 0.30:
            lines.append(_prose(rng, moduli))
        elif u < 0.75:
            lines.append(_fact(rng, moduli, task_config))
        else:
            lines.append(_one_step_problem(rng, task))
    return lines


def corpus_text(config: CorpusConfig, task_config: TaskConfig) -> str:
    """The whole corpus as one string; every line is preceded by a newline, as every prompt is."""
    return "".join("\n" + line for line in generate_lines(config, task_config))

