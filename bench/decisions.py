"""Research check (not part of the package): where does a CoT checkpoint go wrong, by modulus and by decision?

Two measures on training-split problems (never the test set, so training settings can be chosen on them):
- greedy accuracy on k-operand problems, and the errors counted by modulus;
- the reduce-or-not decision of the last step, teacher-forced: after a reference prefix ending in the last
  step's sum `a+b=t`, the probability of writing `-` (reduce) rather than `;`, averaged per cell (m, t). Right
  is 1 when t >= m and 0 below. A cell a policy gets wrong at the last step costs the answer; at an earlier
  step a skipped reduction is repaired by the next one, so outcome reward sees a cell only at the last step.
    python bench/decisions.py out/small-warmup.pt out/small-cot.pt --cells 10:10,10:11,12:11,29:28
"""

from collections import Counter

import numpy as np
import torch

from nanocot import checkpoint
from nanocot.cli import Parser, UsageError, first_paragraph, positive_int, run_cli
from nanocot.config import TaskConfig, from_dict
from nanocot.metrics import cot_completions
from nanocot.model import GPT
from nanocot.task import COT, ModularAddition, Problem, prompt, reference_trace, reward
from nanocot.tokenizer import Tokenizer
from nanocot.trace import parse_trace


def last_step_total(problem: Problem) -> int:
    return parse_trace(reference_trace(problem)).steps[-1].total


def problems_at(task: ModularAddition, modulus: int, total: int, n: int, rng: np.random.Generator) -> list:
    """n training problems (the task's k) with this modulus whose last step sums to `total`."""
    found, k = [], task.config.num_operands
    for _ in range(200_000):
        p = task.problem(rng.integers(0, task.operand_bound(modulus), size=k), modulus)
        if not task.is_test(p) and last_step_total(p) == total:
            found.append(p)
            if len(found) == n:
                return found
    raise ValueError(f"no last step sums to {total} with modulus {modulus}")


@torch.no_grad()
def reduce_probability(model: GPT, tok: Tokenizer, problems: list[Problem]) -> float:
    """Mean p(`-`) right after the last step's `=t` of each problem's reference trace."""
    minus, probs = tok.encode("-")[0], []
    for p in problems:
        ref = reference_trace(p)
        last = parse_trace(ref).steps[-1]
        decided = f"{last.left}+{last.right}={last.total}"  # the last step up to its decision
        cut = ref.rindex(decided) + len(decided)
        logits = model(torch.tensor([tok.encode(prompt(p, COT) + ref[:cut])]))[0, -1]
        probs.append(logits.softmax(-1)[minus].item())
    return float(np.mean(probs))


def parse_cells(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(m), int(t)) for m, t in (cell.split(":") for cell in text.split(","))]
    except ValueError:
        raise UsageError(f"--cells wants m:t pairs separated by commas, got {text!r}") from None


def main(argv=None) -> None:
    p = Parser(description=first_paragraph(__doc__))
    p.add_argument("checkpoints", nargs="+", help="CoT checkpoints (a warm-up or a REINFORCE one)")
    p.add_argument("--problems", type=positive_int, default=2000,
                   help="training-split problems for accuracy (default: 2000)")
    p.add_argument("--per-cell", type=positive_int, default=40, help="problems per cell (default: 40)")
    p.add_argument("--cells", default="10:10,10:11,11:11,12:11,12:12,13:12,29:28",
                   help="modulus:last-step-total cells (default: the ends of the modulus range)")
    p.add_argument("--seed", type=int, default=424242, help="which training problems (default: 424242)")
    args = p.parse_args(argv)
    cells = parse_cells(args.cells)
    torch.set_num_threads(1)
    for path in args.checkpoints:
        payload = checkpoint.load(path, expect={"vocab": Tokenizer().vocab}, finished=True)
        task = ModularAddition(from_dict(TaskConfig, payload["task_config"]))
        tok, model = Tokenizer(task.config.number_format), checkpoint.build_model(payload, "cpu").eval()
        k = task.config.num_operands
        problems = task.sample_train(np.random.default_rng(args.seed), args.problems, k=k)
        right = [reward(q, t) for q, t in zip(problems, cot_completions(model, tok, problems))]
        errors = Counter(q.modulus for q, r in zip(problems, right) if not r)
        print(f"{path} accuracy {100 * np.mean(right):.2f}% (n={len(problems)}), errors by modulus: "
              + " ".join(f"{m}:{errors[m]}" for m in sorted(errors)))
        rng = np.random.default_rng(7)
        probabilities = [reduce_probability(model, tok, problems_at(task, m, t, args.per_cell, rng))
                         for m, t in cells]
        shown = [f"({m},{t}) {q:.2f}" for (m, t), q in zip(cells, probabilities)]
        print(f"{path} p(reduce) at the last step, right = 1 iff t >= m: " + "  ".join(shown))


if __name__ == "__main__":
    run_cli(main)
