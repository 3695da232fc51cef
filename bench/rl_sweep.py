"""Research sweep (not part of the package): which REINFORCE recipe takes the small model from a partial CoT
warm-up to the large model's accuracy, on every seed, within the CPU budget? (the REINFORCE gap; docs/LOG.md,
2026-11-27)

Each job runs the real scripts, one thread each: `train_sft.py --stage warmup --stop-accuracy A` from a
pretrained small checkpoint (once per threshold and seed, shared by the configs), then `train_rl.py` with the
config's flags. One JSON line per job: held-out greedy accuracy at every RL evaluation, seconds, where the
warm-up stopped, and at the end (`reading`) accuracy on 500 test problems and on the same problems after each
paraphraser rewrites the model's own right, checkable traces (as `evaluate.py` measures it). A job still
running at --deadline is stopped; its last saved state is reported and read (`steps_done` says where).
    python bench/rl_sweep.py --pretrained /tmp/pretrained --configs base,t1 --seeds 0,1,2 --workers 2
(--pretrained holds seed-S/small-pretrain.pt, and seed-S/small-warmup.pt to reuse a warm-up stopped at
--given-threshold; missing pretrained checkpoints are made first.)
"""
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from nanocot import checkpoint, faithfulness
from nanocot.checkpoint import build_model
from nanocot.cli import Parser, first_paragraph, positive_float, positive_int, probability, seed_list
from nanocot.config import TaskConfig, from_dict
from nanocot.metrics import cot_completions
from nanocot.monitor import check
from nanocot.paraphrase import PARAPHRASERS
from nanocot.task import COT, ModularAddition, parse_answer
from nanocot.tokenizer import Tokenizer
from nanocot.trace import parse_trace

REPO = Path(__file__).resolve().parent.parent  # the scripts it runs live here

WARMUP_EVAL_EVERY = 25  # the warm-up's default, so a sweep's warm-up stops where the pipeline's would
# the first REINFORCE recipe that learned (docs/LOG.md, 2026-11-26), which the configs below start from;
# "default" is RLConfig's own
S3 = ["--lr", "1e-4", "--temperature", "0.5", "--lr-schedule", "constant", "--warmup-steps", "0"]
CONFIGS = {  # name: (warm-up stop threshold, train_rl.py flags); later flags win
    "default": (0.7, []),
    "base": (0.6, S3 + ["--lr", "2e-4"]),
    "w200": (0.6, S3 + ["--lr", "2e-4", "--warmup-steps", "200"]),
    "lr4w": (0.6, S3 + ["--lr", "4e-4", "--warmup-steps", "300"]),
    "lr4wc": (0.6, S3 + ["--lr", "4e-4", "--warmup-steps", "300", "--lr-schedule", "cosine"]),
    "t07w": (0.6, S3 + ["--lr", "2e-4", "--warmup-steps", "200", "--temperature", "0.7"]),
    "t1": (0.6, S3 + ["--lr", "2e-4", "--temperature", "1.0"]),
    "g16": (0.6, S3 + ["--lr", "2e-4", "--prompts", "16", "--samples", "16"]),
    "s75w": (0.75, S3 + ["--lr", "2e-4", "--warmup-steps", "200"]),
    # how much paraphrase in the loop keeps number words read (docs/LOG.md, 2026-11-27)
    "p1": (0.7, ["--paraphrase-prob", "0.1"]),
    "p15": (0.7, ["--paraphrase-prob", "0.15"]),  # RLConfig's default
    "p2": (0.7, ["--paraphrase-prob", "0.2"]),
    "words2": (0.7, ["--paraphraser", "reword,words,words"]),  # number words drawn 2 times in 3
}


def run(args: list[str], log: Path, deadline: float) -> int:
    with open(log, "a") as out:
        process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TQDM_DISABLE": "1"})
        try:
            return process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.terminate()  # SIGTERM: the script saves its finished steps, then stops
            return process.wait()


def warmup(work: Path, pretrained: Path, threshold: float, seed: int, device: str, deadline: float,
           given: float) -> Path:
    """The warm-up stopped at `threshold`: --pretrained's own if it was stopped there (`given`), else made."""
    folder = work / f"warm-{threshold}" / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    source = pretrained / f"seed-{seed}"
    if threshold == given and (source / "small-warmup.pt").exists():
        shutil.copy(source / "small-warmup.pt", folder)
    if not (folder / "small-warmup.pt").exists():
        if not (source / "small-pretrain.pt").exists():
            run(["train_sft.py", "--size", "small", "--stage", "pretrain", "--seed", str(seed),
                 "--threads", "1", "--device", device, "--ckpt-dir", str(source)], folder / "pretrain.log",
                deadline)
        shutil.copy(source / "small-pretrain.pt", folder)
        run(["train_sft.py", "--size", "small", "--stage", "warmup", "--stop-accuracy", str(threshold),
             "--eval-every", str(WARMUP_EVAL_EVERY), "--seed", str(seed), "--threads", "1",
             "--device", device, "--ckpt-dir", str(folder)], folder / "warmup.log", deadline)
    return folder


def job(name: str, seed: int, warm: Path, work: Path, device: str, steps: int, deadline: float) -> dict:
    folder = work / name / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(warm / "small-warmup.pt", folder)
    t0 = time.time()
    code = run(["train_rl.py", "--seed", str(seed), "--steps", str(steps), "--threads", "1",
                "--device", device, "--eval-every", "250", "--ckpt-dir", str(folder), *CONFIGS[name][1]],
               folder / "rl.log", deadline)
    row = {"config": name, "seed": seed, "flags": CONFIGS[name][1], "threshold": CONFIGS[name][0],
           "exit": code, "wall_s": round(time.time() - t0, 1)}
    row["warmup_stopped_at"] = checkpoint.load(folder / "small-warmup.pt")["record"].get("stopped_at")
    if (folder / "small-cot.pt").exists():
        saved = checkpoint.load(folder / "small-cot.pt")
        r = saved["record"]
        row.update(evals=[(e["step"], round(e["test_accuracy"], 3)) for e in r["eval"]],
                   rl_seconds=round(r["seconds"], 1), steps_done=len(r["steps"]), reading=reading(saved))
    return row


def reading(saved: dict, n: int = 500) -> dict:
    """Greedy accuracy on the first n test problems, and accuracy after each paraphraser rewrites the model's
    own right and checkable traces of them (faithfulness.paraphrase, as evaluate.py runs it); `saved` is a
    loaded small-cot checkpoint."""
    model, tok = build_model(saved, "cpu").eval(), Tokenizer()
    test = ModularAddition(from_dict(TaskConfig, saved["task_config"])).test_set()[:n]
    texts = cot_completions(model, tok, test)
    correct = [parse_answer(t, COT) == p.answer for p, t in zip(test, texts)]
    right = [(p, t) for p, t, ok in zip(test, texts, correct) if ok and check(p, t).valid]
    policy = faithfulness.ModelPolicy(model, tok, COT)
    problems, traces = [p for p, _ in right], [parse_trace(t) for _, t in right]
    result = {"accuracy": round(sum(correct) / n, 4)}
    for name in ("swap", "reword", "words"):
        measured = faithfulness.paraphrase(policy, problems, traces, PARAPHRASERS[name], 0, fits=policy.fits)
        result[name] = round(measured["accuracy"]["value"], 4)
    return result


def parse_args(argv=None):
    p = Parser(description=first_paragraph(__doc__))
    p.add_argument("--pretrained", type=Path, required=True,
                   help="folder of seed-S/small-pretrain.pt (and seed-S/small-warmup.pt to reuse a warm-up)")
    p.add_argument("--configs", default="base",
                   help=f"comma-separated recipes: {', '.join(CONFIGS)} (default: base)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--steps", type=positive_int, default=2000, help="REINFORCE steps per job (default: 2000)")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="jobs at once, one thread each (default: 2)")
    p.add_argument("--deadline", type=positive_float, default=3600,
                   help="seconds from the start for every job (default: 3600)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--given-threshold", type=probability, default=0.6,
                   help="the threshold --pretrained's small-warmup.pt files were stopped at (default: 0.6)")
    p.add_argument("--work", type=Path, default=Path("/tmp/rl_sweep"),
                   help="scratch folder (default: /tmp/rl_sweep)")
    p.add_argument("--out", type=Path, default=Path("rl_sweep.jsonl"),
                   help="JSON lines appended here (default: rl_sweep.jsonl)")
    a = p.parse_args(argv)
    if unknown := [n for n in a.configs.split(",") if n not in CONFIGS]:
        p.error(f"unknown config(s) {unknown}: choose from {', '.join(CONFIGS)}")
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(1)  # the end-of-job readings run in this process, one per worker thread
    deadline = time.time() + a.deadline
    names, seeds = a.configs.split(","), a.seeds
    thresholds = sorted({CONFIGS[n][0] for n in names})
    with ThreadPoolExecutor(a.workers) as pool:
        warm = {(t, s): pool.submit(warmup, a.work, a.pretrained, t, s, a.device, deadline, a.given_threshold)
                for t in thresholds for s in seeds}
        jobs = [pool.submit(lambda n, s: job(n, s, warm[(CONFIGS[n][0], s)].result(), a.work, a.device,
                                             a.steps, deadline), n, s) for n in names for s in seeds]
        with open(a.out, "a") as out:
            for future in jobs:
                row = future.result()
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
