"""Decode with a fine-tuned GPT-2: merge the adapter, beam-search the E2E test set, score it.

    python sample.py --adapter RUN_DIR/adapter.safetensors        # the Table 3 row for a run
    python sample.py --adapter RUN_DIR/adapter.safetensors --mr "name[The Eagle], eatType[pub]"
    python sample.py --model gpt2 --prompt "The Eagle is" --temperature 0.8 --top-p 0.9
    python sample.py --latency                                     # the Table 1 latency grid

Decoding follows the paper (Table 11): beam search (decoding.py) with 10 beams, length penalty
0.9 and no repeated 4-grams, at most 64 new tokens, stopping at <|endoftext|> or a blank line.
Each distinct MR of the test set (630) is decoded once; the predictions (MR, output) are written
beside the adapter before they are scored with the official E2E metrics (data/e2e/metrics.py).
`--latency` times the forward pass of the Table 1 variants (latency.py).
"""

import csv
import hashlib
import io
import json
import math
import os
import sys
import time

import torch

import adapter
import cli
import latency
import lora
import rundir
from checkpoint import ADAPTER_FORMAT, load_metadata, write_atomic
from cli import UserError
from data.e2e import metrics
from data.e2e import prepare as e2e
from decoding import decode, search_bytes
from model import GPT, PRESETS, GPTConfig

# Table 3 of the paper (E2E test set; BLEU, METEOR, ROUGE-L are x100 there, as printed below).
PAPER = {
    ("gpt2-medium", "lora"): ("GPT-2 M (LoRA, 0.35M)", 70.4, 8.85, 46.8, 71.8, 2.53),
    ("gpt2-medium", "full"): ("GPT-2 M (FT, 354.92M)", 68.2, 8.62, 46.2, 71.0, 2.47),
    ("gpt2-medium", "houlsby"): ("GPT-2 M (Adapter^H, 11.09M)", 67.3, 8.50, 46.0, 70.7, 2.44),
    ("gpt2-medium", "lin"): ("GPT-2 M (Adapter^L, 0.37M)", 66.3, 8.41, 45.0, 69.8, 2.40),
    ("gpt2-large", "lora"): ("GPT-2 L (LoRA, 0.77M)", 70.4, 8.89, 46.8, 72.0, 2.47),
    ("gpt2-large", "full"): ("GPT-2 L (FT, 774.03M)", 68.5, 8.78, 46.0, 69.9, 2.45),
}


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
    if meta.get("format") != ADAPTER_FORMAT:
        raise UserError(f"{args.adapter} is not an adapter saved by train.py")
    missing = [k for k in ("method", "base_model") if k not in meta]
    if "method" in missing or (missing and not args.model):
        raise UserError(f"{args.adapter}: its metadata lacks {' and '.join(missing)}, so it is "
                        "damaged or was not written by train.py"
                        + ("; pass --model with its base model" if "method" not in missing else ""))
    base = args.model or meta["base_model"]
    if not base:
        raise UserError(f"{args.adapter} does not name its base model; pass --model")
    if not args.model and os.sep in base and not os.path.exists(base):
        raise UserError(f"the base model {base} recorded in {args.adapter} does not exist here; "
                        "pass --model with its path (or a preset name)")
    model = GPT.from_pretrained(base)
    if meta["method"] == "lora":
        lora.load(model, args.adapter, check_base=not args.any_base)
        lora.merge(model)  # W = W0 + (alpha/r) B A: plain Linear layers again (Sec. 4.1)
        print(f"merged LoRA ({lora.describe(model).split(':')[0]}) into {base}: the model now "
              "computes exactly what GPT-2 computes, at the same cost")
        return model.to(device).eval(), "lora"
    kind = adapter.load(model, args.adapter, check_base=not args.any_base)["kind"]
    print(f"{adapter.describe(model)}: adapters cannot be merged; they run on every forward pass")
    return model.to(device).eval(), kind


def run_config(args) -> dict:
    """The settings train.py recorded for this adapter or model (RUN_DIR/config.json), or {}."""
    where = args.adapter or args.model
    if not where or not os.path.exists(where):
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(where.rstrip("/"))), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("args", {})
    except (OSError, ValueError):
        return {}


def base_name(args) -> str:
    """The pretrained model under this one: named in the adapter, or in the run's config.json
    for a checkpoint train.py wrote (RUN_DIR/model)."""
    if args.adapter:
        return args.model or load_metadata(args.adapter).get("base_model", "")
    return run_config(args).get("model", args.model)


# --- the E2E test set ----------------------------------------------------------------------------


def decoding(args) -> dict:
    """The decoding flags as decode()'s keyword arguments."""
    return dict(beam=args.beam, length_penalty=args.length_penalty,
                no_repeat_ngram=args.no_repeat_ngram, max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size, use_cache=not args.no_cache, amp_dtype=args.amp_dtype)


def output_text(enc, tokens: list[int]) -> str:
    """A decoded output, post-processed as the released decode script does (src/gpt2_decode.py):
    cut at <|endoftext|> or a blank line, stripped."""
    return enc.decode(tokens).split("<|endoftext|>")[0].split("\n\n")[0].strip()


def output_stem(args) -> str:
    """Where the predictions go, named by what was decoded: e.g. RUN_DIR/predictions-dev-first5."""
    where = args.adapter or (args.model if os.path.isdir(args.model) else None)
    folder = args.out or (os.path.dirname(os.path.abspath(where.rstrip("/"))) if where else ".")
    return os.path.join(folder, "predictions" + ("" if args.format == "paper" else
                                                 f"-{args.format}")
                        + ("" if args.split == "test" else f"-{args.split}")
                        + (f"-first{args.limit}" if args.limit else ""))


def claim_output(args) -> rundir.Claim:
    """Before any work: the folder the predictions go to, owned by this process from here on
    (rundir.py); earlier predictions are kept unless --force."""
    stem = output_stem(args)
    cli.check_writable(os.path.dirname(stem))
    owner = rundir.claim(os.path.dirname(stem), "sample.py", "wait for it to end, or write the "
                         "predictions elsewhere with --out DIR")
    if os.path.exists(stem + ".tsv") and not args.force:
        owner.abandon()
        owner.release()
        raise UserError(f"{stem}.tsv already holds predictions; pass --force to replace them, or "
                        "--out DIR to write elsewhere")
    for path in (stem + ".tsv.tmp", stem + ".scores.json.tmp"):  # an interrupted write's
        if os.path.exists(path):
            os.remove(path)
    return owner


def check_search(model, args, prompts: list[list[int]], device):
    """Refuse, before decoding, a search that cannot run: longer than the model's positions,
    more beams than tokens to choose from, or more memory than is free here."""
    longest, config = max(map(len, prompts)), model.config
    if longest + args.max_new_tokens > config.block_size:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} after a prompt of {longest} "
                        f"tokens is more than the model's {config.block_size} positions")
    if args.beam > config.vocab_size:
        raise UserError(f"--beam {args.beam:,} is more than the {config.vocab_size:,} tokens each "
                        "step chooses from")
    rows = min(args.batch_size, len(prompts))
    need, free = search_bytes(config, rows, args.beam, longest, args.max_new_tokens), \
        cli.free_memory(device)
    if free is not None and need > free:
        raise UserError(f"--beam {args.beam:,}" + (f" with --batch-size {rows}" if rows > 1 else "")
                        + f" needs about {need / 1e9:,.1f} GB for the search, more than the "
                        f"{free / 1e9:,.1f} GB free here; lower --beam"
                        + (" or --batch-size" if rows > 1 else ""))


def partial(path: str, settings: dict, force: bool) -> dict[int, str]:
    """The outputs a decode with the same settings already wrote to path (a JSONL file that
    grows as MRs finish); another decode's file is refused, or with --force started afresh."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    done = {}
    try:
        same = json.loads(lines[0]) == {"settings": settings}
    except ValueError:
        same = False
    if not same:
        if not force:
            raise UserError(f"{path} holds an unfinished decode with other settings; pass --force "
                            "to discard it")
        os.remove(path)
        return {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
            done[int(record["i"])] = str(record["output"])
        except (ValueError, KeyError, TypeError):  # the last line, cut short by a kill
            continue
    return done


def evaluate(model, kind: str, args, device) -> dict:
    """Decode each distinct MR of the split once, streaming the outputs to a .part file (an
    interrupted decode resumes there), write the predictions, then score them."""
    args.preset = preset_of(model, args)
    groups, source = e2e.eval_groups(args.split, args.data, args.format)
    if args.limit:
        groups = groups[:args.limit]
    enc = e2e.tokenizer()
    prompts = [enc.encode(ctx) + [e2e.EOT] for _, ctx, _ in groups]
    check_search(model, args, prompts, device)
    stem = output_stem(args)
    settings = decode_settings(args, len(groups))
    part = args.part = stem + ".tsv.part"  # (args.part: what a Ctrl-C keeps)
    texts = partial(part, settings, args.force)
    todo = [i for i in range(len(groups)) if i not in texts]
    if texts:
        print(f"resuming: {len(texts)} of {cli.plural(len(groups), 'MR')} were decoded already "
              f"({part})")
    with open(part, "a", encoding="utf-8") as f:
        if not texts:
            f.write(json.dumps({"settings": settings}) + "\n")

        def write(chunk, outputs):  # as each batch finishes
            for j, tokens in zip(chunk, outputs):
                texts[todo[j]] = output_text(enc, tokens)
                f.write(json.dumps({"i": todo[j], "output": texts[todo[j]]}) + "\n")
            f.flush()

        start = time.time()
        outputs = decode(model, [prompts[i] for i in todo], **decoding(args), on_batch=write)
        seconds = time.time() - start
    n_tokens = sum(len(tokens) for tokens in outputs)
    print(f"decoded {cli.plural(len(todo), 'MR')} ({n_tokens:,} tokens) in {seconds:.1f} s: "
          f"{len(todo) / max(seconds, 1e-9):.1f} MRs/s, {n_tokens / max(seconds, 1e-9):,.0f} "
          f"tokens/s (beam {args.beam}{', no KV cache' if args.no_cache else ''})")
    table = io.StringIO()
    writer = csv.writer(table, delimiter="\t", lineterminator="\n")
    writer.writerow(["mr", "output"])
    writer.writerows((mr, texts[i]) for i, (mr, _, _) in enumerate(groups))
    write_atomic(stem + ".tsv", table.getvalue())
    os.remove(part)
    print(f"wrote {stem}.tsv")
    report = {"split": args.split, "format": args.format, "references": source,
              "mrs": len(groups), "predictions": stem + ".tsv",
              "decoding": {**settings, "seconds": seconds}}
    return score(report, [refs for _, _, refs in groups], [texts[i] for i in range(len(groups))],
                 kind, args, stem + ".scores.json")


def decode_settings(args, mrs: int) -> dict:
    """What makes two decodes the same: an unfinished one resumes only with equal settings."""
    def sha256(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    return {"model": base_name(args), "adapter": args.adapter and os.path.abspath(args.adapter),
            "adapter_sha256": args.adapter and sha256(args.adapter), "mrs": mrs,
            **{k: vars(args)[k] for k in ("split", "format", "beam", "length_penalty",
                                          "no_repeat_ngram", "max_new_tokens", "dtype")}}


def score(report: dict, refs: list, texts: list, kind: str, args, scores_path: str) -> dict:
    """The five metrics, printed next to the paper's row and saved beside the predictions."""
    try:
        scores = metrics.score(refs, texts, meteor=not args.no_meteor)
    except metrics.MeteorError as e:
        raise UserError(f"{e} (the predictions are saved in {report['predictions']})") from None
    report["scores"] = scores
    if scores["METEOR"] is None:
        report["meteor"] = metrics.meteor_note(not args.no_meteor)
    write_atomic(scores_path, json.dumps(report, indent=2))
    print(f"references: {report['references']}")
    print(table3(scores, args.preset, kind, args))
    if scores["METEOR"] is None:
        print(f"METEOR: {report['meteor']}")
    print(f"wrote {scores_path}")
    return scores


def preset_of(model, args) -> str | None:
    """The official GPT-2 size this model was fine-tuned from, known by its shape (so a local
    copy of gpt2-medium counts, whatever its folder is called); None for a model trained from
    scratch (train.py --random-init) or of another shape."""
    if run_config(args).get("random_init"):
        return None
    c = model.config
    return next((name for name, shape in PRESETS.items() if c.vocab_size == 50257
                 and c.block_size == 1024 and all(getattr(c, k) == v for k, v in shape.items())),
                None)


def table3(scores: dict, preset: str | None, kind: str, args) -> str:
    """This run's row next to the paper's (BLEU, METEOR, ROUGE-L x100 as in Table 3). Only the
    paper format is comparable with Table 3; the official format is the challenge's own text."""
    def cell(name, scale):  # one digit more than the paper prints
        return "n/a" if scores[name] is None else f"{scores[name] * scale:.{3 if scale == 1 else 2}f}"

    what = (f"this run ({args.split}{f', first {args.limit} MRs' if args.limit else ''}"
            f"{', official text: not comparable with Table 3' if args.format == 'official' else ''})")
    lines = ["| | BLEU | NIST | METEOR | ROUGE-L | CIDEr |", "|---|---|---|---|---|---|",
             f"| {what} | {cell('BLEU', 100)} | {cell('NIST', 1)} | {cell('METEOR', 100)} | "
             f"{cell('ROUGE_L', 100)} | {cell('CIDEr', 1)} |"]
    paper = PAPER.get((preset, kind))
    if paper:
        name, *values = paper
        lines.append(f"| paper: {name}, test | " + " | ".join(str(v) for v in values) + " |")
    return "\n".join(lines)


# --- the latency of one forward pass (Table 1) ---------------------------------------------------


def run_latency(args, device):
    """Time the Table 1 variants (latency.py), print the table, write the JSON."""
    config = GPTConfig.from_preset(args.latency_model, dropout=0.0)
    report = latency.measure(config, args.grid, device, trials=args.trials, warmup=args.warmup_trials,
                             amp_dtype=args.amp_dtype,
                             name=args.latency_model)
    print(latency.latency_table(report))
    os.makedirs(os.path.dirname(os.path.abspath(args.latency_out)), exist_ok=True)
    write_atomic(args.latency_out, json.dumps(report, indent=2))
    print(f"wrote {args.latency_out}")


def latency_out(args, device) -> str:
    """--latency-out, checked before the measurement; by default a new file in runs/, named by
    what it measures."""
    path = args.latency_out or os.path.join("runs", f"latency-{args.latency_model}-{device.type}-"
                                                    f"{time.strftime('%Y%m%d-%H%M%S')}.json")
    cli.check_writable_file(path, "--latency-out")
    return path


# --- command line --------------------------------------------------------------------------------


def parse_args(argv=None):
    p = cli.parser("sample.py", description="Decode with a fine-tuned GPT-2 (E2E test set, one "
                   "MR, or free text), or time the forward pass (paper Table 1).")
    p.add_argument("--adapter", help="adapter.safetensors from train.py (its base model is "
                                     "read from the file)")
    p.add_argument("--model", help="base model (overrides the adapter's), or a full fine-tuned "
                                   "checkpoint to decode without an adapter")
    p.add_argument("--data", help="folder with the E2E CSVs (default: $E2E_DATA_DIR, else data/e2e/, "
                                  "downloaded on first use)")
    p.add_argument("--split", default="test", choices=("test", "dev"), help="E2E split to decode")
    p.add_argument("--format", choices=list(e2e.FORMATS),
                   help="paper: the released pre-tokenized text, scored against the released "
                        "references (comparable with Table 3); official: the raw CSVs (default: "
                        "the run's own, else paper)")
    p.add_argument("--limit", type=int, default=0, help="decode only the first N MRs")
    p.add_argument("--out", help="folder for predictions and scores (default: the adapter's)")
    p.add_argument("--force", action="store_true",
                   help="replace earlier predictions (and discard an unfinished decode with other "
                        "settings)")
    p.add_argument("--any-base", action="store_true",
                   help="load the adapter even onto a base whose weights are not the ones it was "
                        "trained on (the check compares a fingerprint of those weights)")
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
                   help="auto: fp32, as the released code decodes; bf16/fp16: autocast on CUDA")
    g = p.add_argument_group("one input")
    g.add_argument("--mr", help="one meaning representation, e.g. 'name[The Eagle], eatType[pub]'")
    g.add_argument("--prompt", help="free text to continue (greedy, or sampled with "
                                    "--temperature); <|endoftext|> in it is GPT-2's end-of-text "
                                    "token")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, help="sample among the most likely tokens holding p")
    g.add_argument("--seed", type=int, default=0, help="random seed of --temperature sampling")
    g = p.add_argument_group("latency (Table 1)")
    g.add_argument("--latency", action="store_true", help="time one forward pass of GPT-2 "
                                                          "medium and its adapted variants")
    g.add_argument("--grid", help="batch x sequence cells (default: the paper's 32x512,16x256,"
                                  "1x128 on CUDA; 1x32,1x8 on CPU)")
    g.add_argument("--trials", type=int, help="timed trials (default 100 CUDA, 10 CPU)")
    g.add_argument("--warmup-trials", type=int, help="untimed trials first (default 10 CUDA, "
                                                     "2 CPU)")
    g.add_argument("--latency-model", default="gpt2-medium", choices=list(PRESETS),
                   help="the shape timed (random weights)")
    g.add_argument("--latency-out", help="where the JSON goes (default: a new "
                                         "runs/latency-<model>-<device>-<time>.json)")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = p.parse_args(argv)
    args.given = cli.given(p, argv)  # the flags typed, which check() holds against the mode
    return args


# What each way of running sample.py reads (besides --device and --dtype): a flag typed for
# another one would do nothing, so it is refused instead of ignored.
LOADS = {"model", "adapter", "any_base"}
BEAM = {"beam", "length_penalty", "no_repeat_ngram", "max_new_tokens", "no_cache"}
READS = {
    "--latency": {"latency", "grid", "trials", "warmup_trials", "latency_model", "latency_out"},
    "--prompt": LOADS | {"prompt", "temperature", "top_k", "top_p", "seed", "max_new_tokens"},
    "--mr": LOADS | BEAM | {"mr", "format"},
    "the test set": LOADS | BEAM | {"data", "split", "format", "limit", "out", "force",
                                    "no_meteor", "batch_size"},
}


def check_flags(args):
    """Refuse flags that would do nothing in the mode the command line asks for."""
    if args.prompt is not None and args.mr is not None:
        raise UserError("give --prompt (free text) or --mr (one MR), not both")
    mode = ("--latency" if args.latency else "--prompt" if args.prompt is not None
            else "--mr" if args.mr is not None else "the test set")
    if unused := [name for name in args.given if name not in READS[mode] | {"device", "dtype"}]:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise UserError(f"{flags} {'does' if len(unused) == 1 else 'do'} nothing with {mode}; "
                        f"drop {'it' if len(unused) == 1 else 'them'}")
    if args.temperature == 0 and (sampling := [f for f in ("top_k", "top_p", "seed")
                                               if f in args.given]):
        raise UserError(f"{', '.join('--' + f.replace('_', '-') for f in sampling)} only act "
                        "when sampling: add --temperature (0, the default, is greedy)")


def check(args) -> torch.device:
    """Refuse bad flags before anything is loaded; returns the device."""
    for flag, value in {"--beam": args.beam, "--max-new-tokens": args.max_new_tokens,
                        "--batch-size": args.batch_size}.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.no_repeat_ngram < 0 or args.limit < 0 or args.temperature < 0:
        raise UserError("--no-repeat-ngram, --limit and --temperature must not be negative")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty: give some text to continue")
    check_flags(args)
    if args.mr is not None:
        try:
            e2e.check_mr(args.mr)
        except ValueError as e:
            raise UserError(f"--mr {e}") from None
    for flag, value in {"--length-penalty": args.length_penalty,
                        "--temperature": args.temperature}.items():
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    device = cli.pick_device(args.device)
    # fp32 unless --dtype says otherwise, as the released code decodes
    args.amp_dtype = cli.amp_dtype(device, args.dtype, "decoding", auto=None)
    if args.latency:
        check_latency(args, device)
    elif not (args.adapter or args.model):
        raise UserError("give --adapter RUN_DIR/adapter.safetensors (or --model for a plain or "
                        "fully fine-tuned checkpoint)")
    args.format = args.format or run_config(args).get("format", "paper")
    return device


def check_latency(args, device):
    """--latency's flags, with the defaults for the device filled in; the output checked."""
    try:
        args.grid = latency.parse_grid(args.grid or latency.DEFAULT_GRID[device.type])
    except ValueError as e:
        raise UserError(e) from None
    positions = GPTConfig.from_preset(args.latency_model).block_size
    if too_long := [f"{b}x{t}" for b, t in args.grid if t > positions]:
        raise UserError(f"--grid {', '.join(too_long)}: longer than {args.latency_model}'s "
                        f"{positions} positions")
    if args.trials is not None and args.trials < 1 or (args.warmup_trials or 0) < 0:
        raise UserError("--trials must be at least 1 and --warmup-trials not negative")
    args.trials = args.trials or (100 if device.type == "cuda" else 10)
    args.warmup_trials = (10 if device.type == "cuda" else 2) if args.warmup_trials is None \
        else args.warmup_trials
    args.latency_out = latency_out(args, device)


def one_input(model, args, device):
    """--prompt: continue free text (greedy, or sampled); --mr: beam-search one MR."""
    enc = e2e.tokenizer()
    if args.mr is not None:
        prompt = e2e.prompt_tokens(args.mr, args.format)
        check_search(model, args, [prompt], device)
        print(output_text(enc, decode(model, [prompt], **decoding(args),
                                      progress=False)[0]))
        return
    idx = torch.tensor([enc.encode(args.prompt, allowed_special={"<|endoftext|>"})],
                       device=device)
    if idx.size(1) >= model.config.block_size:
        raise UserError(f"--prompt has {idx.size(1)} tokens; the model reads at most "
                        f"{model.config.block_size - 1} before it writes")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with cli.autocast(device, args.amp_dtype):
        out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k,
                             args.top_p, stop_token=e2e.EOT, generator=generator)
    print(enc.decode(out[0].tolist()))


def kept(args) -> str:
    """What a Ctrl-C leaves: the outputs decoded so far, resumed by the same command."""
    part = getattr(args, "part", None)
    if part and os.path.exists(part):
        with open(part, encoding="utf-8") as f:
            done = max(0, sum(1 for line in f if line.endswith("\n")) - 1)  # (the settings line)
        return (f"stopped; the {cli.plural(done, 'MR')} decoded so far "
                f"{'is' if done == 1 else 'are'} kept in {part}: run the same command again to "
                "go on from there")
    if part and os.path.exists(output_stem(args) + ".tsv"):
        return f"stopped while scoring; the predictions are saved in {output_stem(args)}.tsv"
    return "stopped; nothing was written"


def main(argv=None) -> int:
    args = parse_args(argv)
    owner = None  # the output folder's lock, while decoding the test set
    try:
        device = check(args)
        if args.latency:
            run_latency(args, device)
            return 0
        if args.prompt is None and args.mr is None:
            owner = claim_output(args)
        model, kind = load_model(args, device)
        if owner is None:
            one_input(model, args, device)
        else:
            evaluate(model, kind, args, device)
    except (*cli.USER_ERRORS, KeyboardInterrupt) as e:
        if owner is not None:  # a folder made for this decode goes again if it stayed empty
            owner.abandon()
        if isinstance(e, KeyboardInterrupt):
            cli.interrupted("sample.py", kept(args))
        cli.fail("sample.py", e)
    finally:
        if owner is not None:
            owner.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
