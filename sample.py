"""Decode with a fine-tuned GPT-2: merge the adapter, beam-search the E2E test set, score it.

    python sample.py --adapter RUN_DIR/adapter.safetensors        # the Table 3 row for a run
    python sample.py --adapter RUN_DIR/adapter.safetensors --mr "name[The Eagle], eatType[pub]"
    python sample.py --model gpt2 --prompt "The Eagle is" --temperature 0.8 --top-p 0.9
    python sample.py --latency                                     # the Table 1 latency grid

Decoding follows the paper (Table 11): beam search with 10 beams, length penalty 0.9 and no
repeated 4-grams, at most 64 new tokens, stopping at <|endoftext|> or a blank line. Each distinct
MR of the test set (630) is decoded once; predictions.tsv (MR, output) is written beside the
adapter and scored with metrics.py, the official E2E metrics.
"""

import argparse
import csv
import io
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

import adapter
import lora
import metrics
from cli import HelpFormatter
from data.e2e import prepare as e2e
from model import GPT, PRESETS, GPTConfig, KVCache, load_metadata, write_atomic

STOP_TOKENS = (e2e.EOT, 628)  # <|endoftext|>, and "\n\n" (a blank line)

# Table 3 of the paper (E2E test set; BLEU, METEOR, ROUGE-L are x100 there, as printed below).
PAPER = {
    ("gpt2-medium", "lora"): ("GPT-2 M (LoRA, 0.35M)", 70.4, 8.85, 46.8, 71.8, 2.53),
    ("gpt2-medium", "full"): ("GPT-2 M (FT, 354.92M)", 68.2, 8.62, 46.2, 71.0, 2.47),
    ("gpt2-medium", "houlsby"): ("GPT-2 M (Adapter^H, 11.09M)", 67.3, 8.50, 46.0, 70.7, 2.44),
    ("gpt2-medium", "lin"): ("GPT-2 M (Adapter^L, 0.37M)", 66.3, 8.41, 45.0, 69.8, 2.40),
    ("gpt2-large", "lora"): ("GPT-2 L (LoRA, 0.77M)", 70.4, 8.89, 46.8, 72.0, 2.47),
    ("gpt2-large", "full"): ("GPT-2 L (FT, 774.03M)", 68.5, 8.78, 46.0, 69.9, 2.45),
}


class UserError(ValueError):
    """A bad flag or input, reported as one line (exit code 2)."""


def fail(message: str):
    print(f"sample.py: {message}", file=sys.stderr)
    sys.exit(2)


# --- beam search ---------------------------------------------------------------------------------


def banned_tokens(seqs: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(..., vocab_size) True where a token would repeat an n-gram already in seqs (..., t):
    the n-grams whose first n-1 tokens equal the last n-1 tokens ban their last token."""
    windows = seqs.unfold(-1, n, 1)  # (..., t-n+1, n): every n-gram
    match = (windows[..., :-1] == seqs[..., None, -(n - 1):]).all(-1)
    mask = torch.zeros(*seqs.shape[:-1], vocab_size, device=seqs.device)
    return mask.scatter_reduce_(-1, windows[..., -1], match.float(), "amax").bool()


@torch.no_grad()
def beam_search(model, prompts: torch.Tensor, beam: int = 10, length_penalty: float = 0.9,
                no_repeat_ngram: int = 4, max_new_tokens: int = 64,
                stop_tokens=STOP_TOKENS, use_cache: bool = True) -> list[list[int]]:
    """Beam search for prompts of one length (n, T); returns each prompt's best continuation
    (without its stop token). A hypothesis y scores log p(y | prompt) / len(y) ** length_penalty,
    len counting the stop token; it ends when a stop token is among the step's `beam` best
    candidates (so beam 1 is greedy decoding), or after max_new_tokens. A prompt's search stops
    as soon as no live beam can still beat its best ended hypothesis."""
    n, T = prompts.shape
    K, M, device = beam, max_new_tokens, prompts.device
    stops = torch.tensor(stop_tokens, device=device)
    cache = KVCache(model.config.n_layer) if use_cache else None
    logits = model(prompts, cache=cache)[:, -1].float()
    rows = torch.arange(n, device=device).repeat_interleave(K)  # K beams per prompt
    if cache is not None:
        cache.reorder(rows)
    logits = logits[rows]
    scores = torch.full((n, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at first, so the K beams do not start as copies
    seqs = torch.zeros(n, K, M, dtype=torch.long, device=device)
    best = torch.full((n,), float("-inf"), device=device)  # best ended hypothesis of each prompt
    best_seq = torch.zeros(n, M, dtype=torch.long, device=device)
    best_len = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.arange(n, device=device)  # prompts still searched, as rows of the above
    longest = max(M ** length_penalty, 1 ** length_penalty)  # largest possible len ** penalty

    def record(value, parent, length):  # keep value/parent's sequence where it beats the best
        better = value > best[active]
        best[active] = torch.where(better, value, best[active])
        chosen = seqs[torch.arange(len(active), device=device), parent]
        best_seq[active] = torch.where(better[:, None], chosen, best_seq[active])
        best_len[active] = torch.where(better, length, best_len[active])

    for t in range(M):
        logp = F.log_softmax(logits, dim=-1).view(len(active), K, -1)
        vocab_size = logp.size(-1)
        if no_repeat_ngram and t >= no_repeat_ngram:
            logp = logp.masked_fill(banned_tokens(seqs[:, :, :t], no_repeat_ngram, vocab_size),
                                    float("-inf"))
        top, index = (scores[..., None] + logp).flatten(1).topk(min(3 * K, K * vocab_size))
        parent, token = index // vocab_size, index % vocab_size
        ends = torch.isin(token, stops)
        # hypotheses ending here, among the K best candidates (length t + 1 with the stop token)
        ended = torch.where(ends[:, :K], top[:, :K], float("-inf")) / (t + 1) ** length_penalty
        value, j = ended.max(1)
        record(value, parent.gather(1, j[:, None]).squeeze(1), t)
        # the K best candidates that go on (the 3K best hold K that do not stop: 2 stop tokens)
        top, j = torch.where(ends, float("-inf"), top).topk(K)
        parent, token = parent.gather(1, j), token.gather(1, j)
        seqs = seqs.gather(1, parent[..., None].expand(-1, -1, M)).clone()
        seqs[:, :, t] = token
        scores = top
        if t + 1 == M:  # out of room: an unfinished hypothesis counts as it is
            value, j = (scores / M ** length_penalty).max(1)
            record(value, j, M)
            break
        # stop where no live beam can beat the best ended one: later tokens only lower a score,
        # and the most favourable length normalisation is `longest`
        still_open = scores.max(1).values / longest > best[active]
        rows = (torch.arange(len(active), device=device)[:, None] * K + parent)
        if not bool(still_open.all()):
            keep = still_open.nonzero().squeeze(1)
            active, scores, seqs, token, rows = (active[keep], scores[keep], seqs[keep],
                                                 token[keep], rows[keep])
            if len(active) == 0:
                break
        if cache is not None:  # follow the chosen beams, then feed only the new tokens
            cache.reorder(rows.flatten())
            logits = model(token.view(-1, 1), cache=cache)[:, -1].float()
        else:  # the whole sequence again (to check the cache, and to measure what it saves)
            full = torch.cat([prompts[active].repeat_interleave(K, 0),
                              seqs[:, :, :t + 1].flatten(0, 1)], dim=1)
            logits = model(full)[:, -1].float()
    return [best_seq[i, :best_len[i]].tolist() for i in range(n)]


def decode(model, prompts: list[list[int]], args, progress: bool = True,
           stop_tokens=STOP_TOKENS) -> list[list[int]]:
    """Beam-search many prompts: batched by prompt length (no padding), in the input order."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    by_length = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    outputs = [None] * len(prompts)
    bar = tqdm(total=len(prompts), unit="MR", disable=not (progress and sys.stderr.isatty()))
    for indices in by_length.values():
        for s in range(0, len(indices), args.batch_size):
            chunk = indices[s:s + args.batch_size]
            batch = torch.tensor([prompts[i] for i in chunk], device=device)
            with autocast(device, args):
                results = beam_search(model, batch, args.beam, args.length_penalty,
                                      args.no_repeat_ngram, args.max_new_tokens, stop_tokens,
                                      use_cache=not args.no_cache)
            for i, tokens in zip(chunk, results):
                outputs[i] = tokens
            bar.update(len(chunk))
    bar.close()
    return outputs


def amp_dtype(device, args):
    """The autocast dtype: bf16 on CUDA unless --dtype says otherwise; None (fp32) on CPU."""
    if device.type != "cuda":
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)


def autocast(device, args):
    dtype = amp_dtype(device, args)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# --- loading -------------------------------------------------------------------------------------


def load_model(args, device) -> tuple[GPT, str]:
    """The model to decode with, and what it is: the base with the adapter merged in (LoRA),
    inserted (Adapter^H / Adapter^L), or a plain checkpoint (--model alone)."""
    if not args.adapter:  # a preset is the pretrained base; a local checkpoint, fine-tuned
        kind = "base" if args.model.removeprefix("openai-community/") in PRESETS else "full"
        return GPT.from_pretrained(args.model).to(device).eval(), kind
    if not os.path.isfile(args.adapter):
        raise UserError(f"no such adapter file: {args.adapter}")
    meta = load_metadata(args.adapter)
    if meta.get("format") != lora.FORMAT:
        raise UserError(f"{args.adapter} is not an adapter saved by train.py")
    base = args.model or meta["base_model"]
    if not base:
        raise UserError(f"{args.adapter} does not name its base model; pass --model")
    model = GPT.from_pretrained(base)
    if meta["method"] == "lora":
        lora.load(model, args.adapter)
        lora.merge(model)  # W = W0 + (alpha/r) B A: plain Linear layers again (Sec. 4.1)
        print(f"merged LoRA ({lora.describe(model).split(':')[0]}) into {base}: the model now "
              "computes exactly what GPT-2 computes, at the same cost")
        return model.to(device).eval(), "lora"
    kind = adapter.load(model, args.adapter)["kind"]
    print(f"{adapter.describe(model)}: adapters cannot be merged; they run on every forward pass")
    return model.to(device).eval(), kind


def base_name(args) -> str:
    """The pretrained model under this one: named in the adapter, or in the run's config.json
    for a checkpoint train.py wrote (RUN_DIR/model)."""
    if args.adapter:
        return args.model or load_metadata(args.adapter).get("base_model", "")
    run_config = os.path.join(args.model, os.pardir, "config.json")
    if os.path.isfile(run_config):
        with open(run_config, encoding="utf-8") as f:
            return json.load(f).get("args", {}).get("model", args.model)
    return args.model


# --- the E2E test set ----------------------------------------------------------------------------


def evaluate(model, kind: str, args) -> dict:
    """Decode every distinct MR of the split once, write the predictions, score them."""
    groups = e2e.load_mrs(args.split, args.data)
    if args.limit:
        groups = groups[:args.limit]
    enc = e2e.tokenizer()
    start = time.time()
    outputs = decode(model, [e2e.prompt_tokens(mr) for mr, _ in groups], args)
    seconds = time.time() - start
    texts = [enc.decode(tokens).strip() for tokens in outputs]
    n_tokens = sum(len(tokens) for tokens in outputs)
    print(f"decoded {len(groups)} MRs ({n_tokens:,} tokens) in {seconds:.1f} s: "
          f"{len(groups) / seconds:.1f} MRs/s, {n_tokens / seconds:,.0f} tokens/s "
          f"(beam {args.beam}{', no KV cache' if args.no_cache else ''})")

    where = args.adapter or (args.model if os.path.isdir(args.model) else None)
    folder = args.out or (os.path.dirname(os.path.abspath(where.rstrip("/"))) if where else ".")
    stem = "predictions" + ("" if args.split == "test" else f"-{args.split}") + \
        (f"-first{args.limit}" if args.limit else "")
    path = os.path.join(folder, stem + ".tsv")
    os.makedirs(folder, exist_ok=True)
    table = io.StringIO()
    writer = csv.writer(table, delimiter="\t", lineterminator="\n")
    writer.writerow(["mr", "output"])
    writer.writerows((mr, text) for (mr, _), text in zip(groups, texts))
    write_atomic(path, table.getvalue())
    print(f"wrote {path}")

    try:
        scores = metrics.score([refs for _, refs in groups], texts, meteor=not args.no_meteor)
    except metrics.MeteorError as e:
        raise UserError(f"{e} (the predictions are saved in {path})") from None
    report = {"split": args.split, "mrs": len(groups), "predictions": path, "scores": scores,
              "decoding": {"beam": args.beam, "length_penalty": args.length_penalty,
                           "no_repeat_ngram": args.no_repeat_ngram, "seconds": seconds}}
    if scores["METEOR"] is None:
        report["meteor"] = metrics.meteor_note(not args.no_meteor)
    scores_path = os.path.join(folder, stem + ".scores.json")
    write_atomic(scores_path, json.dumps(report, indent=2))
    print(table3(scores, base_name(args), kind, args))
    if scores["METEOR"] is None:
        print(f"METEOR: {report['meteor']}")
    print(f"wrote {scores_path}")
    return scores


def table3(scores: dict, base: str, kind: str, args) -> str:
    """This run's row next to the paper's (BLEU, METEOR, ROUGE-L x100 as in Table 3)."""
    def cell(name, scale):  # one digit more than the paper prints
        return "n/a" if scores[name] is None else f"{scores[name] * scale:.{3 if scale == 1 else 2}f}"

    what = f"this run ({args.split}{f', first {args.limit} MRs' if args.limit else ''})"
    lines = ["| | BLEU | NIST | METEOR | ROUGE-L | CIDEr |", "|---|---|---|---|---|---|",
             f"| {what} | {cell('BLEU', 100)} | {cell('NIST', 1)} | {cell('METEOR', 100)} | "
             f"{cell('ROUGE_L', 100)} | {cell('CIDEr', 1)} |"]
    paper = PAPER.get((os.path.basename(base.rstrip("/")).removeprefix("openai-community/"), kind))
    if paper:
        name, *values = paper
        lines.append(f"| paper: {name}, test | " + " | ".join(str(v) for v in values) + " |")
    return "\n".join(lines)


# --- the latency of one forward pass (Table 1) ---------------------------------------------------

TABLE1 = {  # (batch, sequence) -> (|Theta| of the adapters, paper ms: base, Adapter^L, Adapter^H)
    (32, 512): (0.5e6, 1449.4, 1482.0, 1492.2),
    (16, 256): (11e6, 338.0, 354.0, 366.3),
    (1, 128): (11e6, 19.8, 23.9, 25.8),
}


def latency(args, device, config: GPTConfig | None = None) -> dict:
    """Forward-pass latency of GPT-2 (medium, as in the paper) and its variants, timed in turn,
    trial by trial and in a shuffled order, so drift on a busy machine and the position in the
    round hit them all alike. Random weights time like trained ones: no operation depends on
    the values."""
    import copy
    import functools

    grid = [tuple(int(x) for x in cell.split("x")) for cell in args.grid.split(",")]
    trials = args.trials or (100 if device.type == "cuda" else 10)
    warmup = args.warmup_trials or (10 if device.type == "cuda" else 2)
    config = config or GPTConfig.from_preset(args.latency_model, dropout=0.0)
    name = args.latency_model if config == GPTConfig.from_preset(args.latency_model, dropout=0.0) \
        else f"GPT-2 shape n_layer={config.n_layer} n_embd={config.n_embd}"
    torch.manual_seed(0)
    base = GPT(config).to(device).eval()

    @functools.lru_cache(maxsize=1)  # the variants for one adapter budget, built once
    def variants(budget):
        r_h = adapter.rank_for(budget, config.n_layer, config.n_embd, "houlsby")
        r_l = adapter.rank_for(budget, config.n_layer, config.n_embd, "lin")
        return {"base (FT)": base,
                "LoRA merged": lora.merge(lora.apply(copy.deepcopy(base), "q,v", r=4)),
                "LoRA unmerged": lora.apply(copy.deepcopy(base), "q,v", r=4),
                f"Adapter^L r={r_l}": adapter.apply(copy.deepcopy(base), "lin", r=r_l),
                f"Adapter^H r={r_h}": adapter.apply(copy.deepcopy(base), "houlsby", r=r_h)}

    results = []
    for batch, seq in grid:
        budget = TABLE1.get((batch, seq), (11e6,))[0]
        models = variants(budget)
        x = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        times = {name: [] for name in models}
        with torch.inference_mode(), autocast(device, args):
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
        results.append(row)
    report = {"model": name,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "trials": trials, "warmup": warmup,
              "dtype": str(amp_dtype(device, args) or torch.float32), "rows": results}
    print(latency_table(report))
    write_atomic(args.latency_out, json.dumps(report, indent=2))
    print(f"wrote {args.latency_out}")
    return report


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


# --- command line --------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Decode with a fine-tuned GPT-2 (E2E test set, one MR, or free text), or "
                    "time the forward pass (paper Table 1).",
        formatter_class=HelpFormatter)
    p.error = lambda message: fail(f"{message} (see --help)")
    p.add_argument("--adapter", help="adapter.safetensors from train.py (its base model is "
                                     "read from the file)")
    p.add_argument("--model", help="base model (overrides the adapter's), or a full fine-tuned "
                                   "checkpoint to decode without an adapter")
    p.add_argument("--data", help="folder with the E2E CSVs (default: $E2E_DATA_DIR, else data/e2e/, "
                                  "downloaded on first use)")
    p.add_argument("--split", default="test", choices=("test", "dev"), help="E2E split to decode")
    p.add_argument("--limit", type=int, default=0, help="decode only the first N MRs")
    p.add_argument("--out", help="folder for predictions and scores (default: the adapter's)")
    p.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR (it needs Java and pycocoevalcap, and about 20 s)")
    g = p.add_argument_group("decoding")
    g.add_argument("--beam", type=int, default=10, help="beam width (1: greedy)")
    g.add_argument("--length-penalty", type=float, default=0.9,
                   help="score = log p / length ** penalty (the original README used 0.8)")
    g.add_argument("--no-repeat-ngram", type=int, default=4, help="0 allows repeats")
    g.add_argument("--max-new-tokens", type=int, default=64, help="longest output, in tokens")
    g.add_argument("--batch-size", type=int, default=32, help="MRs decoded together")
    g.add_argument("--no-cache", action="store_true", help="recompute the whole sequence at "
                                                           "every step (slow; for comparison)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    g.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast on CUDA (auto: bf16); CPU runs fp32")
    g = p.add_argument_group("one input")
    g.add_argument("--mr", help="one meaning representation, e.g. 'name[The Eagle], eatType[pub]'")
    g.add_argument("--prompt", help="free text to continue (greedy, or sampled with "
                                    "--temperature)")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, help="sample among the most likely tokens holding p")
    g.add_argument("--seed", type=int, default=0, help="random seed of --temperature sampling")
    g = p.add_argument_group("latency (Table 1)")
    g.add_argument("--latency", action="store_true", help="time one forward pass of GPT-2 "
                                                          "medium and its adapted variants")
    g.add_argument("--grid", help="batch x sequence cells (default: the paper's 32x512,16x256,"
                                  "1x128 on CUDA; 1x32,1x8 on CPU)")
    g.add_argument("--trials", type=int, default=0, help="timed trials (default 100 CUDA, 10 CPU)")
    g.add_argument("--warmup-trials", type=int, default=0, help="(default 10 CUDA, 2 CPU)")
    g.add_argument("--latency-model", default="gpt2-medium", choices=list(PRESETS),
                   help="the shape timed (random weights)")
    g.add_argument("--latency-out", default="latency.json", help="where the JSON goes")
    return p.parse_args(argv)


def check(args) -> torch.device:
    for flag, value in {"--beam": args.beam, "--max-new-tokens": args.max_new_tokens,
                        "--batch-size": args.batch_size}.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.no_repeat_ngram < 0 or args.limit < 0 or args.temperature < 0:
        raise UserError("--no-repeat-ngram, --limit and --temperature must not be negative")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}, but this torch sees no CUDA GPU; use --device cpu")
    if device.type == "cpu" and args.dtype in ("bf16", "fp16"):
        raise UserError(f"--dtype {args.dtype} is mixed precision for CUDA; on CPU decoding runs "
                        "in fp32 (drop --dtype)")
    if args.latency:
        args.grid = args.grid or ("32x512,16x256,1x128" if device.type == "cuda" else "1x32,1x8")
        for cell in args.grid.split(","):
            if not (cell.count("x") == 1 and all(x.isdigit() and int(x) > 0
                                                 for x in cell.split("x"))):
                raise UserError(f"--grid {args.grid!r}: give cells like 1x128,16x256")
    elif not (args.adapter or args.model):
        raise UserError("give --adapter RUN_DIR/adapter.safetensors (or --model for a plain or "
                        "fully fine-tuned checkpoint)")
    return device


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = check(args)
        if args.latency:
            latency(args, device)
            return 0
        model, kind = load_model(args, device)
        if args.prompt is not None:
            enc = e2e.tokenizer()
            idx = torch.tensor([enc.encode(args.prompt)], device=device)
            generator = torch.Generator(device=device).manual_seed(args.seed)
            with autocast(device, args):
                out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k,
                                     args.top_p, stop_token=e2e.EOT, generator=generator)
            print(enc.decode(out[0].tolist()))
            return 0
        if args.mr is not None:
            try:
                prompt = e2e.prompt_tokens(args.mr)
            except ValueError as e:
                raise UserError(f"--mr {e}") from None
            print(e2e.tokenizer().decode(decode(model, [prompt], args, progress=False)[0]).strip())
            return 0
        evaluate(model, kind, args)
    except (UserError, e2e.DataError, metrics.InputError, ValueError, FileNotFoundError,
            RuntimeError) as e:
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
