#!/usr/bin/env bash
# Per-step cost of each stage on the GPU with nothing else running (bench/gpu_check.sh's pipeline shared the
# machine with a CPU sweep): short runs of every stage, then seconds per step from the checkpoints.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
PY="${PY:-python3}"; DEVICE="${DEVICE:-cuda}"; W=/tmp/nanocot_steps; rm -rf "$W"
run() { $PY "$@" --device "$DEVICE" --ckpt-dir "$W" >/dev/null 2>&1 || echo "failed: $*"; }
for size in large small; do
  run train_sft.py --size "$size" --stage pretrain --steps 600
  run train_sft.py --size "$size" --stage direct --steps 2000 --eval-every 1000
done
run train_sft.py --size small --stage warmup --steps 400 --eval-every 200
run train_rl.py --size small --steps 60 --eval-every 30
$PY - "$W" <<'PYEOF'
import runpy, sys, time, numpy as np
from pathlib import Path
from nanocot.config import TaskConfig
from nanocot.data import collate, task_example
from nanocot.task import DIRECT, ModularAddition
from nanocot.tokenizer import Tokenizer
stage_seconds = runpy.run_path("bench/run.py")["stage_seconds"]  # the bench's reading of the checkpoints
for name, stage in stage_seconds(Path(sys.argv[1])).items():
    if "error" in stage:
        print(f"{name:16} {stage['error']}"); continue
    print(f"{name:16} {stage['steps']:5d} steps {stage['seconds']:7.1f} s  {1e3 * stage['seconds'] / stage['steps']:6.2f} ms/step")
tok, task, rng = Tokenizer(), ModularAddition(TaskConfig()), np.random.default_rng(0)
t = time.perf_counter()
for _ in range(200):
    collate([task_example(tok, q, DIRECT) for q in task.sample_train(rng, 128)], tok.pad_id, "cpu")
print(f"direct batch of 128 built on the CPU: {(time.perf_counter() - t) / 200 * 1e3:.2f} ms")
PYEOF
