#!/usr/bin/env bash
# Per-step cost of each stage on the GPU with nothing else running: short runs of every stage, then seconds
# per step from the checkpoints. FLAGS="--no-cuda-graphs" measures the kernel-by-kernel path.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" TQDM_DISABLE=1
PY="${PY:-python3}"; DEVICE="${DEVICE:-cuda}"; FLAGS="${FLAGS:-}"; W=/tmp/nanocot_steps; rm -rf "$W"
run() { $PY "$@" --device "$DEVICE" $FLAGS --ckpt-dir "$W" >/dev/null 2>&1 || echo "failed: $*"; }
for size in large small; do
  run train_sft.py --size "$size" --stage pretrain --steps 600
  run train_sft.py --size "$size" --stage direct --steps 2000 --eval-every 1000
done
run train_sft.py --size small --stage warmup --steps 400 --eval-every 200
run train_rl.py --size small --steps 60 --eval-every 30
$PY - "$W" <<'PYEOF'
import runpy, sys
from pathlib import Path
from nanocot import checkpoint
stage_seconds = runpy.run_path("bench/run.py")["stage_seconds"]  # the bench's reading of the checkpoints
for name, stage in stage_seconds(Path(sys.argv[1])).items():
    if "error" in stage:
        print(f"{name:16} {stage['error']}"); continue
    print(f"{name:16} {stage['steps']:5d} steps {stage['seconds']:7.1f} s  {1e3 * stage['seconds'] / stage['steps']:6.2f} ms/step")
rl = checkpoint.load(Path(sys.argv[1]) / "small-cot.pt")["record"]
print(f"small-cot split: sampling {rl['seconds_sampling']:.1f} s, learning {rl['seconds_learning']:.1f} s, "
      f"evaluations and the rest {rl['seconds'] - rl['seconds_sampling'] - rl['seconds_learning']:.1f} s")
PYEOF
