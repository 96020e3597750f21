"""Benchmarks: ours against transformers + peft, same weights, same E2E batches, same dtype.

    python bench.py --small --device cpu   # all sections, CPU: a small GPT-2 shape (minutes)
    python bench.py                        # all sections, GPU: GPT-2 medium in bf16
    python bench.py train|memory|decode|latency|cache [--small --device cpu]   # one section

- train:   training-step throughput at batch 8 on real E2E batches: ours (LoRA r=4 on q,v; and
           --method full) against transformers' GPT2LMHeadModel + peft LoRA (r=4 on c_attn)
- memory:  peak memory of a LoRA step against a full fine-tuning step (each in a fresh process)
- decode:  beam search (beam 10, no repeated 4-grams) over test MRs, exactly 64 new tokens each,
           ours against transformers' generate: MRs per second
- latency: the paper's Table 1 grid, through sample.py's --latency code
- cache:   our decoding with and without the KV cache

Random weights time the same as trained ones (no operation depends on the values), so nothing
here needs the real checkpoints: one random GPT-2 is saved in HF format and both sides load it.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import torch

import latency
import lora
import training
from checkpoint import write_atomic
from cli import HelpFormatter
from data.e2e import prepare as e2e
from decoding import beam_search, decode
from model import GPT, GPTConfig

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


def amp(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class Setup:
    """What every section shares: the device, the model shape saved once in HF format, and
    real E2E batches."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                                   else "cpu" if args.device == "auto" else args.device)
        shape = SMALL if args.small else GPTConfig.from_preset(args.model).__dict__
        self.config = GPTConfig(**{**GPTConfig().__dict__, **shape, "dropout": 0.1})
        self.folder = args.weights or tempfile.mkdtemp(prefix="bench-")
        if not args.weights:
            torch.manual_seed(0)
            GPT(self.config).save_pretrained(self.folder)  # random weights, loaded by both sides
        examples = e2e.load_examples("train", args.data)
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(examples), generator=g).tolist()
        self.batches = [[examples[i] for i in order[b * 8:(b + 1) * 8]]
                        for b in range(args.warmup + args.steps)]

    def describe(self) -> str:
        c = self.config
        return (f"GPT-2 shape n_layer={c.n_layer} n_head={c.n_head} n_embd={c.n_embd} "
                f"({'small' if self.args.small else self.args.model}), random weights")


# --- training throughput -------------------------------------------------------------------------


def ours_trainer(setup, method: str):
    """A train.py step: its model set-up, loss (LM head at the loss positions only) and AdamW
    (training.py)."""
    device = setup.device
    model = GPT.from_pretrained(setup.folder)
    if method == "lora":
        lora.apply(model, "q,v", r=4, alpha=32, dropout=0.1)
    model.to(device).train()
    optimizer = training.make_optimizer(model, lr=2e-4, weight_decay=0.01,
                                        fused=device.type == "cuda")
    loss_fn = torch.compile(training.token_loss, dynamic=True) if setup.args.compile \
        else training.token_loss

    def step(batch):
        inputs, targets = e2e.collate(batch)
        positions, labels = e2e.loss_positions(targets)
        with amp(device):
            loss = loss_fn(model, inputs.to(device), positions.to(device), labels.to(device),
                           0.1) / len(labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def hf_peft_trainer(setup):
    """transformers + peft, as their documentation has it: GPT2LMHeadModel (SDPA attention),
    peft LoRA r=4 on c_attn, labels with -100 on the context, AdamW (fused on CUDA)."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    device = setup.device
    model = GPT2LMHeadModel.from_pretrained(setup.folder, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["c_attn"], fan_in_fan_out=True))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4,
                                  weight_decay=0.01, eps=1e-6, fused=device.type == "cuda")

    def step(batch):
        longest = max(len(t) for t, _ in batch)
        ids = torch.full((len(batch), longest), e2e.EOT, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (tokens, prompt_length) in enumerate(batch):
            t = torch.as_tensor(tokens, dtype=torch.long)
            ids[i, :len(t)], mask[i, :len(t)] = t, 1
            labels[i, prompt_length:len(t)] = t[prompt_length:]
        with amp(device):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                         labels=labels.to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def throughput(setup, step) -> dict:
    args, device = setup.args, setup.device
    for batch in setup.batches[:args.warmup]:
        step(batch)
    timed_batches = setup.batches[args.warmup:]
    seconds = timed(lambda: [step(b) for b in timed_batches], device)
    tokens = sum(len(t) for batch in timed_batches for t, _ in batch)
    return {"steps_per_s": len(timed_batches) / seconds, "tokens_per_s": tokens / seconds}


def bench_train(setup) -> dict:
    rows = {"ours, LoRA r=4 q,v": throughput(setup, ours_trainer(setup, "lora")),
            "transformers + peft, LoRA r=4 c_attn": throughput(setup, hf_peft_trainer(setup)),
            "ours, full fine-tuning": throughput(setup, ours_trainer(setup, "full"))}
    reference = rows["transformers + peft, LoRA r=4 c_attn"]["tokens_per_s"]
    print(f"\n### Training step, batch 8 of real E2E examples ({setup.describe()}, "
          f"{setup.device}, {'bf16' if setup.device.type == 'cuda' else 'fp32'}, "
          f"{setup.args.steps} steps after {setup.args.warmup} warm-up)\n")
    print("| | tokens/s | steps/s | vs transformers + peft |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {r['steps_per_s']:.2f} | "
              f"{r['tokens_per_s'] / reference:.2f}x |")
    minutes = RECIPE_STEPS / rows["ours, LoRA r=4 q,v"]["steps_per_s"] / 60
    print(f"\nThe paper's recipe ({RECIPE_STEPS:,} steps) at ours' LoRA step rate: "
          f"{minutes:,.1f} minutes (without the dev evaluations)")
    return {"rows": rows, "recipe_minutes": minutes}


# --- peak memory ---------------------------------------------------------------------------------


def peak_memory_worker(setup, method: str) -> dict:
    """In a fresh process: a few training steps, then the peak (GPU: allocated; CPU: RSS)."""
    step = ours_trainer(setup, method) if method != "peft" else hf_peft_trainer(setup)
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    for batch in setup.batches[:3]:
        step(batch)
    if setup.device.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated(setup.device) / 2 ** 20,
                "what": "torch.cuda.max_memory_allocated"}
    return {"peak_mb": peak_rss_mb(), "what": "peak RSS of the process"}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; getrusage's
    ru_maxrss does not (a child inherits its parent's peak), so it is only the fallback."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_memory(setup) -> dict:
    rows = {}
    args = setup.args
    for method in ("lora", "full"):
        argv = [sys.executable, os.path.abspath(__file__), "--peak-worker", method,
                "--device", str(setup.device), "--model", args.model, "--weights", setup.folder]
        argv += (["--small"] if args.small else []) + (["--compile"] if args.compile else [])
        argv += ["--data", args.data] if args.data else []
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        rows[method] = json.loads(out.strip().splitlines()[-1])
    print(f"\n### Peak memory of training at batch 8 ({setup.describe()}, {setup.device}; "
          f"{rows['lora']['what']}, each method in a fresh process)\n")
    print("| | peak MB |\n|---|---|")
    print(f"| LoRA r=4 on q,v | {rows['lora']['peak_mb']:,.0f} |")
    print(f"| full fine-tuning | {rows['full']['peak_mb']:,.0f} |")
    print(f"\nLoRA / full: {rows['lora']['peak_mb'] / rows['full']['peak_mb']:.2f}")
    return rows


# --- decoding ------------------------------------------------------------------------------------


def bench_decode(setup) -> dict:
    """Beam 10, length penalty 0.9, no repeated 4-grams, exactly 64 new tokens (no stop token on
    our side, min_new_tokens=64 on theirs), MRs batched by prompt length on both sides."""
    from transformers import GPT2LMHeadModel

    args, device = setup.args, setup.device
    prompts = [e2e.prompt_tokens(mr) for mr, _ in e2e.load_mrs("test", args.data)[:args.mrs]]
    ours = GPT.from_pretrained(setup.folder).to(device).eval()
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None

    def beam_search_ours():
        decode(ours, prompts, beam=10, length_penalty=0.9, no_repeat_ngram=4, max_new_tokens=64,
               batch_size=args.decode_batch, amp_dtype=amp_dtype, stop_tokens=(), progress=False)
    seconds_ours = timed(beam_search_ours, device)
    theirs = GPT2LMHeadModel.from_pretrained(setup.folder, attn_implementation="sdpa")
    theirs = theirs.to(device).eval()
    by_length = {}
    for p in prompts:
        by_length.setdefault(len(p), []).append(p)

    def generate():
        for group in by_length.values():
            for s in range(0, len(group), args.decode_batch):
                ids = torch.tensor(group[s:s + args.decode_batch], device=device)
                with torch.no_grad(), amp(device):
                    theirs.generate(ids, attention_mask=torch.ones_like(ids), num_beams=10,
                                    length_penalty=0.9, no_repeat_ngram_size=4,
                                    max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                    early_stopping=False, pad_token_id=e2e.EOT,
                                    eos_token_id=e2e.EOT)
    seconds_theirs = timed(generate, device)
    rows = {"ours": len(prompts) / seconds_ours, "transformers generate": len(prompts) / seconds_theirs}
    print(f"\n### Beam-search decoding of {len(prompts)} test MRs ({setup.describe()}, {device}; "
          f"beam 10, no repeated 4-grams, 64 new tokens each)\n")
    print("| | MRs/s | seconds |\n|---|---|---|")
    print(f"| ours | {rows['ours']:.2f} | {seconds_ours:.1f} |")
    print(f"| transformers generate | {rows['transformers generate']:.2f} | {seconds_theirs:.1f} |")
    print(f"\nours / transformers: {seconds_theirs / seconds_ours:.2f}x")
    return {"mrs": len(prompts), "mrs_per_s": rows, "seconds": {"ours": seconds_ours,
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
                             name=args.model if not args.small else setup.describe())
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


SECTIONS = {"train": bench_train, "memory": bench_memory, "decode": bench_decode,
            "latency": bench_latency, "cache": bench_cache}


def main(argv=None) -> int:
    class Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass  # the module docstring, which describes the sections, as it is laid out

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("what", nargs="?", default="all", choices=["all", *SECTIONS],
                   help="the section to run (see above)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    p.add_argument("--model", default="gpt2-medium", help="the shape timed (random weights)")
    p.add_argument("--small", action="store_true", help="a small GPT-2 shape, for CPUs")
    p.add_argument("--data", help="folder with the E2E CSVs (default: $E2E_DATA_DIR, else "
                                  "data/e2e/, downloaded on first use)")
    p.add_argument("--steps", type=int, default=0, help="timed training steps (default 50 on "
                                                        "CUDA, 10 on CPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed first steps (default 10 CUDA, "
                                                         "2 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile our loss function")
    p.add_argument("--mrs", type=int, default=0, help="test MRs decoded (default 630 CUDA, 16 CPU)")
    p.add_argument("--decode-batch", type=int, default=32, help="MRs decoded together")
    p.add_argument("--grid", help="latency cells, e.g. 1x128,16x256")
    p.add_argument("--trials", type=int, default=0, help="latency trials (default 100 CUDA, "
                                                         "30 CPU)")
    p.add_argument("--json", help="also write the results here")
    # internal: bench_memory runs each method in a fresh process with these
    p.add_argument("--peak-worker", choices=("lora", "full"), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    args.steps = args.steps or (50 if cuda else 10)
    args.warmup = args.warmup or (10 if cuda else 2)
    args.mrs = args.mrs or (630 if cuda else 16)
    setup = Setup(args)
    if args.peak_worker:
        print(json.dumps(peak_memory_worker(setup, args.peak_worker)))
        return 0
    import peft
    import transformers
    print(f"bench.py {' '.join(sys.argv[1:] if argv is None else argv)}: "
          f"{torch.cuda.get_device_name() if setup.device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, peft "
          f"{peft.__version__}, {time.strftime('%Y-%m-%d')}")
    results = {}
    try:
        for name in SECTIONS if args.what == "all" else [args.what]:
            results[name] = SECTIONS[name](setup)
    finally:
        shutil.rmtree(setup.folder, ignore_errors=True)
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
