"""Out-of-distribution splits: problems of the task's form that no stage ever trains on.

- `negative`: operands in (-b, b), at least one negative (b = the operand bound, the modulus by default);
- `larger`: operands in [0, 2b), at least one >= b (the argument's 6 + 2 mod 5);
- `unseen_moduli`: the task's held-out moduli, which no training problem or corpus line uses;
- `more_operands`: two operands more than trained on.
They are drawn from a fixed stream (the task's split_seed), so every seed and model sees the same problems.
"""

import numpy as np

from nanocot.task import ModularAddition, Problem


def ood_splits(task: ModularAddition, size: int | None = None) -> dict[str, list[Problem]]:
    """Named out-of-distribution splits of `size` problems each (default: the task's ood_size)."""
    cfg, size = task.config, size or task.config.ood_size
    k = cfg.num_operands
    rng = np.random.default_rng([cfg.split_seed, 13])

    def draw(make) -> list[Problem]:
        return [make() for _ in range(size)]

    def negative() -> Problem:  # operands in (-b, b), at least one negative (b = the operand bound)
        m = int(rng.choice(task.train_moduli))
        b = task.operand_bound(m)
        while True:
            ops = tuple(int(x) for x in rng.integers(-b + 1, b, size=k))
            if min(ops) < 0:
                return task.problem(ops, m)

    def larger() -> Problem:  # operands in [0, 2b), at least one >= b (the argument's 6 + 2 mod 5)
        m = int(rng.choice(task.train_moduli))
        b = task.operand_bound(m)
        while True:
            ops = tuple(int(x) for x in rng.integers(0, 2 * b, size=k))
            if max(ops) >= b:
                return task.problem(ops, m)

    def unseen_moduli() -> Problem:
        m = int(rng.choice(list(cfg.heldout_moduli)))
        return task.problem(rng.integers(0, task.operand_bound(m), size=k), m)

    def more_operands() -> Problem:
        m = int(rng.choice(task.train_moduli))
        return task.problem(rng.integers(0, task.operand_bound(m), size=k + 2), m)

    splits = {"negative": draw(negative), "larger": draw(larger), "more_operands": draw(more_operands)}
    if cfg.heldout_moduli:
        splits["unseen_moduli"] = draw(unseen_moduli)
    return splits
