#!/usr/bin/env bash
# The GPU measurements behind BENCHMARKS.md, in parts that each fit one 10-minute call of a lent
# GPU machine (nothing survives between calls there, so each part is whole on its own).
#
#   make gpu-carry              # here, once: the E2E CSVs, the released text and the tiktoken
#                               # vocabulary copied into gpu_carry/ (git-ignored; it travels)
#   scripts/gpu.sh bench-decode # first: tests/test_cuda.py (a broken CUDA path shows in a minute);
#                               # bench.py decode, latency, cache; then bf16 and fp16 training
#                               # (GPT-2 small from scratch), 200 steps each
#   scripts/gpu.sh bench-train  # bench.py train, memory, profile: GPT-2 medium shape, bf16, compiled
#   scripts/gpu.sh pipeline     # end to end: GPT-2 small from scratch (train.py --random-init
#                               # --method full), 1 epoch, then sample.py decodes and scores
#
# Logs go to $OUT (the device tool's folder that comes back), else out/gpu/. Each part writes at
# most 8 files there. PYTHON picks the interpreter (default python3); SMOKE=1 runs every part at a
# tiny size on any machine, to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export E2E_DATA_DIR=$PWD/gpu_carry/e2e E2E_LORA_DIR=$PWD/gpu_carry/e2e-lora
export TIKTOKEN_CACHE_DIR=$PWD/gpu_carry/tiktoken_cache
[ -f "$E2E_DATA_DIR/trainset.csv" ] || { echo "gpu.sh: no gpu_carry/e2e: run make gpu-carry" >&2; exit 2; }
SMOKE=${SMOKE:-}
RUNS=$(mktemp -d)

stage() {  # stage NAME SECONDS CMD...: run CMD with a time limit (SIGTERM: train.py saves and
    local name=$1 limit=$2  # stops), its output in $OUT/NAME.log, its wall time on the last line
    shift 2
    echo "== $name: $*" | tee "$OUT/$name.log"
    local start=$SECONDS
    timeout --signal=TERM "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
}

environment() {
    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
        $PY -c "import torch, transformers, peft; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1
        echo "GPT-2 checkpoints on this machine (safetensors over 100 MB; ~/.cache/huggingface):"
        timeout 15 find / -xdev -name '*.safetensors' -size +100M 2>/dev/null | head
        ls ~/.cache/huggingface 2>&1
        echo "java: $(command -v java || echo none)"
    } > "$OUT/environment.txt"
    cat "$OUT/environment.txt"
}

case ${1:-} in
bench-train)
    environment
    if [ -n "$SMOKE" ]; then size=(--small --steps 2 --warmup 1 --rounds 2); else size=(--compile); fi
    stage bench-train 350 $PY bench.py train "${size[@]}" --json "$OUT/bench-train.json"
    stage bench-memory 120 $PY bench.py memory "${size[@]}" --json "$OUT/bench-memory.json"
    stage bench-profile 80 $PY bench.py profile "${size[@]}" --json "$OUT/bench-profile.json"
    ;;
bench-decode)
    if [ -n "$SMOKE" ]; then size=(--small --mrs 2 --trials 2 --grid 1x16); steps=3; else size=(); steps=200; fi
    stage cuda-tests 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
    stage bench-decode 200 $PY bench.py decode "${size[@]}" --json "$OUT/bench-decode.json"
    stage bench-latency 100 $PY bench.py latency "${size[@]}" --json "$OUT/bench-latency.json"
    stage bench-cache 45 $PY bench.py cache "${size[@]}"  # (its table is in the log: 8 files at most)
    # both mixed-precision paths: finite, falling loss (GPT-2 small's shape from scratch)
    for dtype in bf16 fp16; do
        if [ -n "$SMOKE" ]; then model=(--model "$SMOKE_MODEL" --device cpu --dtype fp32); \
        else model=(--model gpt2 --dtype "$dtype"); fi
        stage "amp-$dtype" 60 $PY train.py --method full --random-init "${model[@]}" \
            --max-steps "$steps" --warmup 20 --lr 3e-4 --log-interval 20 --save-every 0 \
            --out "$RUNS/amp-$dtype"
    done
    ;;
pipeline)
    environment
    if [ -n "$SMOKE" ]; then model=(--model "$SMOKE_MODEL" --device cpu --max-steps 3); decode=(--limit 4);
    else model=(--model gpt2); decode=(); fi
    stage train 330 $PY train.py --method full --random-init "${model[@]}" --epochs 1 --lr 5e-4 \
        --log-interval 100 --out "$RUNS/scratch"
    cp "$RUNS/scratch/metrics.jsonl" "$OUT/train-metrics.jsonl"
    stage sample 240 $PY sample.py --model "$RUNS/scratch/model" --out "$RUNS/scratch/test" \
        ${SMOKE:+--device cpu} "${decode[@]}"
    cp "$RUNS/scratch/test/"* "$OUT/" 2>/dev/null
    ls -la "$OUT"
    ;;
*)
    echo "usage: scripts/gpu.sh bench-train | bench-decode | pipeline" >&2
    exit 2
    ;;
esac
rm -rf "$RUNS"
