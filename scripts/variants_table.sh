#!/usr/bin/env bash
# docs/variants.md's table: LoRA and its descendants under the paper's protocol (2 seeds x 2
# epochs, each epoch decoded and scored) on a tiny model, on the CPU in minutes. The tiny model is
# data/toy/tiny-gpt2's shape trained from scratch on the toy task for 300 steps (the "pretrained"
# base: test BLEU 40.5); each row then adapts it with its recipe (reproduce.py's ROWS), at a
# learning rate for 40 steps (3e-3, no warmup). A tiny model's numbers: they show the protocol
# and the rows, not what GPT-2 M gets.
#
#   TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache scripts/variants_table.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/variants-toy}
BASE=$(mktemp -d)
trap 'rm -rf "$BASE"' EXIT
$PY train.py --data data/toy --model data/toy/tiny-gpt2 --random-init --method full \
    --epochs 15 --warmup 10 --lr 1e-3 --out "$BASE/run" --device cpu
$PY reproduce.py table3 --rows lora,rslora,lora_plus,dora,pissa --data data/toy \
    --model "$BASE/run/model" --seeds 1,2 --epochs 2 --lr 3e-3 --warmup 0 --device cpu \
    --out "$OUT"
