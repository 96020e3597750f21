#!/usr/bin/env bash
# The GPU measurements behind BENCHMARKS.md, in two calls of a lent GPU machine that together take
# about 10 minutes of command time (a session gets 15 device-minutes in all, the machine's start and
# idle time included; nothing survives between calls, so each part is whole on its own):
#
#   make gpu-carry    # here, once: the E2E CSVs, the released text, the tiktoken vocabulary and
#                     # pytest's wheels, copied into gpu_carry/ (git-ignored; the call carries it)
#   scripts/gpu.sh a  # <= 5 min: tests/test_cuda.py and test_amp.py's CUDA cases; scripts/bench.py
#                     # train at GPT-2 medium's shape, bf16,
#                     # ours eager / compiled / CUDA graphs against transformers + peft eager and
#                     # compiled; memory (LoRA, full, peft); the Table 1 latency grid
#   scripts/gpu.sh b  # <= 4.5 min: beam-10 decoding of the 630 test MRs against transformers'
#                     # generate on a subset; fp16 + GradScaler, 200 steps; end to end: GPT-2 small
#                     # from scratch for a fixed number of steps, 100 test MRs decoded and scored;
#                     # torchrun with one process against the plain run (NCCL)
#
# The most valuable figures come first, and each stage has its own time limit and writes its
# result as soon as it has one, so a call cut short still returns what finished. What comes back
# ($OUT, the device tool's folder, else out/gpu): PART.log with every stage's output and wall time,
# and each stage's JSON: at most 8 files a part. PYTHON picks the interpreter (default python3).
# SMOKE=1 SMOKE_MODEL=TINY_HF_DIR runs both parts on any machine at a tiny size, on the CPU, in
# about 2 minutes (tests/test_gpu_script.py does, so the script cannot rot).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu}
PART=${1:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
CARRY=${CARRY:-$PWD/gpu_carry}  # what make gpu-carry copied (the test points it elsewhere)
export E2E_DATA_DIR=$CARRY/e2e E2E_LORA_DIR=$CARRY/e2e-lora TIKTOKEN_CACHE_DIR=$CARRY/tiktoken_cache
[ -f "$E2E_DATA_DIR/trainset.csv" ] || { echo "gpu.sh: no $CARRY/e2e: run make gpu-carry" >&2; exit 2; }
SMOKE=${SMOKE:-}
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
LOG=$OUT/$PART.log

stage() {  # stage NAME SECONDS CMD...: CMD with a time limit (SIGTERM: train.py saves and stops),
    local name=$1 limit=$2  # its output added to PART.log, its exit code and wall time after it
    shift 2
    [ -n "$SMOKE" ] && limit=0  # (the limits fit the GPU's minutes; a smoke run on a loaded CPU
                                # may take longer and is still whole: timeout 0 sets none)
    echo "== $name: $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout --signal=TERM "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
}

environment() {
    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
        $PY -c "import torch, transformers, peft; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1
        echo "java: $(command -v java || echo none)"
    } | tee -a "$LOG"
}

if [ -n "$SMOKE" ]; then  # a tiny size on the CPU: the script's own check
    model=(--model "$SMOKE_MODEL" --device cpu) bench=(--small --device cpu) fp16=()
else
    model=(--model gpt2) bench=() fp16=(--dtype fp16)
fi

case $PART in
a)
    : > "$LOG"
    environment
    $PY -c "import pytest" 2>/dev/null ||  # the device's python may lack it: the carried wheels
        $PY -m pip install -q --no-index --find-links "$CARRY/wheels" pytest 2>&1 | tee -a "$LOG"
    stage cuda-tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_amp.py \
        -k "not test_amp or cuda"  # (test_amp.py's CUDA cases: bf16 and fp16 training there)
    if [ -n "$SMOKE" ]; then size=("${bench[@]}" --steps 2 --warmup 1 --rounds 1);
    else size=(--compile --steps 30 --warmup 10 --rounds 3); fi
    stage bench-train 150 $PY -m scripts.bench train "${size[@]}" --json "$OUT/bench-train.json"
    stage bench-memory 45 $PY -m scripts.bench memory "${size[@]}" --json "$OUT/bench-memory.json"
    if [ -n "$SMOKE" ]; then size=("${bench[@]}" --trials 2 --grid 1x16); else size=(--trials 50); fi
    stage bench-latency 40 $PY -m scripts.bench latency "${size[@]}" --json "$OUT/bench-latency.json"
    ;;
b)
    : > "$LOG"
    environment
    if [ -n "$SMOKE" ]; then size=("${bench[@]}" --mrs 2 --generate-mrs 1); steps=(3 3 2); limit=2;
    else size=(--mrs 630 --generate-mrs 64); steps=(200 1200 20); limit=100; fi
    stage bench-decode 80 $PY -m scripts.bench decode "${size[@]}" --json "$OUT/bench-decode.json"
    stage amp-fp16 30 $PY train.py --method full --random-init "${model[@]}" "${fp16[@]}" \
        --max-steps "${steps[0]}" --warmup 20 --lr 3e-4 --log-interval 20 \
        --save-every 0 --out "$RUNS/amp-fp16"
    stage train 80 $PY train.py --method full --random-init "${model[@]}" --max-steps "${steps[1]}" \
        --lr 5e-4 --warmup 100 --log-interval 100 --save-every 0 --out "$RUNS/scratch"
    cp "$RUNS/scratch/metrics.jsonl" "$OUT/train-metrics.jsonl"
    stage sample 40 $PY sample.py --model "$RUNS/scratch/model" --limit "$limit" --no-meteor \
        --out "$RUNS/scratch/test" ${SMOKE:+--device cpu}
    cp "$RUNS/scratch/test/"*.scores.json "$OUT/" 2>/dev/null
    for how in plain torchrun; do  # the same steps, one process either way: NCCL comes up and
        launch=($PY)                 # the losses are the plain run's
        [ $how = torchrun ] && launch=($PY -m torch.distributed.run --standalone --nproc_per_node 1)
        stage "$how" 20 "${launch[@]}" train.py --method full --random-init "${model[@]}" \
            --max-steps "${steps[2]}" --warmup 0 --log-interval 1 --save-every 0 --out "$RUNS/$how"
    done
    stage compare 10 $PY scripts/compare_runs.py "$RUNS/plain" "$RUNS/torchrun"
    ;;
*)
    echo "usage: scripts/gpu.sh a | b" >&2
    exit 2
    ;;
esac
ls -la "$OUT"
