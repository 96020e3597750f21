#!/usr/bin/env bash
# Data-parallel scaling of train.py under torchrun: training tokens/s at 1, 2, 4, 8 processes
# (GPUs), one table row each, for BENCHMARKS.md. GPT-2 medium + LoRA r=4 on q,v, bf16, 300 steps
# of the paper's global batch of 8 (BATCH=64 to see a larger one), no checkpoints but the last.
#
#   scripts/scaling.sh              # 1 2 4 8 processes (not more than this machine's GPUs)
#   scripts/scaling.sh 1 2          # the counts given
#   SMOKE=1 scripts/scaling.sh 1 2  # a tiny model on CPU, to check the script itself
#
# The tokens/s are train.py's own (metrics.jsonl: every rank's tokens over the time of the steps,
# evaluations and saves left out), averaged over the log lines after the first (the warm-up).
# Needs the E2E data and GPT-2's vocabulary (as train.py: $E2E_DATA_DIR, $TIKTOKEN_CACHE_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
COUNTS=${*:-1 2 4 8}
BATCH=${BATCH:-8}
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
if [ -n "${SMOKE:-}" ]; then
    run=(--model "$SMOKE_MODEL" --device cpu --max-steps 6 --log-interval 2 --limit 64)
    GPUS=99
else
    run=(--model gpt2-medium --dtype bf16 --max-steps 300 --log-interval 50)
    GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
fi
echo "| processes | global batch | steps/s | tokens/s | speed-up |"
echo "|---|---|---|---|---|"
base=""
for n in $COUNTS; do
    if [ "$n" -gt "$GPUS" ]; then echo "($n processes: this machine has $GPUS GPUs)"; continue; fi
    $PY -m torch.distributed.run --standalone --nproc_per_node "$n" -- train.py "${run[@]}" \
        --batch-size "$BATCH" --save-every 0 --out "$RUNS/n$n" > "$RUNS/n$n.log" 2>&1 \
        || { echo "($n processes failed: the end of its log follows)"; tail -5 "$RUNS/n$n.log"; continue; }
    row=$($PY - "$RUNS/n$n/metrics.jsonl" <<'EOF'
import json, sys
log = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in log if r["event"] == "train"][1:]  # (the first: warm-up)
tokens = sum(r["tokens_per_s"] for r in train) / len(train)
steps = (train[-1]["step"] - train[0]["step"]) / max(train[-1]["time"] - train[0]["time"], 1e-9)
print(f"{tokens:.0f} {steps:.2f}")
EOF
)
    tokens=${row% *}
    base=${base:-$tokens}
    echo "| $n | $BATCH | ${row#* } | $tokens | $($PY -c "print(f'{$tokens / $base:.2f}x')") |"
done
