#!/usr/bin/env bash
# docs/no-gpu.md's route, timed: GPT-2 small + LoRA trained for 200 steps on the CPU, then the
# first 50 test MRs beam-searched and scored. For BENCHMARKS.md, on a random checkpoint of GPT-2
# small's shape (no weights reach this project's machines): a training step costs what a trained
# model's costs; a decode here runs all 64 steps of the search, where a trained model's outputs
# end after about 25 tokens (an upper bound, then).
#
#   E2E_DATA_DIR=../shared/data/e2e TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache scripts/quick_route.sh
#   SMOKE=1 SMOKE_MODEL=TINY_HF_DIR scripts/quick_route.sh   # a tiny model, 2 steps: the script's check
#
# Prints each command's wall time, and the whole route's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -n "${SMOKE:-}" ]; then
    MODEL=$SMOKE_MODEL STEPS=2 MRS=2
else
    MODEL=$WORK/gpt2 STEPS=200 MRS=50
    $PY -c "import sys, torch; from model import GPT, GPTConfig; torch.manual_seed(0); \
GPT(GPTConfig.from_preset('gpt2')).save_pretrained(sys.argv[1])" "$MODEL"
fi
timed() {  # timed CMD...: CMD's output, then its wall time
    local start=$SECONDS
    "$@"
    echo "== $(( SECONDS - start )) s: ${*:1:3} ..."
}
start=$SECONDS
timed $PY train.py --model "$MODEL" --max-steps $STEPS --warmup 20 --out "$WORK/quick" --device cpu
timed $PY sample.py --adapter "$WORK/quick" --limit $MRS --beam 4 --device cpu
echo "== the route: $(( SECONDS - start )) s (train + decode + score)"
