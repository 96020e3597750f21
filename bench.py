"""Benchmarks: every figure in BENCHMARKS.md comes from a command here.

    python bench.py cache [--device cpu]     # decoding with and without the KV cache

Random weights time the same as trained ones (no operation depends on the values), so nothing
here needs a download.
"""

import argparse
import json
import sys
import time

import torch

from model import GPT, GPTConfig
from sample import beam_search


def timed(fn, device) -> float:
    """Wall-clock seconds of fn(), with the GPU drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_cache(args, device) -> dict:
    """Greedy and beam decoding of 64 new tokens (no stop token, so every row makes all 64),
    with the KV cache (each step feeds one token) and without (each step feeds the sequence)."""
    config = GPTConfig(block_size=256, vocab_size=50257, n_layer=args.layers, n_head=4,
                       n_embd=args.width, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    prompts = torch.randint(0, config.vocab_size, (args.batch, 32), device=device)
    rows = []
    for beam in (1, 4):
        seconds = {}
        for use_cache in (True, False):
            def run():
                return beam_search(model, prompts, beam=beam, length_penalty=0.0,
                                   no_repeat_ngram=0, max_new_tokens=64, stop_tokens=(),
                                   use_cache=use_cache)
            if device.type == "cuda":
                run()  # warm-up: kernels, allocator
            seconds[use_cache] = min(timed(run, device) for _ in range(args.repeats))
        tokens = args.batch * 64
        rows.append({"beam": beam, "new_tokens": 64, "prompts": args.batch,
                     "with_cache_tok_s": tokens / seconds[True],
                     "without_cache_tok_s": tokens / seconds[False],
                     "speedup": seconds[False] / seconds[True]})
    print(f"Decoding 64 new tokens after a 32-token prompt, {args.batch} prompts, GPT-2 shape "
          f"n_layer={args.layers} n_embd={args.width} (random weights), {device}, best of "
          f"{args.repeats}:\n")
    print("| beam | with KV cache | without | speed-up |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['beam']} | {r['with_cache_tok_s']:,.0f} tok/s | "
              f"{r['without_cache_tok_s']:,.0f} tok/s | {r['speedup']:.1f}x |")
    return {"cache": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Benchmarks for BENCHMARKS.md.")
    p.add_argument("what", choices=["cache"], help="cache: decoding with vs without KV cache")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=4, help="prompts decoded together")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="runs per setting; the best counts")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    results = bench_cache(args, device)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
