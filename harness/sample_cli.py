"""What sample.py needs besides its lesson (load, merge, decode, score): its flag rules, where the
predictions go and the lock on their folder, the paper's row beside the scores, several adapters
on one base (multitask.py), the latency table (latency.py), and what a Ctrl-C keeps.

A flag the chosen mode would ignore (--beam with --prompt, --top-k without --temperature) is
refused, not ignored (READS says what each mode reads). Predictions go beside the adapter (or in
--out), named by what was decoded (predictions-dev-first5.tsv), never over earlier ones without
--force. Several --adapter files (or a folder of them) share one base model: each decodes its own
task's split, merged in turn (Sec. 4.1) or, with --mix, in mixed batches (Sec. 4.2).
"""

import argparse
import glob
import json
import math
import os
import time

import torch

from data.e2e.prepare import FORMATS
from data.task import open_task, tokenizer
from harness import evaluation
from harness.evaluation import Decoding
from model import GPT, GPTConfig
from paper import latency, multitask
from paper.decoding import decode
from plumbing import cli, distributed, hardware, rundir
from plumbing.checkpoint import ADAPTER_FORMAT, load_metadata, write_atomic
from plumbing.errors import UserError

# --- the adapter, the run, where the predictions go ------------------------------------------


def adapter_base(path: str, model: str | None) -> tuple[dict, str]:
    """An adapter file's metadata, and the base model to load it onto: --model, else the one the
    file names."""
    if not os.path.isfile(path):
        raise UserError(f"no such adapter file: {path}")
    if not path.endswith(".safetensors"):
        raise UserError(f"{path} is not an adapter: pass train.py's adapter.safetensors or its "
                        "run folder")
    meta = load_metadata(path)
    if meta.get("format") != ADAPTER_FORMAT:
        raise UserError(f"{path} is not an adapter saved by train.py")
    missing = [k for k in ("method", "base_model") if k not in meta]
    if "method" in missing or (missing and not model):
        raise UserError(f"{path}: its metadata lacks {' and '.join(missing)}, so it is "
                        "damaged or was not written by train.py"
                        + ("; pass --model with its base model" if "method" not in missing else ""))
    base = model or meta["base_model"]
    if not base:
        raise UserError(f"{path} does not name its base model; pass --model")
    if not model and os.sep in base and not os.path.exists(base):
        raise UserError(f"the base model {base} recorded in {path} does not exist here; "
                        "pass --model with its path (or a preset name)")
    return meta, base


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


def output_stem(args) -> str:
    """Where the predictions go, named by what was decoded: e.g. RUN_DIR/predictions-dev-first5
    (a QLoRA adapter decoded over NF4 or the full-precision base: predictions-nf4, -base)."""
    where = args.adapter or (args.model if os.path.isdir(args.model) else None)
    folder = args.out or (os.path.dirname(os.path.abspath(where.rstrip("/"))) if where else ".")
    return os.path.join(folder, "predictions" + args.task.suffix
                        + ("" if args.split == "test" else f"-{args.split}")
                        + (f"-first{args.limit}" if args.limit else "")
                        + (f"-{args.qlora_merge}" if getattr(args, "qlora_merge", None)
                           not in (None, "dequantized") else ""))


def claim_outputs(stems: list[str], force: bool) -> list[rundir.Claim]:
    """Before any work: the folders the predictions go to, owned by this process from here on
    (rundir.py); earlier predictions are kept unless --force."""
    owners = []
    try:
        for folder in dict.fromkeys(os.path.dirname(stem) for stem in stems):
            cli.check_writable(folder)
            owners.append(rundir.claim(folder, "sample.py", "wait for it to end, or write the "
                                       "predictions elsewhere with --out DIR"))
        for stem in stems:  # (a decode stopped while scoring: the same command scores it)
            if os.path.exists(stem + ".tsv") and not force and not evaluation.scoring_left(stem):
                raise UserError(f"{stem}.tsv already holds predictions; pass --force to replace "
                                "them, or --out DIR to write elsewhere")
    except BaseException:
        for owner in owners:
            owner.abandon()
            owner.release()
        raise
    for stem in stems:
        for path in (stem + ".tsv.tmp", stem + ".scores.json.tmp"):  # an interrupted write's
            if os.path.exists(path):
                os.remove(path)
    return owners


def decoding(args) -> Decoding:
    """The decoding flags, as evaluation.Decoding."""
    return Decoding(beam=args.beam, length_penalty=args.length_penalty,
                    no_repeat_ngram=args.no_repeat_ngram, max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size, use_cache=not args.no_cache, dtype=args.dtype,
                    amp_dtype=args.amp_dtype)


def split_job(model, args, device, world, mixed: bool = False) -> evaluation.Job:
    """The split to decode as the flags say (evaluation.Job): the task's, into output_stem."""
    return evaluation.Job(model, task=args.task, split=args.split, limit=args.limit,
                          stem=output_stem(args), decoding=decoding(args),
                          what={**evaluation.identity(base_name(args), args.adapter),
                                **({"qlora_merge": args.qlora_merge} if args.qlora_merge else {})},
                          force=args.force, device=device, world=world, mixed=mixed)


# --- the scores beside the paper's row (Table 3, 13 or 14) --------------------------------------


# train.py's --method (the paper's rows' keys) by what an adapter file holds (Adapter^H, Adapter^L)
METHODS = {"lora": "lora", "full": "full", "houlsby": "adapter_h", "lin": "adapter_l"}


def print_report(report: dict, model, kind: str, args):
    """The scores next to the paper's row (where the task has one), and the task's notes."""
    size = None if run_config(args).get("random_init") else args.task.paper_size(model.config)
    print(f"references: {report['references']}")
    print(paper_table(report["scores"], args.task.table, size, kind, args))
    for line in args.task.notes(report):
        print(line)
    if "meteor" in report:
        print(f"METEOR: {report['meteor']}")


def paper_table(scores: dict, table, size: str | None, kind: str, args) -> str:
    """This run's row next to the paper's (data/task.py's PaperTable: its columns, printed as
    the paper prints them, with one digit more). Only E2E's paper format is comparable with
    Table 3; the official format is the challenge's own text."""
    def cell(key):
        return "n/a" if scores.get(key) is None else table.cell(key, scores[key], extra=1)

    what = (f"this run ({args.split}"
            + (f", first {cli.plural(args.limit, args.task.unit)}" if args.limit else "")
            + (", official text: not comparable with Table 3" if args.format == "official" else "")
            + ")")
    lines = ["| | " + " | ".join(c.header for c in table.columns.values()) + " |",
             "|---" * (len(table.columns) + 1) + "|",
             f"| {what} | " + " | ".join(map(cell, table.columns)) + " |"]
    method = METHODS.get(kind)
    if paper := table.paper_row(size, method):
        row = table.rows[size, method]
        lines.append(f"| paper: {row['name']}, {row['params']}, test | {paper} |")
    return "\n".join(lines)


# --- several adapters on one base (multitask.py) ---------------------------------------------


def adapter_files(given: list[str]) -> list[str]:
    """--adapter's files: each one given, a run folder's adapter.safetensors, and for another
    folder the adapters in it (*.safetensors) and in the run folders inside it
    (*/adapter.safetensors)."""
    files = []
    for path in given:
        if not os.path.isdir(path):
            files.append(path)
            continue
        if rundir.is_run_folder(path):
            adapter, model = rundir.run_result(path)
            if model:  # (alone and without --model, check() has taken it as --model)
                raise UserError(f"--adapter {path} is a full fine-tuning run: its result is a "
                                f"model, not an adapter; decode it alone as --model {model}")
            files.append(adapter)
            continue
        inside = sorted(glob.glob(os.path.join(path, "*.safetensors"))
                        + glob.glob(os.path.join(path, "*", "adapter.safetensors")))
        if not inside:
            raise UserError(f"--adapter {path} is a folder without adapters (*.safetensors, or "
                            "run folders with adapter.safetensors)")
        files += inside
    if len(set(map(os.path.abspath, files))) < len(files):
        raise UserError("an adapter is given twice: give each once")
    return files


def adapter_name(path: str) -> str:
    """What an adapter is called in the output: its file's name, or its run folder's."""
    stem = os.path.basename(path).removesuffix(".safetensors")
    return stem if stem != "adapter" else os.path.basename(os.path.dirname(os.path.abspath(path)))


def check_several(args):
    """args.served: each adapter's own view of args (its task: --data's, else its run's; the
    task's decoding defaults; where its predictions go), the input or split checked for each."""
    if args.prompt is not None:
        raise UserError("--prompt continues text with one model: give one --adapter (several "
                        "decode a task's inputs, --mr or --context)")
    test_set = args.mr is None and args.context is None  # (one input: a row per adapter)
    if args.mix and test_set and args.batch_size < len(args.adapters):
        raise UserError(f"--mix with {len(args.adapters)} adapters needs --batch-size "
                        f"{len(args.adapters)} or more, so that a batch can hold a row of each "
                        f"task (it is {args.batch_size}); raise it, or drop --mix")
    args.served = []
    for path in args.adapters:
        view = argparse.Namespace(**vars(args))
        view.adapter = path
        check_task(view)
        args.served.append(view)
    penalties = {view.task.name: view.length_penalty for view in args.served}
    if args.mix and test_set and len(set(penalties.values())) > 1:
        raise UserError("--mix decodes every task in one beam search, with one length penalty; "
                        "these tasks' defaults differ ("
                        + ", ".join(f"{name} {p}" for name, p in penalties.items())
                        + "): give --length-penalty, or drop --mix")
    stems = [output_stem(view) for view in args.served]
    if len(set(stems)) < len(stems):  # adapters side by side in one folder, or one --out
        for view in args.served:
            view.out = os.path.join(args.out or os.path.dirname(os.path.abspath(view.adapter)),
                                    adapter_name(view.adapter))
        stems = [output_stem(view) for view in args.served]
        if len(set(stems)) < len(stems):
            raise UserError("two adapters have the same name, so their predictions would go to "
                            "one file: rename one, or decode them separately")


def load_several(args, device) -> multitask.Adapters:
    """The base model (the first adapter's, or --model) on the device, with every adapter kept
    beside it (multitask.Adapters: each checked against this base, LoRA only)."""
    _, base = adapter_base(args.adapters[0], args.model)
    model = GPT.from_pretrained(base).to(device).eval()
    tasks = multitask.Adapters(model, args.adapters, check_base=not args.any_base)
    how = ("in mixed batches: W0 unmerged, each row adds its own adapter's B A x" if args.mix
           else "one at a time, merged into W (W0 + B A, then W0 again: Sec. 4.1)")
    print(f"{cli.plural(len(tasks), 'LoRA adapter')} on {base}, served {how}")
    if args.mix:
        tasks.mix()
    return tasks


def serve_test_sets(tasks: multitask.Adapters, args, device, world):
    """Each adapter decodes and scores its task's split: merged in turn, or all in mixed batches."""
    model, views = tasks.model, args.served
    if not args.mix:
        for i, view in enumerate(views):
            print(f"\n{adapter_name(view.adapter)} ({view.adapter}):")
            with tasks.merged_into(i):
                report, = evaluation.run_jobs(model, [split_job(model, view, device, world)],
                                              meteor=not args.no_meteor, world=world)
                if report is not None:
                    print_report(report, model, "lora", view)
        return
    jobs = [split_job(model, view, device, world, mixed=True) for view in views]
    reports = evaluation.run_jobs(model, jobs, meteor=not args.no_meteor, world=world,
                                  tasks=list(range(len(jobs))))
    for view, report in zip(views, reports):
        if report is not None:
            print(f"\n{adapter_name(view.adapter)} ({view.adapter}):")
            print_report(report, model, "lora", view)


def serve_one_input(tasks: multitask.Adapters, args, device):
    """--mr / --context: each adapter's answer to the one input, merged in turn or as the rows
    of one mixed batch."""
    enc, model, views = tokenizer(), tasks.model, args.served
    text, mr = (args.mr, True) if args.mr is not None else (args.context, False)
    prompts = [view.task.prompt(text, mr=mr) for view in views]
    for view, prompt in zip(views, prompts):
        evaluation.check_search(model, decoding(view), [prompt], device)
    if args.mix:  # one search: row i is adapter i's, with its task's length and stop tokens
        settings = {**decoding(views[0]).kwargs(), "batch_size": len(views),
                    "max_new_tokens": [view.max_new_tokens for view in views]}
        outputs = decode(model, prompts, **settings, tasks=list(range(len(views))),
                         stop_tokens=[view.task.stop_tokens for view in views], progress=False)
    else:
        outputs = []
        for i, (view, prompt) in enumerate(zip(views, prompts)):
            with tasks.merged_into(i):
                outputs += decode(model, [prompt], **decoding(view).kwargs(),
                                  stop_tokens=view.task.stop_tokens, progress=False)
    width = max(len(adapter_name(view.adapter)) for view in views)
    for view, tokens in zip(views, outputs):
        print(f"{adapter_name(view.adapter):<{width}}  "
              f"{evaluation.output_text(enc, tokens, view.task.blank_line_ends)}")


def serve_several(args, device, world, test_set: bool):
    """Several adapters on one base: the base loaded (rank 0 first) with every adapter beside it,
    then each adapter's own split decoded and scored, or each one's answer to the one input."""
    tasks = world.agree(load_several, args, device, main_first=True)
    if test_set:
        serve_test_sets(tasks, args, device, world)
    else:
        serve_one_input(tasks, args, device)


# --- the latency of one forward pass (Table 1) -----------------------------------------------


def run_latency(args, device):
    """Time the Table 1 variants (latency.py), print the table, write the JSON."""
    config = GPTConfig.from_preset(args.latency_model, dropout=0.0)
    report = latency.measure(config, args.grid, device, trials=args.trials,
                             warmup=args.warmup_trials, amp_dtype=args.amp_dtype,
                             name=args.latency_model, say=lambda line: print(line, flush=True))
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


def check_latency(args, device):
    """--latency's flags, with the defaults for the device filled in; the output checked."""
    try:
        args.grid = latency.parse_grid(
            args.grid or latency.DEFAULT_GRID["cuda" if device.type == "cuda" else "cpu"])
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


# --- the flags: what each mode reads, and their checks ---------------------------------------


# What each way of running sample.py reads (besides --device and --dtype): a flag typed for
# another one would do nothing, so it is refused instead of ignored.
LOADS = {"model", "adapter", "any_base", "qlora_merge"}
SERVES = {"mix"}  # several adapters
BEAM = {"beam", "length_penalty", "no_repeat_ngram", "max_new_tokens", "no_cache"}
READS = {
    "--latency": {"latency", "grid", "trials", "warmup_trials", "latency_model", "latency_out"},
    "--prompt": LOADS | {"prompt", "temperature", "top_k", "top_p", "seed", "max_new_tokens"},
    "--mr": LOADS | BEAM | SERVES | {"mr", "format"},
    "--context": LOADS | BEAM | SERVES | {"context", "data", "format"},
    "the test set": LOADS | BEAM | SERVES | {"data", "split", "format", "limit", "out", "force",
                                             "no_meteor", "batch_size"},
}


INPUTS = {"prompt": "--prompt (free text)", "mr": "--mr (one MR)",
          "context": "--context (one context)"}


def check_flags(args):
    """Refuse flags that would do nothing in the mode the command line asks for."""
    if len(given := [text for name, text in INPUTS.items() if getattr(args, name) is not None]) > 1:
        raise UserError(f"give {', '.join(given[:-1])} or {given[-1]}, not "
                        + ("both" if len(given) == 2 else "several"))
    mode = ("--latency" if args.latency else
            next((f"--{name}" for name in INPUTS if getattr(args, name) is not None),
                 "the test set"))
    if unused := [name for name in args.given if name not in READS[mode] | {"device", "dtype"}]:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise UserError(f"{flags} {'does' if len(unused) == 1 else 'do'} nothing with {mode}; "
                        f"drop {'it' if len(unused) == 1 else 'them'}")
    if args.temperature == 0 and (sampling := [f for f in ("top_k", "top_p", "seed")
                                               if f in args.given]):
        raise UserError(f"{', '.join('--' + f.replace('_', '-') for f in sampling)} only act "
                        "when sampling: add --temperature (0, the default, is greedy)")


def check(args, world=distributed.ALONE) -> torch.device:
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
    if world.size > 1 and (one := next((f"--{name}" for name in ("latency", *INPUTS)
                                        if getattr(args, name) not in (None, False)), None)):
        raise UserError(f"{one} runs in one process: start sample.py without torchrun "
                        "(torchrun shares the test set's MRs among its processes)")
    for flag, value in {"--length-penalty": args.length_penalty,
                        "--temperature": args.temperature}.items():
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    device = world.place(hardware.pick_device(args.device))
    # fp32 unless --dtype says otherwise, as the released code decodes
    args.amp_dtype = hardware.amp_dtype(device, args.dtype, "decoding", auto=None)
    if len(args.adapters) == 1 and not args.model and rundir.is_run_folder(args.adapters[0]):
        _, model = rundir.run_result(args.adapters[0])
        if model:  # a full fine-tuning run's folder: its model/ is what to decode
            args.model, args.adapters = model, []
    args.adapters = adapter_files(args.adapters)
    args.adapter = args.adapters[0] if len(args.adapters) == 1 else None
    args.several = len(args.adapters) > 1 or args.mix  # served by multitask.py
    if args.latency:
        check_latency(args, device)
    elif not (args.adapters or args.model):
        raise UserError("give --adapter RUN_DIR/adapter.safetensors (or --model for a plain or "
                        "fully fine-tuned checkpoint)")
    elif args.several:
        if not args.adapters:
            raise UserError("--mix serves LoRA adapters: give them with --adapter")
        if args.qlora_merge:
            raise UserError("--qlora-merge is for one adapter trained over NF4, decoded alone: "
                            "give that one --adapter (without --mix)")
        check_several(args)
    else:
        check_qlora(args)
        if args.prompt is None:
            check_task(args)
    return device


def check_qlora(args):
    """--qlora-merge is for one adapter trained over NF4 (train.py --quantize nf4), whose
    default it has (dequantized); given for any other, it is refused."""
    quantized = args.adapter and adapter_base(args.adapter, args.model)[0].get("quantize",
                                                                               "null") != "null"
    if args.qlora_merge and not quantized:
        raise UserError(f"--qlora-merge is for an adapter trained with --quantize nf4 (QLoRA); "
                        f"{args.adapter or args.model} is not one: drop it")
    args.qlora_merge = args.qlora_merge or ("dequantized" if quantized else None)


def check_task(args):
    """args.task: --data's, else the run's own (config.json), else E2E; its decoding defaults
    where no flag is given; the input or the split checked against it."""
    run = run_config(args)
    data, trained = args.data or run.get("data"), run.get("format")  # (the run's text layout)
    args.task = open_task(data, args.format)  # a --format that does not fit the data is refused
    if not args.format and trained and trained != args.task.format:
        if args.task.format in FORMATS and trained in FORMATS:  # E2E, laid out as the run was
            args.task = open_task(data, trained)
        elif args.task.format in FORMATS:  # E2E has two layouts: which one is the user's call
            raise UserError(f"this {'adapter' if args.adapter else 'model'} was trained on "
                            f"{trained} text (its run's config.json), and --data "
                            f"{data or 'e2e'} is E2E's: pass --format paper (or official) to "
                            "decode E2E with it, in that layout of its text")
        # (a run of one task decoding another's data, not E2E's: that data's one layout)
    args.format = args.task.format
    for name, value in args.task.decoding.items():
        if name not in args.given:
            setattr(args, name, value)
    for name in ("mr", "context"):
        if getattr(args, name) is not None:
            try:
                args.task.check_input(getattr(args, name), mr=name == "mr")
            except ValueError as e:
                raise UserError(f"--{name} {e}") from None
            return
    args.task.check_split(args.split)
    if args.limit and args.limit >= len(args.task.eval_groups(args.split)[0]):
        args.limit = 0  # (more than the split holds: all of it, named and printed as such)


def kept(args, decoding_test_set: bool) -> str:
    """What a Ctrl-C leaves: the outputs decoded so far, resumed by the same command."""
    views = (args.served if args.several else [args]) if decoding_test_set else []
    parts, scored = [], []
    for view in views:
        stem = output_stem(view)
        if evaluation.scoring_left(stem):
            scored.append(f"{stem}.tsv")
        elif (done := evaluation.decoded_so_far(stem)) is not None:
            parts.append((cli.plural(done, view.task.unit), done, f"{stem}.tsv.part"))
    again = "run the same command again to go on from there"
    if len(parts) == 1:
        (what, done, part), = parts
        return (f"stopped; the {what} decoded so far {'is' if done == 1 else 'are'} kept in "
                f"{part}: {again}")
    if parts:
        return (f"stopped; what was decoded so far is kept "
                f"({', '.join(f'{what} in {part}' for what, _, part in parts)}): {again}")
    if scored:
        return (f"stopped while scoring; the predictions are saved in {', '.join(scored)}: run "
                "the same command again to score them (nothing is decoded again)")
    return "stopped; nothing was written"
