"""The whole experiment as a list of stages, each one run of a user-facing script.

`python -m nanocot` walks this list: pretrain both sizes, direct-answer SFT both, CoT warm-up and
REINFORCE for the small model, then evaluate. Every stage is the same command a reader could type
(printed before it runs), so the pipeline adds no hidden behaviour; it only skips stages whose finished
checkpoint exists, resumes ones that were interrupted, and times each. With several seeds it repeats the
list per seed and summarises every headline number as mean, spread and a 95% interval.
"""

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nanocot import checkpoint

REPO = Path(__file__).resolve().parent.parent

# Tiny budgets for a smoke test of the plumbing (`--quick`): the numbers it produces mean nothing.
QUICK_FLAGS = {
    "pretrain": ["--steps", "30"],
    "direct": ["--steps", "30", "--eval-every", "15"],
    "warmup": ["--steps", "30", "--eval-every", "15"],
    "rl": ["--steps", "4", "--prompts", "4", "--samples", "2", "--eval-every", "2", "--eval-problems", "20",
           "--pass-problems", "10", "--pass-k", "2"],
}


@dataclass(frozen=True)
class Stage:
    name: str  # e.g. "large-direct"
    script: str  # train_sft.py, train_rl.py or evaluate.py
    args: tuple[str, ...]
    output: str  # checkpoint file name inside the checkpoint folder ("" for evaluation)
    resume_flag: str = ""  # flag that continues an interrupted run, if the script has one


def stages(small: str, large: str, quick: bool) -> list[Stage]:
    """The experiment in order. Larger model first within each step so the slowest stage starts early."""

    def q(kind: str) -> tuple[str, ...]:
        return tuple(QUICK_FLAGS[kind]) if quick else ()

    def sft(size: str, stage: str) -> Stage:
        return Stage(f"{size}-{stage}", "train_sft.py", ("--size", size, "--stage", stage) + q(stage),
                     f"{size}-{stage}.pt", "--resume")

    return [
        sft(large, "pretrain"), sft(small, "pretrain"),
        sft(large, "direct"), sft(small, "direct"),
        sft(small, "warmup"),
        Stage(f"{small}-cot", "train_rl.py", ("--size", small) + q("rl"), f"{small}-cot.pt", "--resume"),
    ]


def checkpoint_state(path: Path) -> str:
    """'missing', 'partial' (an interrupted run that can be resumed) or 'done'."""
    if not path.exists():
        return "missing"
    try:
        payload = checkpoint.load(path)
    except checkpoint.CheckpointError:
        return "missing"  # unreadable: the stage writes it again
    return "partial" if ("train_state" in payload or "rl_state" in payload) else "done"


def run_script(script: str, args: list[str]) -> None:
    """Run one of the repository's scripts with this interpreter; a failure stops the pipeline."""
    command = [sys.executable, str(REPO / script), *args]
    print("$ " + " ".join(["python", script, *args]), flush=True)
    code = subprocess.call(command, cwd=REPO)
    if code != 0:
        raise StageFailed(script, code)


class StageFailed(Exception):
    def __init__(self, script: str, code: int):
        super().__init__(f"{script} exited with code {code}; its message is above")
        self.code = code


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def run_seed(seed: int, ckpt_dir: Path, out_dir: Path, common: list[str], small: str, large: str,
             quick: bool, force: bool) -> dict[str, float]:
    """Every stage for one seed; returns the wall time of each stage that ran (seconds)."""
    timings, ran_any = {}, False
    seed_flags = ["--seed", str(seed), "--ckpt-dir", str(ckpt_dir), *common]
    for stage in stages(small, large, quick):
        path = ckpt_dir / stage.output
        state = "missing" if force else checkpoint_state(path)
        if state == "done":
            banner(f"{stage.name}: {path} exists, skipped (--force redoes it)")
            continue
        resume = [stage.resume_flag] if state == "partial" and stage.resume_flag else []
        banner(f"{stage.name}" + (" (resuming)" if resume else ""))
        start = time.perf_counter()
        run_script(stage.script, [*stage.args, *seed_flags, *resume])
        timings[stage.name] = time.perf_counter() - start
        print(f"--- {stage.name} took {timings[stage.name]:.0f} s", flush=True)
        ran_any = True
    metrics = out_dir / "metrics.json"
    if ran_any or force or not metrics.exists():
        banner("evaluate")
        start = time.perf_counter()
        run_script("evaluate.py", ["--ckpt-dir", str(ckpt_dir), "--out", str(out_dir), "--seed", str(seed), *common,
                                   *(["--quick"] if quick else [])])
        timings["evaluate"] = time.perf_counter() - start
        print(f"--- evaluate took {timings['evaluate']:.0f} s", flush=True)
    else:
        banner(f"evaluate: {metrics} exists and no stage ran, skipped (--force redoes it)")
    return timings


# Two-sided 95% Student-t quantiles by degrees of freedom (no scipy dependency).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """{'a': {'b': 1.0}} -> {'a.b': 1.0}; only finite numbers are kept (lists and strings are not summaries)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def summarise(per_seed: dict[int, dict]) -> dict[str, dict]:
    """Mean, sample standard deviation, min, max and the 95% t-interval half-width of every number that
    every seed's metrics.json has."""
    flats = [flatten(m) for m in per_seed.values()]
    common = sorted(set.intersection(*(set(f) for f in flats))) if flats else []
    summary = {}
    for key in common:
        values = [f[key] for f in flats]
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        half = T95.get(n - 1, 1.96) * std / math.sqrt(n) if n > 1 else float("nan")
        summary[key] = {"mean": mean, "std": std, "min": min(values), "max": max(values),
                        "ci95": half if math.isfinite(half) else None, "n": n, "values": values}
    return summary


HEADLINE = [
    ("models.small-direct.accuracy.test", "small-direct accuracy (test)"),
    ("models.large-direct.accuracy.test", "large-direct accuracy (test)"),
    ("models.small-cot.accuracy.test", "small-cot accuracy (test, greedy)"),
    ("faithfulness.small-cot.no_trace_accuracy", "small-cot, no trace"),
    ("faithfulness.small-cot.corrupt_follow_rate", "follow rate under a corrupted step"),
    ("faithfulness.small-cot.filler_accuracy", "filler accuracy"),
    ("faithfulness.small-cot.paraphrase_accuracy", "paraphrase accuracy"),
    ("faithfulness.small-cot.early_answer_aoc", "early-answering AOC"),
    ("monitor.small-cot.step_validity", "monitor: valid steps"),
]


def seeds_report(summary: dict[str, dict], seeds: list[int], out_dir: Path) -> Path:
    """A short markdown table of the headline numbers over seeds (the full list is in seeds.json)."""
    lines = [f"# nanocot over seeds {', '.join(map(str, seeds))}", "",
             "Mean, 95% t-interval over seeds (n = number of seeds), and every seed's value.", "",
             "| metric | mean | 95% interval | per seed |", "|---|---|---|---|"]
    for key, label in HEADLINE:
        s = summary.get(key)
        if s is None:
            continue
        ci = f"± {s['ci95']:.3f}" if s["ci95"] is not None else "n/a (one seed)"
        lines.append(f"| {label} | {s['mean']:.3f} | {ci} | {', '.join(f'{v:.3f}' for v in s['values'])} |")
    lines += ["", "Per-seed reports: " + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in seeds), ""]
    path = out_dir / "seeds.md"
    path.write_text("\n".join(lines))
    (out_dir / "seeds.json").write_text(json.dumps({"seeds": seeds, "summary": summary}, indent=1))
    return path
