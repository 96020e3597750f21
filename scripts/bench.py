"""Benchmarks: ours against transformers + peft, same weights, same E2E batches, same dtype.
A script, not a package's module: it imports an entry script (it times train.py's own loss,
batches and optimizer), which no package may do. Run it from the repository's root:

    python -m scripts.bench --small --device cpu  # all sections, CPU: a small GPT-2 shape (minutes)
    python -m scripts.bench --compile             # all sections, GPU: GPT-2 medium in bf16
    python -m scripts.bench train|memory|decode|latency|cache|profile|tasks [--small --device cpu]

- train:   training-step throughput at batch 8 on train.py's own E2E batches: ours (LoRA r=4 on
           q,v; full fine-tuning) against transformers' GPT2LMHeadModel + peft LoRA (r=4 on
           c_attn), every variant timed in interleaved rounds; --compile adds both sides compiled
- memory:  peak memory of training with LoRA, full fine-tuning and peft (each in a fresh process)
- decode:  beam search (beam 10, no repeated 4-grams) over test MRs, exactly 64 new tokens each,
           ours against transformers' generate: MRs per second
- latency: the paper's Table 1 grid, through sample.py's --latency code
- cache:   our decoding with and without the KV cache
- profile: where a training step's time goes, ours and transformers + peft (torch.profiler)
- tasks:   several adapters on one base (multitask.py): a task switch against loading a whole
           checkpoint, memory, and mixed-task batches against one task merged or unmerged

Random weights time the same as trained ones (no operation depends on the values), so nothing
here needs the real checkpoints: one random GPT-2 is saved in HF format and both sides load it.
A section that fails prints its traceback and the others still run (exit code 1).
"""

import argparse
import contextlib
import io
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F

import lora
import train
from data.e2e import prepare as e2e
from model import GPT, GPTConfig
from paper import latency, mfu, multitask, qlora
from paper.decoding import batches, beam_search, decode
from plumbing import cli, hardware
from plumbing.checkpoint import write_atomic
from plumbing.cli import HelpFormatter

SMALL = dict(n_layer=4, n_head=4, n_embd=256)  # --small: GPT-2's vocabulary, a small body
RECIPE_STEPS = 26_290  # 5 epochs of 5,258 steps at batch 8 (paper Table 11)


def timed(fn, device) -> float:
    """Wall-clock seconds of fn(), with the GPU drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def amp(device, dtype: torch.dtype | None = None):
    """bf16 autocast on CUDA, fp32 elsewhere, unless dtype says (the CPU's bf16 row)."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else None)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class Setup:
    """What every section shares: the device, the model shape saved once in HF format, and
    real E2E batches: the first batches of train.py's first epoch (paper format, seed 110)."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)  # (checked: parse_args)
        shape = SMALL if args.small else GPTConfig.from_preset(args.model).__dict__
        # no dropout in the backbone, as train.py's default (the released code's)
        self.config = GPTConfig(**{**GPTConfig().__dict__, **shape, "dropout": 0.0})
        self.folder = args.weights or tempfile.mkdtemp(prefix="bench-")
        if not args.weights:
            torch.manual_seed(0)
            GPT(self.config).save_pretrained(self.folder)  # random weights, loaded by both sides
        examples = e2e.load_examples("train", args.data)
        order = train.epoch_batches(examples, 0, 8, seed=110, bucket=args.bucket)
        self.batches = [[examples[i] for i in batch]
                        for batch in order[:args.warmup + args.steps]]

    def __enter__(self):
        return self

    def __exit__(self, *exc):  # the random weights go (not a --weights folder: the caller's)
        if not self.args.weights:
            shutil.rmtree(self.folder, ignore_errors=True)

    def flops_models(self) -> dict:
        """This shape with LoRA r=4 on q,v and with every weight trained, on the meta device:
        what paper/mfu.py counts a step's FLOPs on (every LoRA row, theirs too, needs the same
        FLOPs as ours; what a row runs beyond them, as an LM head at every position, is its own
        cost)."""
        with torch.device("meta"):
            return {"lora": lora.apply(GPT(self.config), "q,v", r=4, alpha=32),
                    "dora": lora.apply(GPT(self.config), "q,v", r=4, alpha=32, dora=True),
                    "full": GPT(self.config)}

    def describe(self) -> str:
        c = self.config
        return (f"GPT-2 shape n_layer={c.n_layer} n_head={c.n_head} n_embd={c.n_embd} "
                f"({'small' if self.args.small else self.args.model}), random weights")


# --- training throughput -------------------------------------------------------------------------
#
# Both sides get what a user of each would have: bf16 autocast and fused AdamW on CUDA, SDPA
# attention, the same loss (label smoothing 0.1, summed over the reference tokens, divided by their
# number), LoRA dropout 0.1 and none in the backbone; with --compile, torch.compile (ours: the loss
# function, as train.py --compile [cuda-graphs]; theirs: the model). What differs is each side's
# own: ours runs the LM head only at the loss positions and uses SDPA's is_causal (right padding
# sits after each sequence, so no real token sees it, and no loss is taken there); transformers
# gets an attention mask for the padding, as its documentation has it, and runs the LM head at
# every position. The row "LM head at every position" shows what the first difference is worth.


def ours_trainer(setup, method: str, compile: str | None = None, every_position: bool = False,
                 lora_dropout: float = 0.1, dora: bool = False, dtype: torch.dtype | None = None,
                 quantize: bool = False):
    """A train.py step: its model set-up, batches (train.device_batch), loss (train.token_loss:
    the LM head at the loss positions only) and AdamW (train.make_optimizer). compile: None
    (eager), or train.py's --compile: "default" or "cuda-graphs" (over shapes padded to
    hardware.CUDA_GRAPH_SHAPES); every_position ignores
    it. dtype: autocast's, where not the device's default (amp). quantize: QLoRA's W0 in NF4
    (train.py --quantize nf4). Returns step(batch) -> loss."""
    device = setup.device
    model = GPT.from_pretrained(setup.folder)
    if method == "lora":
        lora.apply(model, "q,v", r=4, alpha=32, dropout=lora_dropout, dora=dora)
    model.to(device).train()
    if quantize:
        qlora.quantize(model)
    optimizer = train.make_optimizer(model, lr=2e-4, weight_decay=0.01,
                                        fused=device.type == "cuda")
    loss_fn, multiple = hardware.compiled(train.token_loss, compile)

    def step(batch):
        n_targets = sum(len(tokens) - prompt_length for tokens, prompt_length in batch)
        with amp(device, dtype):
            if every_position:
                inputs, targets = e2e.collate(batch)
                loss = every_position_loss(model(inputs.to(device)), targets.to(device))
            else:
                loss = loss_fn(model, *train.device_batch(batch, device, multiple), 0.1)
        loss = loss / n_targets
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def every_position_loss(logits, targets):
    """The loss as transformers computes it, from logits (B, T, vocab) at every position: the
    positions without a target (-100) ignored. Both sides' every-position rows use it."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                           label_smoothing=0.1, reduction="sum")


def hf_peft_trainer(setup, compile: bool = False, lora_dropout: float = 0.1):
    """transformers + peft, as their documentation has it: GPT2LMHeadModel (SDPA attention),
    peft LoRA r=4 on c_attn (q, k, v at rank 4: the same 16,384 parameters per layer as ours on
    q and v), an attention mask for the padding, AdamW (fused on CUDA). Returns step(batch) ->
    loss."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    device = setup.device
    model = GPT2LMHeadModel.from_pretrained(setup.folder, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, lora_dropout=lora_dropout,
                                             target_modules=["c_attn"], fan_in_fan_out=True))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4,
                                  weight_decay=0.01, eps=1e-6, fused=device.type == "cuda")
    forward = torch.compile(model) if compile else model

    def step(batch):
        inputs, targets = e2e.collate(batch)  # the same inputs and targets as ours
        mask = torch.zeros_like(inputs)
        for i, (tokens, _) in enumerate(batch):
            mask[i, :len(tokens) - 1] = 1
        n_targets = int((targets != -100).sum())
        with amp(device):
            logits = forward(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits
            loss = every_position_loss(logits, targets.to(device)) / n_targets
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


REFERENCE = "transformers + peft, LoRA r=4 c_attn"
BF16_CPU = "ours, LoRA r=4 q,v, bf16 autocast"  # (--cpu-bf16: its MFU against a bf16 product's)
QLORA = "ours, QLoRA r=4 q,v (W0 in NF4)"  # (its MFU counts LoRA's FLOPs, not the dequantizing)


def train_variants(setup) -> dict:
    """name -> a function that builds that variant's step."""
    variants = {"ours, LoRA r=4 q,v": lambda: ours_trainer(setup, "lora"),
                REFERENCE: lambda: hf_peft_trainer(setup),
                "ours, LoRA, LM head at every position":
                    lambda: ours_trainer(setup, "lora", every_position=True)}
    if setup.args.compile:
        variants["ours, LoRA, compiled"] = lambda: ours_trainer(setup, "lora", compile="default")
        if setup.device.type == "cuda":
            variants["ours, LoRA, compiled with CUDA graphs"] = \
                lambda: ours_trainer(setup, "lora", compile="cuda-graphs")
        variants[REFERENCE + ", compiled"] = lambda: hf_peft_trainer(setup, compile=True)
    if setup.args.cpu_bf16 and setup.device.type == "cpu":
        variants[BF16_CPU] = lambda: ours_trainer(setup, "lora", dtype=torch.bfloat16)
    variants["ours, DoRA r=4 q,v"] = lambda: ours_trainer(setup, "lora", dora=True)
    variants[QLORA] = lambda: ours_trainer(setup, "lora", quantize=True)
    variants["ours, full fine-tuning"] = lambda: ours_trainer(setup, "full")
    return variants


def interleaved(setup, steps: dict, failed: dict) -> dict:
    """Time every variant on the same batches, in rounds: each round runs every variant (in a
    shuffled order) on the next slice of the timed batches, so a drift in the machine's speed
    (clocks, other load) touches them all alike. Returns name -> totals and the per-round range;
    a variant that fails goes to `failed`."""
    args, device = setup.args, setup.device
    timed_batches = setup.batches[args.warmup:]
    rounds = [timed_batches[r::args.rounds] for r in range(min(args.rounds, len(timed_batches)))]
    order, rng = list(steps), random.Random(0)
    seconds = {name: [] for name in steps}
    for batches in rounds:
        rng.shuffle(order)
        for name in [name for name in order if name not in failed]:
            try:
                seconds[name].append(timed(lambda: [steps[name](b) for b in batches], device))
            except Exception as e:
                traceback.print_exc()
                failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    seconds = {name: s for name, s in seconds.items() if name not in failed}
    tokens = [sum(len(t) for batch in batches for t, _ in batch) for batches in rounds]
    peak = mfu.peak(device, torch.bfloat16 if device.type == "cuda" else None)[0]
    peaks = {name: mfu.peak(device, torch.bfloat16)[0] if name == BF16_CPU else peak
             for name in seconds}
    needed = {method: sum(mfu.batch_flops(model, batch) for batch in timed_batches)
              for method, model in setup.flops_models().items()}
    return {name: {"steps_per_s": len(timed_batches) / sum(s),
                   "tokens_per_s": sum(tokens) / sum(s),
                   "tokens_per_s_range": [min(n / x for n, x in zip(tokens, s)),
                                          max(n / x for n, x in zip(tokens, s))],
                   "mfu": needed["full" if "full" in name else "dora" if "DoRA" in name
                                 else "lora"] / sum(s) / peaks[name] if peaks[name] else None}
            for name, s in seconds.items()}


def bench_train(setup) -> dict:
    steps, failed, variants = {}, {}, train_variants(setup)
    for name, build in variants.items():
        start = time.perf_counter()
        try:
            steps[name] = build()
            for batch in setup.batches[:setup.args.warmup]:  # kernels, compilation, allocator
                steps[name](batch)
            print(f"{name}: built and warmed up in {time.perf_counter() - start:.0f} s",
                  flush=True)
        except Exception as e:  # one variant's failure (a compile error, say) spares the rest
            traceback.print_exc()
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    rows = interleaved(setup, steps, failed)
    reference = rows.get(REFERENCE, {}).get("tokens_per_s")
    padding = 1 - sum(len(t) - 1 for b in setup.batches for t, _ in b) / sum(
        8 * (max(len(t) for t, _ in b) - 1) for b in setup.batches)
    print(f"\n### Training step, batch 8 of real E2E examples ({setup.describe()}, "
          f"{setup.device}, {'bf16' if setup.device.type == 'cuda' else 'fp32'}, "
          f"{setup.args.steps} steps in {setup.args.rounds} interleaved rounds after "
          f"{setup.args.warmup} warm-up; {padding:.0%} padding"
          f"{' with --bucket' if setup.args.bucket else ''})\n")
    print("| | tokens/s | range over rounds | steps/s | MFU | vs transformers + peft |\n"
          "|---|---|---|---|---|---|")
    def rate(x, decimals=0):  # two significant figures where the decimals would show 0 (CPU bf16)
        return f"{x:,.{decimals}f}" if x >= 10 ** -decimals else f"{x:.2g}"

    for name in variants:
        if name in failed:
            print(f"| {name} | failed: {failed[name]} | | | | |")
            continue
        r = rows[name]
        low, high = r["tokens_per_s_range"]
        ratio = f"{r['tokens_per_s'] / reference:.2f}x" if reference else "n/a"
        utilization = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {name} | {rate(r['tokens_per_s'])} | {rate(low)}-{rate(high)} | "
              f"{rate(r['steps_per_s'], 2)} | {utilization} | {ratio} |")
    peak, source = mfu.peak(setup.device, torch.bfloat16 if setup.device.type == "cuda"
                            else None)
    print(f"\nMFU: the FLOPs each step needs (paper/mfu.py: LoRA's backward without W0's weight "
          f"gradients, the LM head at the loss positions) over the peak: "
          f"{'n/a' if peak is None else f'{peak / 1e12:,.3g} TFLOP/s'} ({source})")
    if BF16_CPU in rows:
        peak, source = mfu.peak(setup.device, torch.bfloat16)
        print(f"'{BF16_CPU}': over {peak / 1e12:,.3g} TFLOP/s ({source})")
    result = {"rows": rows, "failed": failed}
    ours = [name for name in ("ours, LoRA r=4 q,v", "ours, LoRA, compiled",
                              "ours, LoRA, compiled with CUDA graphs") if name in rows]
    if ours:
        fastest = max(ours, key=lambda name: rows[name]["steps_per_s"])
        result["recipe_minutes"] = RECIPE_STEPS / rows[fastest]["steps_per_s"] / 60
        print(f"\nThe paper's recipe ({RECIPE_STEPS:,} steps) at the step rate of '{fastest}': "
              f"{result['recipe_minutes']:,.1f} minutes (without the dev evaluations)")
    return result


# --- peak memory ---------------------------------------------------------------------------------


def peak_memory_worker(setup, method: str) -> dict:
    """In a fresh process: a few training steps, then the peak (GPU: allocated since the model
    was built; CPU: RSS, the loading of the fp32 checkpoint included) and, on the CPU, the RSS
    after the steps (QLoRA's fp32 W0 freed once quantized)."""
    step = (hf_peft_trainer(setup) if method == "peft" else
            ours_trainer(setup, "lora", quantize=True) if method == "qlora" else
            ours_trainer(setup, method))
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    for batch in setup.batches[:3]:
        step(batch)
    if setup.device.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated(setup.device) / 2 ** 20,
                "what": "torch.cuda.max_memory_allocated"}
    return {"peak_mb": peak_rss_mb(), "rss_mb": peak_rss_mb("VmRSS"),
            "what": "peak RSS of the process"}


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak resident memory (field VmRSS: its resident memory now). Linux's VmHWM
    starts afresh at exec; getrusage's ru_maxrss does not (a child inherits its parent's peak),
    so it is only the fallback."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MEMORY_ROWS = {"lora": "ours, LoRA r=4 on q,v", "qlora": "ours, QLoRA r=4 on q,v (W0 in NF4)",
               "full": "ours, full fine-tuning", "peft": "transformers + peft, LoRA r=4 on c_attn"}


def bench_memory(setup) -> dict:
    """Each method in a fresh process (eager, the batches train.py's first steps see)."""
    rows = {}
    args = setup.args
    for method in MEMORY_ROWS:
        argv = [sys.executable, "-m", "scripts.bench", "--peak-worker", method,
                "--device", str(setup.device), "--model", args.model, "--weights", setup.folder]
        argv += (["--small"] if args.small else []) + (["--bucket"] if args.bucket else [])
        argv += ["--data", args.data] if args.data else []
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        rows[method] = json.loads(out.strip().splitlines()[-1])
    print(f"\n### Peak memory of training at batch 8 ({setup.describe()}, {setup.device}; "
          f"{rows['lora']['what']}, each method in a fresh process)\n")
    now = "rss_mb" in rows["lora"]  # (the CPU: also the RSS after the steps)
    print("| | frozen weights MB | peak MB | vs full fine-tuning |" + " RSS after the steps MB |"
          * now + "\n|---|---|---|---|" + "---|" * now)
    frozen = frozen_mb(setup)
    for method, name in MEMORY_ROWS.items():
        print(f"| {name} | {frozen.get(method, 'n/a')} | {rows[method]['peak_mb']:,.0f} | "
              f"{rows[method]['peak_mb'] / rows['full']['peak_mb']:.2f} |"
              + f" {rows[method].get('rss_mb', 0):,.0f} |" * now)
    return rows


def frozen_mb(setup) -> dict:
    """MB of what does not train (frozen parameters and buffers): LoRA's and QLoRA's."""
    sizes = {}
    for method in ("lora", "qlora"):
        model = lora.apply(GPT.from_pretrained(setup.folder), "q,v", r=4, alpha=32)
        if method == "qlora":
            qlora.quantize(model)
        tensors = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
        sizes[method] = f"{sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20:,.0f}"
    return sizes


# --- where the time goes -------------------------------------------------------------------------


def bench_profile(setup) -> dict:
    """torch.profiler over a few steps of ours (LoRA) and of transformers + peft: the operations
    that take the most time (GPU kernels on CUDA, CPU operators on CPU), and the number of
    GPU kernels launched per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    device, n = setup.device, 3
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    result = {}
    for name, build in (("ours, LoRA r=4 q,v", lambda: ours_trainer(setup, "lora")),
                        (REFERENCE, lambda: hf_peft_trainer(setup))):
        step = build()
        for batch in setup.batches[:setup.args.warmup]:
            step(batch)
        batches = setup.batches[setup.args.warmup:setup.args.warmup + n]
        n = len(batches)
        with profile(activities=activities) as prof:
            for batch in batches:
                step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        kernels = sum(e.device_type == DeviceType.CUDA for e in prof.events()) / n
        print(f"\n### Profile: {name}, {n} steps ({setup.describe()}, {device})"
              + (f"; {kernels:,.0f} GPU kernels per step" if device.type == "cuda" else "") + "\n")
        print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60))
        result[name] = {"kernels_per_step": kernels} if device.type == "cuda" else {}
    return result


# --- decoding ------------------------------------------------------------------------------------


def bench_decode(setup) -> dict:
    """Beam 10, length penalty 0.9, no repeated 4-grams, exactly 64 new tokens (no stop token on
    our side, min_new_tokens=64 on theirs), MRs batched by prompt length on both sides, each
    side warmed up on two MRs first."""
    from transformers import GPT2LMHeadModel

    args, device = setup.args, setup.device
    prompts = [e2e.prompt_tokens(mr) for mr, _ in e2e.load_mrs("test", args.data)[:args.mrs]]
    ours = GPT.from_pretrained(setup.folder).to(device).eval()
    theirs = GPT2LMHeadModel.from_pretrained(setup.folder, attn_implementation="sdpa")
    theirs = theirs.to(device).eval()
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None

    def beam_search_ours(prompts):
        decode(ours, prompts, beam=10, length_penalty=0.9, no_repeat_ngram=4, max_new_tokens=64,
               batch_size=args.decode_batch, amp_dtype=amp_dtype, stop_tokens=(), progress=False)

    def generate(prompts):  # the batches ours searches
        for chunk in batches(prompts, args.decode_batch):
            ids = torch.tensor([prompts[i] for i in chunk], device=device)
            with torch.no_grad(), amp(device):
                theirs.generate(ids, attention_mask=torch.ones_like(ids), num_beams=10,
                                length_penalty=0.9, no_repeat_ngram_size=4,
                                max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                early_stopping=False, pad_token_id=e2e.EOT,
                                eos_token_id=e2e.EOT)
    subset = prompts[:args.generate_mrs or len(prompts)]  # (generate is the slower side)
    beam_search_ours(prompts[:2])
    generate(prompts[:2])
    seconds_ours = timed(lambda: beam_search_ours(prompts), device)
    seconds_theirs = timed(lambda: generate(subset), device)
    rows = {"ours": len(prompts) / seconds_ours,
            "transformers generate": len(subset) / seconds_theirs}
    print(f"\n### Beam-search decoding of {len(prompts)} test MRs ({setup.describe()}, {device}, "
          f"{'bf16' if amp_dtype else 'fp32'}; beam 10, no repeated 4-grams, 64 new tokens each, "
          f"up to {args.decode_batch} MRs of one prompt length at a time)\n")
    print("| | MRs/s | seconds |\n|---|---|---|")
    print(f"| ours | {rows['ours']:.2f} | {seconds_ours:.1f} |")
    print(f"| transformers generate{f' (first {len(subset)} MRs)' if subset != prompts else ''} | "
          f"{rows['transformers generate']:.2f} | {seconds_theirs:.1f} |")
    print(f"\nours / transformers (MRs per second): "
          f"{rows['ours'] / rows['transformers generate']:.2f}x")
    return {"mrs": len(prompts), "generate_mrs": len(subset), "mrs_per_s": rows,
            "seconds": {"ours": seconds_ours,
                                                                "transformers": seconds_theirs}}


# --- latency and the KV cache --------------------------------------------------------------------


def bench_latency(setup) -> dict:
    """The paper's Table 1 grid (latency.py, as sample.py --latency runs it)."""
    args, device = setup.args, setup.device
    grid = latency.parse_grid(args.grid or latency.DEFAULT_GRID[device.type])
    config = (GPTConfig(**{**setup.config.__dict__, "dropout": 0.0}) if args.small
              else GPTConfig.from_preset(args.model, dropout=0.0))
    report = latency.measure(config, grid, device,
                             trials=args.trials or (100 if device.type == "cuda" else 30),
                             warmup=10 if device.type == "cuda" else 2,
                             amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
                             name=args.model if not args.small else setup.describe(),
                             say=lambda line: print(line, flush=True))
    print()
    print(latency.latency_table(report))
    return report


def bench_cache(setup) -> dict:
    """Greedy and beam decoding of 64 new tokens with the KV cache (each step feeds one token)
    and without (each step feeds the whole sequence)."""
    device = setup.device
    config = GPTConfig(block_size=256, vocab_size=50257, n_layer=4, n_head=4, n_embd=128,
                       dropout=0.0)
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    prompts = torch.randint(0, config.vocab_size, (4, 32), device=device)
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
            seconds[use_cache] = min(timed(run, device) for _ in range(2))
        tokens = 4 * 64
        rows.append({"beam": beam, "with_cache_tok_s": tokens / seconds[True],
                     "without_cache_tok_s": tokens / seconds[False],
                     "speedup": seconds[False] / seconds[True]})
    print(f"\n### Decoding 64 new tokens after a 32-token prompt, 4 prompts, GPT-2 shape "
          f"n_layer=4 n_embd=128 (random weights), {device}, best of 2\n")
    print("| beam | with KV cache | without | speed-up |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['beam']} | {r['with_cache_tok_s']:,.0f} tok/s | "
              f"{r['without_cache_tok_s']:,.0f} tok/s | {r['speedup']:.1f}x |")
    return {"rows": rows}


# --- many tasks on one base (multitask.py) ------------------------------------------------------


def random_adapters(setup, n: int, folder: str) -> list[str]:
    """n LoRA adapter files (r=4 on q,v, the paper's) with random A and B, for the shape timed."""
    model = lora.apply(GPT.from_pretrained(setup.folder), "q,v", r=4, alpha=32)
    g, paths = torch.Generator().manual_seed(0), []
    for i in range(n):
        with torch.no_grad():
            for layer in lora.lora_layers(model).values():
                layer.A.copy_(torch.randn(layer.A.shape, generator=g) * 0.02)
                layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.02)
        paths.append(os.path.join(folder, f"task{i}.safetensors"))
        with contextlib.redirect_stdout(io.StringIO()):  # (lora.save prints each file's size)
            lora.save(model, paths[-1])
    return paths


def bench_tasks(setup) -> dict:
    """Serving several adapters on one base: the cost of a task switch (the paper's unmerge, load,
    merge) against loading a whole fine-tuned checkpoint, the memory of N merged copies against
    one base and N adapters, and decoding throughput of mixed-task batches (each row its own
    adapter, unmerged) against one task merged and one task unmerged."""
    device = setup.device
    folder = os.path.join(setup.folder, "adapters")
    os.makedirs(folder, exist_ok=True)
    paths = random_adapters(setup, max(TASK_COUNTS), folder)
    model = GPT.from_pretrained(setup.folder).to(device).eval()
    # how far W0 drifts: SWITCHES times task 0's or 1's B A added and subtracted (Sec. 4.1's way)
    W0 = model.transformer.h[0].attn.q.weight.clone()
    tasks = multitask.Adapters(model, paths[:2])
    for i in range(SWITCHES):
        tasks.switch(i % 2)
    tasks.switch(None)
    drift = ((model.transformer.h[0].attn.q.weight - W0).abs().max() / W0.abs().max()).item()
    # a switch as the paper describes it: subtract B A, load the next file, add its B A
    model = GPT.from_pretrained(setup.folder).to(device).eval()
    lora.load(model, paths[0])
    lora.merge(model)

    def switch(i):
        lora.unmerge(model)
        lora.load(model, paths[i % 2])
        lora.merge(model)
    switch_s = min(timed(lambda: [switch(i) for i in range(10)], device) for _ in range(3)) / 10
    full_s = min(timed(lambda: GPT.from_pretrained(setup.folder).to(device), device)
                 for _ in range(3))
    lora.unmerge(model)
    model = GPT.from_pretrained(setup.folder).to(device).eval()  # (without LoRA layers)
    tasks = multitask.Adapters(model, paths[:2])
    in_memory_s = min(timed(lambda: [tasks.switch(i % 2) for i in range(10)], device)
                      for _ in range(3)) / 10
    tasks.switch(None)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    adapter_bytes = sum(t[0].numel() * t.element_size() for stack in (tasks.A, tasks.B)
                        for t in stack.values())
    rows = mixed_throughput(setup, model, paths)
    result = {"switch_ms": 1e3 * switch_s, "switch_in_memory_ms": 1e3 * in_memory_s,
              "load_full_checkpoint_s": full_s, "drift_after_switches": drift,
              "switches": SWITCHES, "model_bytes": model_bytes, "adapter_bytes": adapter_bytes,
              "throughput": rows}
    print_tasks(setup, result)
    return result


TASK_COUNTS = (2, 8, 32)  # adapters in a mixed batch
TASK_BATCHES = (1, 8, 32)  # prompts decoded together
TASK_NEW_TOKENS = 32  # decoded after each prompt
SWITCHES = 1000


def mixed_throughput(setup, model, paths) -> list[dict]:
    """Tokens/s of greedy decoding (TASK_NEW_TOKENS after 40-token prompts, no stop) at each batch
    size: one task merged, one task unmerged (lora.py), and rows of 2 / 8 / 32 tasks mixed; the
    variants timed in turn, three rounds, the best of each."""
    device = setup.device
    prompts = torch.randint(0, setup.config.vocab_size, (max(TASK_BATCHES), 40),
                            generator=torch.Generator().manual_seed(0)).to(device)
    unmerged = GPT.from_pretrained(setup.folder).to(device).eval()
    lora.load(unmerged, paths[0])
    served = {n: multitask.Adapters(model, paths[:n]) for n in (1, *TASK_COUNTS)}

    def variant(batch, n):  # n: None one task unmerged, 1 one task merged, else n tasks mixed
        def run():
            for tasks in served.values():  # the model as this variant uses it
                tasks.unmix()
            for tasks in served.values():
                tasks.switch(None)
            if n == 1:
                served[1].switch(0)
            elif n is not None:
                served[n].mix()
            net = unmerged if n is None else model
            route = None if n in (None, 1) else torch.arange(batch, device=device) % n
            with amp(device):  # row b: task b mod n
                return timed(lambda: beam_search(net, prompts[:batch], beam=1, length_penalty=0.0,
                                                 no_repeat_ngram=0,
                                                 max_new_tokens=TASK_NEW_TOKENS,
                                                 stop_tokens=(), tasks=route), device)
        return run

    rows = []
    for batch in TASK_BATCHES:
        variants = {"one task, merged": 1, "one task, unmerged": None,
                    **{f"{n} tasks, mixed": n for n in TASK_COUNTS}}
        runs = {name: variant(batch, n) for name, n in variants.items()}
        for run in runs.values():
            run()  # warm-up
        seconds = {name: math.inf for name in runs}
        for _ in range(3):
            for name, run in runs.items():
                seconds[name] = min(seconds[name], run())
        base = seconds["one task, merged"]
        rows += [{"batch": batch, "variant": name, "tokens_per_s": batch * TASK_NEW_TOKENS / s,
                  "vs_merged": base / s} for name, s in seconds.items()]
    for tasks in served.values():
        tasks.unmix()
    return rows


def print_tasks(setup, r: dict):
    n = max(TASK_COUNTS)
    print(f"\n### Many tasks on one base ({setup.describe()}, {setup.device}; adapters LoRA r=4 "
          "on q,v, random)\n")
    print("| | time | memory |\n|---|---|---|")
    print(f"| switch task: unmerge, load the adapter file, merge (lora.py) | "
          f"{r['switch_ms']:.1f} ms | {r['adapter_bytes'] / 1e6:.2f} MB per adapter |")
    print(f"| switch task, adapters in memory (multitask.Adapters.switch) | "
          f"{r['switch_in_memory_ms']:.1f} ms | |")
    print(f"| load a fully fine-tuned checkpoint instead | {r['load_full_checkpoint_s']:.2f} s | "
          f"{r['model_bytes'] / 1e6:,.0f} MB per task |")
    print(f"| {n} tasks: {n} merged copies vs one base + {n} adapters | | "
          f"{n * r['model_bytes'] / 1e9:.2f} GB vs "
          f"{(r['model_bytes'] + n * r['adapter_bytes']) / 1e9:.2f} GB |")
    print(f"\nAfter {r['switches']:,} merges and unmerges W0 is back to within "
          f"{r['drift_after_switches']:.1e} of its largest entry (float rounding).")
    print(f"\nGreedy decoding, {TASK_NEW_TOKENS} new tokens after 40-token prompts: tokens/s "
          "(x one task merged)\n")
    names = list(dict.fromkeys(row["variant"] for row in r["throughput"]))
    print("| batch | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for batch in TASK_BATCHES:
        cells = {row["variant"]: row for row in r["throughput"] if row["batch"] == batch}
        print(f"| {batch} | " + " | ".join(f"{cells[v]['tokens_per_s']:,.0f} "
                                          f"({cells[v]['vs_merged']:.2f}x)" for v in names) + " |")


SECTIONS = {"train": bench_train, "memory": bench_memory, "decode": bench_decode,
            "latency": bench_latency, "cache": bench_cache, "profile": bench_profile,
            "tasks": bench_tasks}
# the sections that compare with transformers + peft (test-only references: requirements-dev.txt)
REFERENCES = ("transformers", "peft")
NEEDS_REFERENCES = ("train", "memory", "decode", "profile")


def unavailable(section: str, missing: list[str]) -> str:
    return (f"{section} compares with transformers + peft, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed (pip install -r "
            "requirements-dev.txt brings them)")


def missing_references() -> list[str]:
    """The reference packages that cannot be imported here (a plain install: requirements.txt)."""
    missing = []
    for name in REFERENCES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def parse_args(argv=None) -> argparse.Namespace:
    class Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass  # the module docstring, which describes the sections, as it is laid out

    p = cli.parser("bench.py", description=__doc__, formatter_class=Formatter)
    p.add_argument("what", nargs="?", default="all", choices=["all", *SECTIONS],
                   help="the section to run (see above)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda, "
                                                    "cuda:N, cpu")
    p.add_argument("--model", default="gpt2-medium", help="the shape timed (random weights)")
    p.add_argument("--small", action="store_true", help="a small GPT-2 shape, for CPUs")
    p.add_argument("--data", help="folder with the E2E CSVs (default: $E2E_DATA_DIR, else "
                                  "data/e2e/, downloaded on first use)")
    p.add_argument("--steps", type=int, default=0, help="timed training steps (default 100 on "
                                                        "CUDA, 10 on CPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed first steps of each variant "
                                                         "(default 20 CUDA, 2 CPU)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the timed steps")
    p.add_argument("--compile", action="store_true",
                   help="also time both sides under torch.compile")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="train: on a CPU, also time LoRA under bf16 autocast (far slower on one "
                        "without bf16 instructions), its MFU against a bf16 product's speed")
    p.add_argument("--bucket", action="store_true",
                   help="batches of similar lengths, as train.py --bucket (less padding)")
    p.add_argument("--mrs", type=int, default=0, help="test MRs decoded (default 630 CUDA, 16 CPU)")
    p.add_argument("--generate-mrs", type=int, default=0,
                   help="test MRs transformers' generate decodes, the first of --mrs (default: "
                        "all of them); the two sides are compared in MRs per second")
    p.add_argument("--decode-batch", type=int, default=32, help="MRs decoded together")
    p.add_argument("--grid", help="latency cells, e.g. 1x128,16x256")
    p.add_argument("--trials", type=int, default=0, help="latency trials (default 100 CUDA, "
                                                         "30 CPU)")
    p.add_argument("--json", help="also write the results here (after each section)")
    # internal: bench_memory runs each method in a fresh process with these
    p.add_argument("--peak-worker", choices=tuple(MEMORY_ROWS), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:  # every flag checked before anything is built or timed
        args.device = str(bench_device(args.device))
        if args.grid:
            latency.parse_grid(args.grid)
    except (cli.UserError, ValueError) as e:
        cli.fail("bench.py", e)
    if negative := [f"--{k.replace('_', '-')}" for k in ("steps", "warmup", "mrs", "generate_mrs",
                                                         "trials") if getattr(args, k) < 0]:
        cli.fail("bench.py", f"{', '.join(negative)} must not be negative (0: the default)")
    if args.rounds < 1 or args.decode_batch < 1:
        cli.fail("bench.py", "--rounds and --decode-batch must be at least 1")
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (100 if cuda else 10)
    args.warmup = args.warmup or (20 if cuda else 2)
    args.mrs = args.mrs or (630 if cuda else 16)
    return args


def bench_device(name: str) -> torch.device:
    """--device as train.py checks it, auto meaning CUDA, else the CPU: what is timed here
    waits for CUDA kernels to finish (torch.cuda.synchronize), and for nothing else."""
    device = hardware.pick_device("cuda" if name == "auto" and torch.cuda.is_available() else
                             "cpu" if name == "auto" else name)
    if device.type == "mps":
        raise cli.UserError("--device mps: bench.py times CUDA or the CPU only (it cannot wait "
                            "for an Apple GPU to finish)")
    return device


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.json:  # before any measurement, not after
        try:
            cli.check_writable_file(args.json, "--json")
        except cli.UserError as e:
            cli.fail("bench.py", e)
    if args.what in NEEDS_REFERENCES and (missing := missing_references()):
        cli.fail("bench.py", unavailable(args.what, missing))
    try:
        return run(args, argv)
    except cli.WriteError as e:  # --json on a disk that filled up: the sections before it kept
        cli.cannot_write("bench.py", e)
    except KeyboardInterrupt:
        cli.interrupted("bench.py", f"stopped; the sections that finished are in {args.json}"
                        if args.json and os.path.exists(args.json) else "stopped")


def run(args, argv) -> int:
    setup = Setup(args)
    if args.peak_worker:
        print(json.dumps(peak_memory_worker(setup, args.peak_worker)))
        return 0
    missing = missing_references()
    versions = "".join(f", {name} {sys.modules[name].__version__}" for name in REFERENCES
                       if name not in missing and name in sys.modules)
    print(f"bench.py {' '.join(sys.argv[1:] if argv is None else argv)}: "
          f"{torch.cuda.get_device_name() if setup.device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}{versions}, {time.strftime('%Y-%m-%d')}", flush=True)
    results, failed = {}, []
    with setup:
        for name in SECTIONS if args.what == "all" else [args.what]:
            if missing and name in NEEDS_REFERENCES:  # a plain install (make train's)
                results[name] = {"skipped": f"needs {' and '.join(missing)}"}
                print(f"\n{name}: skipped: {unavailable(name, missing)}", flush=True)
                continue
            try:
                results[name] = SECTIONS[name](setup)
            except Exception:  # a section that breaks (on a new GPU, say) spares the others
                traceback.print_exc()
                failed.append(name)
                results[name] = {"failed": traceback.format_exc(limit=3)}
            sys.stdout.flush()
            if args.json:
                write_atomic(args.json, json.dumps(results, indent=2, default=str))
    if failed:
        print(f"\nfailed sections: {', '.join(failed)} (tracebacks above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
