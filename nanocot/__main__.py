"""`python -m nanocot`: the whole experiment, from nothing to a report.

    python -m nanocot                     # one seed: checkpoints in out/, report in out/eval/report.md
    python -m nanocot --seeds 0,1,2       # three seeds, then out/eval/seeds.md with mean and 95% interval
    python -m nanocot --quick             # smoke test of the plumbing (a few steps per stage)
    python -m nanocot --controls          # also the instruments' controls (large-cot, large-ignore)

Stages whose finished checkpoint exists are skipped (--force redoes them); an interrupted stage is
resumed. Each stage is one of train_sft.py / train_rl.py / evaluate.py, printed before it runs. Stages
run side by side as soon as the checkpoint they start from exists (--jobs: 2 at a time on a CPU, 3 on a
GPU; their output in DIR/logs/); --jobs 1 runs one stage at a time with its output on the terminal.

    torchrun --nproc_per_node 4 -m nanocot --seeds 0-31   # a sweep: the seeds spread over 4 processes

Under torchrun each process runs whole seeds (seeds[rank::world]); a seed whose stage fails is reported
by seed and the others' results are kept; the first process writes the summary once all are done.
"""

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from nanocot import distributed
from nanocot.cli import (
    Parser,
    UsageError,
    add_graph_flag,
    first_paragraph,
    pick_device,
    run_cli,
    seed_list,
    writable_dir,
)
from nanocot.config import SIZES
from nanocot.pipeline import CONTROLS, StageFailed, banner, control_list, run_seed, seeds_report, summarise


def parse_args(argv=None):
    p = Parser(prog="python -m nanocot", description=first_paragraph(__doc__))
    p.add_argument("--ckpt-dir", default="out", help="folder for checkpoints (default: out)")
    p.add_argument("--out", default="out/eval",
                   help="folder for the report, plots and metrics.json (default: out/eval)")
    p.add_argument("--seeds", type=seed_list, default="0", help="comma-separated seeds or ranges (0,1,2 or "
                   "0-31); several run the experiment once per seed into DIR/seed-S and summarise; under "
                   "torchrun the seeds are spread over the processes (default: 0)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda > mps > cpu), cpu, cuda or mps (default: auto)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch; 0 = torch's choice (default: 0)")
    p.add_argument("--small", choices=SIZES, default="small",
                   help="preset of the small model (default: small)")
    p.add_argument("--large", choices=SIZES, default="large",
                   help="preset of the large model (default: large)")
    p.add_argument("--jobs", type=int, default=0, help="stages run side by side, each with its share of the "
                   "CPU threads and its output in DIR/logs/; 1 = one stage at a time, output on the "
                   "terminal; 0 = 2 on a CPU (the large and the small model's chains; 1 per process "
                   "under torchrun), 3 on CUDA (default: 0)")
    p.add_argument("--controls", nargs="?", const="all", default=None,
                   help="also train and evaluate the instruments' controls, all or comma-separated names: "
                        + "; ".join(f"{name}: {what}" for name, what in CONTROLS.items()))
    add_graph_flag(p)
    p.add_argument("--force", action="store_true", help="redo every stage even if its checkpoint exists")
    p.add_argument("--quick", action="store_true",
                   help="a few steps per stage: checks the plumbing, numbers mean nothing")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    if args.jobs < 0:
        raise UsageError(f"--jobs must be >= 0, got {args.jobs}")
    try:
        controls = tuple(control_list(args.controls)) if args.controls is not None else ()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if controls and args.small == args.large:
        raise UsageError("--controls needs different --small and --large presets: the large model's warm-up "
                         "and REINFORCE would overwrite the small model's")
    if len(args.seeds) < distributed.planned_size():
        raise UsageError(f"{len(args.seeds)} seeds for {distributed.planned_size()} processes: give at least "
                         "one seed per process")
    # a sweep's processes only coordinate, and may wait long for the slowest one's last seed
    world = distributed.init(torch.device("cpu"), "gloo", timeout=timedelta(days=7))
    if world.main and distributed.launched():
        print(f"world size {world.size}", flush=True)
    distributed.gather(None)  # the others print nothing before that line
    cuda = pick_device(args.device).type == "cuda"
    jobs = args.jobs or (3 if cuda else 2 if world.size == 1 else 1)  # processes of a sweep share the CPU
    ckpt_root, out_root = writable_dir(args.ckpt_dir), writable_dir(args.out)
    threads = args.threads or _threads_per_process()
    common = ["--device", args.device] + (["--threads", str(threads)] if threads else []) + \
        (["--no-cuda-graphs"] if args.no_cuda_graphs else []) + (["--plain"] if args.plain else [])
    start, many = time.perf_counter(), len(args.seeds) > 1
    mine = {"metrics": {}, "timings": {}, "failed": {}}
    for seed in args.seeds[world.rank :: world.size]:
        ckpt_dir = ckpt_root / f"seed-{seed}" if many else ckpt_root
        out_dir = out_root / f"seed-{seed}" if many else out_root
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        if many:
            banner(f"seed {seed}")
        try:
            mine["timings"][seed] = run_seed(seed, ckpt_dir, out_dir, common, args.small, args.large,
                                             args.quick, args.force, jobs, controls)
            mine["metrics"][seed] = json.loads((out_dir / "metrics.json").read_text())
        except (StageFailed, ValueError, OSError) as failure:
            if world.size == 1:
                raise
            mine["failed"][seed] = str(failure).splitlines()[0]  # the other seeds go on
    done = {key: {k: v for part in distributed.gather(mine) for k, v in part[key].items()} for key in mine}
    if world.main:
        report(done, args.seeds, out_root, time.perf_counter() - start)
    distributed.gather(None)  # the others wait until the summary is written
    if done["failed"]:
        sys.exit(1)


def _threads_per_process() -> int:
    """Under torchrun, each process's stages get its share of the CPU threads (torchrun itself sets one
    thread per process); 0 = leave torch's choice (without torchrun)."""
    if not distributed.launched():
        return 0
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def report(done: dict, seeds: list[int], out_root: Path, seconds: float) -> None:
    """The closing lines: timings, failed seeds, and the summary over seeds (OUT/seeds.md) or the report."""
    banner(f"done in {seconds:.0f} s")
    for seed in seeds:
        if done["timings"].get(seed):
            stages = done["timings"][seed].items()
            print(f"seed {seed}: " + ", ".join(f"{name} {s:.0f} s" for name, s in stages))
        if seed in done["failed"]:
            print(f"seed {seed} failed: {done['failed'][seed]}", file=sys.stderr)
    kept = [seed for seed in seeds if seed in done["metrics"]]
    if len(seeds) > 1 and kept:
        per_seed = {seed: done["metrics"][seed] for seed in kept}
        print(f"summary over seeds: {seeds_report(summarise(per_seed), kept, out_root)}")
    elif kept:
        print(f"report: {out_root / 'report.md'}")


def main_reporting_failures(argv=None) -> None:
    """A failed stage has printed its own error; say which script stopped the pipeline, keep its exit code."""
    try:
        main(argv)
    except StageFailed as failure:
        print(f"python -m nanocot: stopped: {failure}", file=sys.stderr)
        sys.exit(failure.code if failure.code in (2, 130) else 1)


if __name__ == "__main__":
    run_cli(main_reporting_failures, interrupted="python -m nanocot: interrupted; run the same command again "
            "to continue (finished stages are skipped, the interrupted one resumes)")
