"""Two runs of train.py compared: the largest relative difference of the training and dev losses
they logged, and the largest absolute difference of their results (adapter.safetensors, or
model/). BENCHMARKS.md's table of torchrun against one process comes from it.

    python scripts/compare_runs.py RUN_ONE RUN_TWO

A full fine-tuning's key biases are left out of "weights" and given on their own: a key bias has
a gradient of exactly 0 (a query's scores all move by q . b_k, which the softmax ignores), so
AdamW moves it by rounding noise, in one process too.
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file


def losses(run_dir) -> list[tuple]:
    """(event, step, value) of every training loss and dev loss logged, in order."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [(r["event"], r["step"], r.get("loss", r.get("dev_loss")))
                for r in map(json.loads, f) if r["event"] in ("train", "eval")]


def result_tensors(run_dir, key_biases: bool = False) -> dict:
    """The run's adapter, or its model without the key biases (with key_biases: those alone)."""
    path = os.path.join(run_dir, "adapter.safetensors")
    if os.path.exists(path):
        return {} if key_biases else load_file(path)
    tensors = load_file(os.path.join(run_dir, "model", "model.safetensors"))
    biases = {n: tensors[n].chunk(3) for n in tensors if n.endswith("attn.c_attn.bias")}
    if key_biases:  # ([q | k | v])
        return {n: k for n, (_, k, _) in biases.items()}
    return {**tensors, **{n: torch.cat([q, v]) for n, (q, _, v) in biases.items()}}


def compare(one, two) -> dict:
    """The largest differences: relative for the losses ("train", "eval"), absolute for the
    result ("weights"). ValueError when the runs logged other steps or hold other tensors."""
    a, b = losses(one), losses(two)
    if [r[:2] for r in a] != [r[:2] for r in b]:
        raise ValueError("the runs logged their losses at other steps")
    out = {event: max((abs(x - y) / abs(y) for (e, _, x), (_, _, y) in zip(a, b) if e == event),
                      default=0.0) for event in ("train", "eval")}
    ta, tb = result_tensors(one), result_tensors(two)
    if ta.keys() != tb.keys():
        raise ValueError("the runs' results hold other tensors")
    out["weights"] = max((ta[k] - tb[k]).abs().max().item() for k in ta)
    ka, kb = result_tensors(one, key_biases=True), result_tensors(two, key_biases=True)
    out["key_biases"] = max(((ka[k] - kb[k]).abs().max().item() for k in ka), default=None)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/compare_runs.py RUN_ONE RUN_TWO")
    try:
        d = compare(*sys.argv[1:])
    except (OSError, ValueError) as e:
        sys.exit(f"compare_runs.py: {e}")
    print(f"training loss {d['train']:.1e}, dev loss {d['eval']:.1e} (largest relative "
          f"difference); weights {d['weights']:.1e} (largest absolute)"
          + (f"; key biases {d['key_biases']:.1e}" if d["key_biases"] is not None else ""))
