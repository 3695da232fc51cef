"""Research sweep (throwaway, not part of the package): which one-layer shape keeps direct SFT at chance on
every seed while its CoT warm-up still works? Each job: pretrain -> direct SFT (curve) and -> CoT warm-up.
    python bench/shape_sweep.py --workers 12 --deadline 300 --out $OUT/sweep.jsonl [--steps-scale 0.01 for a dry run]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

CONFIGS = {
    "base": {},
    "h1": {"n_head": 1},
    "h2": {"n_head": 2},
    "mlp32": {"d_mlp": 32},
    "d32": {"d_model": 32},
}


def job(name, seed, device, scale):
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
    warm = finetune(pre, "warmup", replace(C.STAGE_DEFAULTS["warmup"], seed=seed, steps=steps("warmup")), device)
    ev = direct["record"]["eval"]
    return {"config": name, "seed": seed, "params": pre["params"], "direct_test": ev[-1]["test_accuracy"],
            "direct_train": ev[-1]["train_accuracy"], "direct_curve": [round(e["test_accuracy"], 3) for e in ev],
            "warmup_test": warm["record"]["eval"][-1]["test_accuracy"], "pretrain_loss": pre["record"]["loss"][-1],
            "seconds": round(time.time() - t0, 1), "stage_seconds": [round(p["seconds"], 1) for p in (pre, direct, warm)]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs=2)  # internal: config seed
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--deadline", type=float, default=300)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps-scale", type=float, default=1.0)
    p.add_argument("--out", default="sweep.jsonl")
    a = p.parse_args()
    if a.one:
        print(json.dumps(job(a.one[0], int(a.one[1]), a.device, a.steps_scale)), flush=True)
        return
    queue = [(c, s) for s in a.seeds.split(",") for c in a.configs.split(",")]
    start, running, out = time.time(), [], open(a.out, "a")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    while queue or running:
        while queue and len(running) < a.workers and time.time() - start < a.deadline - 60:
            c, s = queue.pop(0)
            cmd = [sys.executable, __file__, "--one", c, s, "--device", a.device, "--steps-scale", str(a.steps_scale)]
            running.append((c, s, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)))
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
            print(f"{c:6} params {done[0]['params']:6d} n={len(done)} direct " + " ".join(f"{r['direct_test']:.2f}" for r in done)
                  + " | warmup " + " ".join(f"{r['warmup_test']:.2f}" for r in done)
                  + f" | {sum(r['seconds'] for r in done) / len(done):.0f} s/job")


if __name__ == "__main__":
    main()
