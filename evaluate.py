"""Measure every claim on whatever checkpoints exist: accuracy, faithfulness, paraphrase, monitor, OOD,
black box, compute.

    python evaluate.py                      # all of out/*-direct.pt, *-cot.pt, *-warmup.pt -> out/eval/
    python evaluate.py --quick              # small samples, a fast look
    python evaluate.py --ckpt-dir runs/a --out runs/a/eval --n 2000

Writes OUT/report.md (tables, sample traces, verdicts, plots inline), OUT/*.png and OUT/metrics.json.
"""

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from nanocot import checkpoint, report
from nanocot.cli import (
    Parser,
    UsageError,
    add_graph_flag,
    first_paragraph,
    positive_int,
    run_cli,
    seed_int,
    setup_device,
    writable_dir,
)
from nanocot.evaluation import QUICK, Sizes, load_models, run


def parse_args(argv=None):
    p = Parser(description=first_paragraph(__doc__), prog="evaluate.py")
    p.add_argument("--ckpt-dir", default="out",
                   help="folder holding <size>-<stage>.pt checkpoints (default: out)")
    p.add_argument("--out", default="out/eval",
                   help="folder for report.md, metrics.json and plots (default: out/eval)")
    p.add_argument("--quick", action="store_true", help="small samples for a fast look (intervals get wide)")
    p.add_argument("--n", type=positive_int, help="problems per split and per measurement (default: 1000; "
                   "--quick: 150 in-distribution, 100 per out-of-distribution split)")
    p.add_argument("--pass-k", type=positive_int,
                   help="k of sampled pass@k for CoT models (default: 8; --quick: 4)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed for sampling and random interventions (default: 0)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda > mps > cpu), cpu, cuda or mps (default: auto)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    add_graph_flag(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = setup_device(args)
    folder = Path(args.ckpt_dir)
    if not folder.is_dir():
        raise UsageError(f"checkpoint folder {folder} does not exist")
    out = writable_dir(args.out)
    sizes = QUICK if args.quick else Sizes()
    if args.n:
        sizes = replace(sizes, test=args.n, ood=args.n, pass_problems=min(sizes.pass_problems, args.n),
                        probes=max(3 * args.n, 60))
    if args.pass_k:
        sizes = replace(sizes, pass_k=args.pass_k)
    task_cfg, entries = load_models(folder, device)
    start = time.perf_counter()
    with torch.no_grad():
        metrics = run(entries, task_cfg, sizes, out, args.seed)
    metrics.update(seconds=time.perf_counter() - start, seed=args.seed, quick=args.quick)
    path = report.write(metrics, out)
    # last and atomically: `python -m nanocot` reuses an evaluation whose metrics.json is whole and made for
    # its seed and --quick setting, so that file must never exist without its report or exist half-written
    text = json.dumps(metrics, indent=1, default=float).encode()
    try:
        checkpoint.write_atomically(out / "metrics.json", lambda f: f.write(text))
    except OSError as e:
        raise UsageError(f"cannot write {out / 'metrics.json'}: {e.strerror or e}") from None
    print(f"{path}: {', '.join(e.name for e in entries)} in {metrics['seconds']:.0f}s")
    for name, m in metrics["models"].items():
        print(f"  {name:>14}: " + ", ".join(f"{k} {v:.3f}" for k, v in m["accuracy"].items()))


if __name__ == "__main__":
    run_cli(main)
