"""The paper's Table 1: the latency of one forward pass of GPT-2 medium, for the base model
(= full fine-tuning = merged LoRA), LoRA merged, LoRA unmerged, and Adapter^L / Adapter^H sized
by the paper's formula to Table 1's parameter counts (0.5M at 32x512, 11M at 16x256 and 1x128).

The variants are timed in turn, trial by trial and in a shuffled order, so drift on a busy machine
and the position in the round hit them all alike: CUDA events on a GPU (100 trials after 10
warm-up by default), wall clock on CPU. Random weights time like trained ones: no operation
depends on the values. `python sample.py --latency` prints the table; bench.py calls it too.
"""

import copy
import functools
import math
import random
import time

import torch

import lora
from model import GPT, GPTConfig
from paper import adapter

# The cells timed by default: the paper's grid on a GPU; on a CPU, where one 1x128 forward pass
# of GPT-2 medium takes over a second, two small ones.
DEFAULT_GRID = {"cuda": "32x512,16x256,1x128", "cpu": "1x32,1x8"}


def parse_grid(cells: str) -> list[tuple[int, int]]:
    """'1x128,16x256' -> [(1, 128), (16, 256)]; anything else raises ValueError."""
    if not all(cell.count("x") == 1 and all(x.isdigit() and int(x) > 0 for x in cell.split("x"))
               for cell in cells.split(",")):
        raise ValueError(f"--grid {cells!r}: give cells like 1x128,16x256")
    return [tuple(int(x) for x in cell.split("x")) for cell in cells.split(",")]


TABLE1 = {  # (batch, sequence) -> (|Theta| of the adapters, paper ms: base, Adapter^L, Adapter^H)
    (32, 512): (0.5e6, 1449.4, 1482.0, 1492.2),
    (16, 256): (11e6, 338.0, 354.0, 366.3),
    (1, 128): (11e6, 19.8, 23.9, 25.8),
}


def variants(base: GPT, budget: float) -> dict:
    """The models Table 1 compares, each a copy of base; adapters sized to `budget` parameters."""
    c = base.config
    r_h = adapter.rank_for(budget, c.n_layer, c.n_embd, "houlsby")
    r_l = adapter.rank_for(budget, c.n_layer, c.n_embd, "lin")
    return {"base (FT)": base,
            "LoRA merged": lora.merge(lora.apply(copy.deepcopy(base), "q,v", r=4)),
            "LoRA unmerged": lora.apply(copy.deepcopy(base), "q,v", r=4),
            f"Adapter^L r={r_l}": adapter.apply(copy.deepcopy(base), "lin", r=r_l),
            f"Adapter^H r={r_h}": adapter.apply(copy.deepcopy(base), "houlsby", r=r_h)}


def measure(config: GPTConfig, grid: list[tuple[int, int]], device: torch.device, *,
            trials: int, warmup: int, amp_dtype: torch.dtype | None = None,
            name: str = "gpt2-medium", say=lambda line: None) -> dict:
    """Forward-pass milliseconds (mean, std, ratio to the base) of every variant at every
    (batch, sequence) cell of grid, as a report that latency_table() prints. say(line): what it
    builds and times, a line per cell with the time left (projected by tokens per cell)."""
    torch.manual_seed(0)
    say(f"latency: building {name}'s shape with random weights on {device}, and its variants "
        f"(base, LoRA merged and unmerged, Adapter^L, Adapter^H); {len(grid)} cells x "
        f"{warmup + trials} forward passes of each")
    start = time.perf_counter()
    base = GPT(config).to(device).eval()
    models_for = functools.lru_cache(maxsize=1)(lambda budget: variants(base, budget))
    rows, tokens = [], [b * s for b, s in grid]
    for cell, (batch, seq) in enumerate(grid):
        budget = TABLE1.get((batch, seq), (11e6,))[0]
        models = models_for(budget)
        x = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        times = {variant: [] for variant in models}
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype,
                                                    enabled=amp_dtype is not None):
            for trial in range(warmup + trials):
                order = list(models)
                random.Random(trial).shuffle(order)  # no variant always runs first or last
                for variant in order:
                    ms = _time_forward(models[variant], x, device)
                    if trial >= warmup:
                        times[variant].append(ms)
        row = {"batch": batch, "seq": seq, "adapter_params": budget, "ms": {}}
        base_mean = sum(times["base (FT)"]) / trials
        for variant, values in times.items():
            mean = sum(values) / trials
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(trials - 1, 1))
            row["ms"][variant] = {"mean": mean, "std": std, "over_base": mean / base_mean - 1}
        rows.append(row)
        elapsed, done = time.perf_counter() - start, sum(tokens[:cell + 1])
        say(f"latency: timed {batch} x {seq} ({cell + 1}/{len(grid)}) in {elapsed:.0f} s"
            + (f", about {elapsed / done * (sum(tokens) - done):.0f} s to go"
               if cell + 1 < len(grid) else ""))
    return {"model": name,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "trials": trials, "warmup": warmup,
            "dtype": str(amp_dtype or torch.float32), "rows": rows}


def _time_forward(model, x, device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1000


def latency_table(report: dict) -> str:
    """The report as a markdown table, with the paper's numbers under each of its cells."""
    names = list(report["rows"][0]["ms"])
    lines = [f"Forward pass of {report['model']}, ms (mean +- std over {report['trials']} trials), "
             f"{report['device']}, {report['dtype']}:", "",
             "| batch x seq | adapter params | " + " | ".join(names) + " |",
             "|---" * (len(names) + 2) + "|"]
    for row in report["rows"]:
        cells = [f"{v['mean']:.1f} +- {v['std']:.1f}"
                 + ("" if name.startswith("base") else f" ({v['over_base']:+.1%})")
                 for name, v in row["ms"].items()]
        lines.append(f"| {row['batch']} x {row['seq']} | {row['adapter_params'] / 1e6:g}M | "
                     + " | ".join(cells) + " |")
        paper = TABLE1.get((row["batch"], row["seq"]))
        if paper and report["model"] == "gpt2-medium":
            _, b, l, h = paper
            lines.append(f"| paper (RTX8000) | | {b} | | | {l} ({l / b - 1:+.1%}) | "
                         f"{h} ({h / b - 1:+.1%}) |")
    return "\n".join(lines)
