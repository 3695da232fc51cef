"""Research check (not part of the package): how well does a CoT checkpoint read each paraphrase of a trace?

The answer is forced after the reference trace of training-split problems (never the test set, so warm-up and
REINFORCE settings can be chosen on it), rewritten whole by each paraphraser, and with only its last j steps
rewritten (`by last j`). The evaluation measures the same on the model's own test-set traces.
    python bench/reading.py out/small-warmup.pt out/small-cot.pt --problems 300
"""

import numpy as np
import torch

from nanocot import checkpoint
from nanocot import faithfulness as fa
from nanocot.cli import Parser, first_paragraph, positive_int, run_cli
from nanocot.config import TaskConfig, from_dict
from nanocot.paraphrase import PARAPHRASERS
from nanocot.task import COT, ModularAddition, reference_trace
from nanocot.tokenizer import Tokenizer
from nanocot.trace import parse_trace


def reading(path: str, n: int, seed: int) -> dict:
    payload = checkpoint.load(path, expect={"vocab": Tokenizer().vocab}, finished=True)
    task_cfg = from_dict(TaskConfig, payload["task_config"])
    task = ModularAddition(task_cfg)
    problems = task.sample_train(np.random.default_rng(seed), n, k=task_cfg.num_operands)
    traces = [parse_trace(reference_trace(p)) for p in problems]
    tok = Tokenizer(task_cfg.number_format)
    policy = fa.ModelPolicy(checkpoint.build_model(payload, "cpu").eval(), tok, COT)
    out = {}
    for name in ("canonical", "swap", "reword", "words"):
        paraphraser = PARAPHRASERS[name]
        whole = fa.paraphrase(policy, problems, traces, paraphraser, seed, fits=policy.fits)
        by_last = fa.paraphrase_last_steps(policy, problems, traces, paraphraser, seed, fits=policy.fits)
        out[name] = {"whole": whole["last_step"]["accuracy"], "by_last": by_last}
    return out


def main(argv=None) -> None:
    p = Parser(description=first_paragraph(__doc__))
    p.add_argument("checkpoints", nargs="+", help="CoT checkpoints (a warm-up or a REINFORCE one)")
    p.add_argument("--problems", type=positive_int, default=300,
                   help="training-split problems (default: 300)")
    p.add_argument("--seed", type=int, default=123, help="which training problems (default: 123)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for path in args.checkpoints:
        for name, r in reading(path, args.problems, args.seed).items():
            by = " ".join(f"{100 * s['value']:.1f}" for s in r["by_last"].values())
            print(f"{path} {name:9s} whole {100 * r['whole']['value']:5.1f}% (n={r['whole']['n']}), "
                  f"by last j: {by}")


if __name__ == "__main__":
    run_cli(main)
