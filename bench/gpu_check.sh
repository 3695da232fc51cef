#!/usr/bin/env bash
# One run on a CUDA machine, from the repository root (nothing needs installing: PYTHONPATH is set below):
#   1. the device, then the tests that touch CUDA (tests/test_cuda.py) and the model/sampling tests;
#   2. per-step cost of every stage, uncontended, with CUDA graphs and without (bench/gpu_steps.sh);
#   3. the whole default pipeline with --device cuda, with each stage's wall time;
#   4. the per-step costs again with --no-cuda-graphs;
#   5. if AFTER is set, that command, with $LEFT seconds left (e.g. a research sweep: bench/shape_sweep.py).
# With BENCH=1, after the tests: bench/run.py on the device with the torch.compile and bf16-autocast variants.
# Results land in $OUT (a handful of files).
#     bash bench/gpu_check.sh
#     DEVICE=cpu QUICK=--quick STEPS=0 bash bench/gpu_check.sh    # a dry run of the script itself
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
OUT="${OUT:-/tmp/gpu_check}"
WORK=/tmp/nanocot_gpu
mkdir -p "$OUT" "$WORK"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-}"
STEPS="${STEPS:-1}"  # 0 skips the per-step measurements
EAGER_STEPS="${EAGER_STEPS:-$STEPS}"  # 0 skips them with --no-cuda-graphs
PY="${PY:-python3}"
export PY DEVICE

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch, os; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(), 'cpus', os.cpu_count())"

echo "== start-up cost of one stage process ($SECONDS s)"
t=$SECONDS; $PY -c "import torch; torch.zeros(1, device='$DEVICE')"; echo "import torch + first tensor on $DEVICE: $(( SECONDS - t )) s"
t=$SECONDS; TQDM_DISABLE=1 $PY train_sft.py --size small --stage pretrain --steps 1 --device "$DEVICE" --ckpt-dir "$WORK/one" >/dev/null
echo "train_sft.py --steps 1: $(( SECONDS - t )) s"

echo "== tests ($SECONDS s)"
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model.py tests/test_sampling.py 2>&1 | tail -15

if [ "${BENCH:-0}" != 0 ]; then
  echo "== bench/run.py --variants compile,bf16 ($SECONDS s)"
  $PY bench/run.py --device "$DEVICE" $QUICK --no-transformers --variants compile,bf16 --out "$OUT/bench-$DEVICE.json" 2>&1 \
    | grep -v -E "USDT|warn"
fi

if [ "$STEPS" != 0 ]; then
  echo "== per-step cost, CUDA graphs ($SECONDS s)"
  bash bench/gpu_steps.sh 2>&1 | tee "$OUT/steps.txt"
fi

echo "== pipeline on $DEVICE ($SECONDS s)"
start=$(date +%s)
$PY -m nanocot --device "$DEVICE" $QUICK --ckpt-dir "$WORK/ck" --out "$WORK/eval" >"$WORK/pipeline.log" 2>&1
echo "pipeline exit $? in $(( $(date +%s) - start )) s"
grep -a -E "^(===|---|seed|report|python -m nanocot)" "$WORK/pipeline.log" | tr -d '\r' | tail -30
cp "$WORK/eval/metrics.json" "$OUT/metrics-cuda.json" 2>/dev/null
tr '\r' '\n' <"$WORK/pipeline.log" | grep -v -E "it/s|s/it" | tail -200 >"$OUT/pipeline-tail.log"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("metrics-cuda*.json")):
    m = json.loads(path.read_text())
    acc = {k: round(v["accuracy"]["test"], 3) for k, v in m.get("models", {}).items()}
    f = m.get("faithfulness", {}).get("small-cot", {})
    print(path.name, acc, {k: round(f[k], 3) for k in ("no_trace_accuracy", "corrupt_follow_rate", "filler_accuracy") if k in f})
PYEOF

if [ "$EAGER_STEPS" != 0 ]; then
  echo "== per-step cost, --no-cuda-graphs ($SECONDS s)"
  FLAGS=--no-cuda-graphs bash bench/gpu_steps.sh 2>&1 | tee "$OUT/steps-eager.txt"
fi

if [ -n "${AFTER:-}" ]; then  # LEFT: seconds until DEADLINE (default 540) from the call's start
  export LEFT=$(( ${DEADLINE:-540} - SECONDS ))
  echo "== $AFTER ($SECONDS s, $LEFT s left)"
  bash -c "$AFTER"
fi
echo "== done ($SECONDS s)"
