#!/usr/bin/env bash
# One call on a lent GPU (the device tool runs this from the repository root; nothing is installed there):
#   1. the device, then the tests that touch CUDA (tests/test_cuda.py) and the model/sampling tests;
#   2. the whole default pipeline with --device cuda, with each stage's wall time;
#   3. bench/run.py --device cuda;
# and, on the machine's spare CPU cores while 1-3 run, a research sweep: small-direct on more seeds
# (how often does the 1-layer model escape the direct-answer plateau? docs/LOG.md, session 4).
# Results land in $OUT (the device tool brings back at most 8 files).
#     bash bench/gpu_check.sh            # SWEEP_SEEDS="3 4 5" to change the sweep, SWEEP_SEEDS="" to skip it
#     DEVICE=cpu QUICK=--quick SWEEP_STEPS=20 bash bench/gpu_check.sh    # a dry run of the script itself
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
OUT="${OUT:-/tmp/gpu_check}"
WORK=/tmp/nanocot_gpu
mkdir -p "$OUT" "$WORK"
SWEEP_SEEDS="${SWEEP_SEEDS-3 4 5 6 7 8 9 10 11 12}"
SWEEP_STEPS="${SWEEP_STEPS:-}"  # empty: the stages' defaults
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-}"
steps() { [ -n "$SWEEP_STEPS" ] && echo "--steps $SWEEP_STEPS"; }
PY="${PY:-python3}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch, os; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(), 'cpus', os.cpu_count())"

# the research sweep, in the background on the CPU (1 thread each), so it does not share the GPU
for s in $SWEEP_SEEDS; do
  timeout 500 bash -c "$PY train_sft.py --size small --stage pretrain --seed $s --device cpu --threads 1 $(steps) \
        --ckpt-dir $WORK/sweep-$s && $PY train_sft.py --size small --stage direct --seed $s --device cpu --threads 1 \
        --eval-every 1000 $(steps) --ckpt-dir $WORK/sweep-$s" >"$WORK/sweep-$s.log" 2>&1 &
done

echo "== tests"
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model.py tests/test_sampling.py 2>&1 | tail -4

echo "== pipeline on cuda"
start=$(date +%s)
$PY -m nanocot --device "$DEVICE" $QUICK --ckpt-dir "$WORK/ck" --out "$WORK/eval" >"$WORK/pipeline.log" 2>&1
echo "pipeline exit $? in $(( $(date +%s) - start )) s"
grep -a -E "^(===|---|seed|report|python -m nanocot)" "$WORK/pipeline.log" | tr -d '\r' | tail -30
cp "$WORK/eval/metrics.json" "$OUT/metrics-cuda.json" 2>/dev/null
tr '\r' '\n' <"$WORK/pipeline.log" | grep -v -E "it/s|s/it" | tail -200 >"$OUT/pipeline-tail.log"

echo "== bench on cuda"
if ! $PY bench/run.py --device "$DEVICE" $QUICK --out "$OUT/bench-cuda.json" --ckpt-dir "$WORK/ck" >"$WORK/bench.log" 2>&1; then
  tail -3 "$WORK/bench.log"; echo "(again without transformers)"
  $PY bench/run.py --device "$DEVICE" $QUICK --no-transformers --out "$OUT/bench-cuda.json" --ckpt-dir "$WORK/ck" >"$WORK/bench.log" 2>&1
fi
tail -12 "$WORK/bench.log"

# seeds 1 and 2 of the pipeline, side by side on the GPU, if the call has time left (DEADLINE: seconds)
DEADLINE="${DEADLINE:-560}"
left=$(( DEADLINE - SECONDS - 15 ))
if [ "$left" -gt 120 ]; then
  echo "== pipeline seeds 1 and 2 on $DEVICE, side by side ($left s left)"
  for s in 1 2; do
    timeout "$left" $PY -m nanocot --device "$DEVICE" $QUICK --seeds "$s" --ckpt-dir "$WORK/ck-$s" \
      --out "$WORK/eval-$s" >"$WORK/pipeline-$s.log" 2>&1 &
  done
fi
echo "== sweep (small-direct, seeds: $SWEEP_SEEDS)"
wait
for s in 1 2; do
  [ -f "$WORK/pipeline-$s.log" ] && grep -a -E "^(seed|=== done)" "$WORK/pipeline-$s.log" | tr -d '\r' | tail -3
  [ -f "$WORK/eval-$s/metrics.json" ] && cp "$WORK/eval-$s/metrics.json" "$OUT/metrics-cuda-seed$s.json"
done
$PY - "$WORK" "$SWEEP_SEEDS" <<'EOF' | tee "$OUT/sweep.txt"
import sys
from pathlib import Path
from nanocot import checkpoint
work, seeds = Path(sys.argv[1]), sys.argv[2].split()
for s in seeds:
    path = work / f"sweep-{s}" / "small-direct.pt"
    try:
        p = checkpoint.load(path)
    except Exception as e:
        print(f"seed {s}: no result ({type(e).__name__})"); continue
    ev = p["record"]["eval"]
    curve = " ".join(f"{e['step']}:{e['test_accuracy']:.2f}" for e in ev)
    print(f"seed {s}: steps {p['step']} test {ev[-1]['test_accuracy']:.3f} train {ev[-1]['train_accuracy']:.3f} | {curve}")
EOF
echo "== headline (test accuracy per model; faithfulness of small-cot)"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("metrics-cuda*.json")):
    m = json.loads(path.read_text())
    acc = {k: round(v["accuracy"]["test"], 3) for k, v in m.get("models", {}).items()}
    f = m.get("faithfulness", {}).get("small-cot", {})
    print(path.name, acc, {k: round(f[k], 3) for k in ("no_trace_accuracy", "corrupt_follow_rate", "filler_accuracy") if k in f})
PYEOF
