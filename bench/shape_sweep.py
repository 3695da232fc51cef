"""Research sweep (not part of the package): which one-layer shape keeps direct SFT at chance on every seed
while its CoT warm-up still works? Each job, one thread: the small preset with the named shape, pretrained ->
direct SFT (held-out every tenth of the run) and -> CoT warm-up; one JSON line per job.

The runs of docs/LOG.md, 2026-11-27 (`--steps-scale 0.003` for a dry run of the plumbing):
    python bench/shape_sweep.py --device cpu --workers 2 --warmup-steps 1000 --configs h4,h2,h4-mlp32,h1 \\
        --seeds 0
    python bench/shape_sweep.py --device cpu --workers 2 --warmup-steps 1000 --configs h1 \\
        --seeds 1,2,3,4,5,6,7,8,9,10,11
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

CONFIGS = {  # overrides of the small preset (1 layer, d 64, MLP 64): heads, MLP width, stream width
    "h1": {"n_head": 1},
    "h2": {"n_head": 2},
    "h4": {"n_head": 4},
    "h4-mlp32": {"n_head": 4, "d_mlp": 32},
    "h4-d32": {"n_head": 4, "d_model": 32},
}


def job(name, seed, device, scale, warmup_steps):
    import torch
    torch.set_num_threads(1)
    import nanocot.config as C
    from nanocot.sft import finetune, pretrain
    C.MODEL_PRESETS["small"] = replace(C.MODEL_PRESETS["small"], **CONFIGS[name])
    t0 = time.time()
    steps = lambda stage: max(2, int(C.STAGE_DEFAULTS[stage].steps * scale))
    pre = pretrain("small", replace(C.STAGE_DEFAULTS["pretrain"], seed=seed, steps=steps("pretrain")),
                   C.TaskConfig(), C.CorpusConfig(), device)
    direct = finetune(pre, "direct", replace(C.STAGE_DEFAULTS["direct"], seed=seed, steps=steps("direct"),
                                             eval_every=max(1, steps("direct") // 10)), device)
    warmup = replace(C.STAGE_DEFAULTS["warmup"], seed=seed,
                     steps=max(2, int((warmup_steps or C.STAGE_DEFAULTS["warmup"].steps) * scale)))
    warm = finetune(pre, "warmup", warmup, device)
    ev = direct["record"]["eval"]
    return {"config": name, "seed": seed, "params": pre["params"], "direct_test": ev[-1]["test_accuracy"],
            "direct_train": ev[-1]["train_accuracy"],
            "direct_curve": [round(e["test_accuracy"], 3) for e in ev],
            "warmup_test": warm["record"]["eval"][-1]["test_accuracy"],
            "pretrain_loss": pre["record"]["loss"][-1], "seconds": round(time.time() - t0, 1),
            "stage_seconds": [round(p["seconds"], 1) for p in (pre, direct, warm)]}


def parse_args(argv=None):
    from nanocot.cli import Parser, first_paragraph, nonnegative_int, positive_float, positive_int, seed_list

    p = Parser(description=first_paragraph(__doc__))
    p.add_argument("--one", nargs=2, metavar=("CONFIG", "SEED"), help="internal: run one job in this process")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated shapes: {', '.join(CONFIGS)} (default: all)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2,3,4,5,6,7",
                   help="comma-separated seeds (default: 0-7)")
    p.add_argument("--workers", type=positive_int, default=12,
                   help="jobs at once, one process each (default: 12)")
    p.add_argument("--deadline", type=positive_float, default=300,
                   help="seconds for the whole sweep (default: 300)")
    p.add_argument("--device", default="cuda", help="cpu or cuda (default: cuda)")
    p.add_argument("--steps-scale", type=positive_float, default=1.0,
                   help="every stage's steps times this (default: 1; 0.003 is a dry run of the plumbing)")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=0,
                   help="CoT warm-up steps (0 = the stage's default)")
    p.add_argument("--out", default="sweep.jsonl", help="JSON lines appended here (default: sweep.jsonl)")
    a = p.parse_args(argv)
    configs = [a.one[0]] if a.one else a.configs.split(",")
    if unknown := [c for c in configs if c not in CONFIGS]:
        p.error(f"unknown config(s) {unknown}: choose from {', '.join(CONFIGS)}")
    if a.one and not a.one[1].isdigit():
        p.error(f"--one: the seed must be a whole number, got {a.one[1]!r}")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.one:
        print(json.dumps(job(a.one[0], int(a.one[1]), a.device, a.steps_scale, a.warmup_steps)), flush=True)
        return
    queue = [(c, s) for s in a.seeds for c in a.configs.split(",")]
    start, running, out = time.time(), [], open(a.out, "a")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    while queue or running:
        while queue and len(running) < a.workers and time.time() - start < a.deadline - 60:
            c, s = queue.pop(0)
            cmd = [sys.executable, __file__, "--one", c, str(s), "--device", a.device,
                   "--steps-scale", str(a.steps_scale), "--warmup-steps", str(a.warmup_steps)]
            running.append((c, s, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                                   text=True, env=env)))
        for item in list(running):
            c, s, proc = item
            if proc.poll() is not None:
                running.remove(item)
                line = proc.stdout.read().strip().splitlines()
                failed = json.dumps({"config": c, "seed": s, "error": proc.returncode})
                out.write((line[-1] if line and proc.returncode == 0 else failed) + "\n")
                out.flush()
        if time.time() - start > a.deadline:
            for c, s, proc in running:
                proc.kill()
                out.write(json.dumps({"config": c, "seed": s, "error": "deadline"}) + "\n")
            break
        time.sleep(0.5)
    out.close()
    rows = [json.loads(row) for row in open(a.out)]
    for c in a.configs.split(","):
        done = [r for r in rows if r["config"] == c and "error" not in r]
        if done:
            print(f"{c:6} params {done[0]['params']:6d} n={len(done)} direct "
                  + " ".join(f"{r['direct_test']:.2f}" for r in done)
                  + " | warmup " + " ".join(f"{r['warmup_test']:.2f}" for r in done)
                  + f" | {sum(r['seconds'] for r in done) / len(done):.0f} s/job")


if __name__ == "__main__":
    main()
