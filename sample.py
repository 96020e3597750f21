"""Decode with a fine-tuned GPT-2: merge the adapter into W0, beam-search the test set, score it.

    python sample.py --adapter RUN_DIR/adapter.safetensors        # the Table 3 row for a run
    python sample.py --adapter RUN_DIR/adapter.safetensors --mr "name[The Eagle], eatType[pub]"
    python sample.py --adapter RUN_DIR/adapter.safetensors --context "city : Oslo | sky : snow"
    python sample.py --model gpt2 --prompt "The Eagle is" --temperature 0.8 --top-p 0.9
    python sample.py --latency                                     # the Table 1 latency grid
    python sample.py --adapter RUN_A/adapter.safetensors --adapter RUN_B/adapter.safetensors --mix

Read load_model (the merge of Sec. 4.1: afterwards the model is plain GPT-2 again, at GPT-2's cost),
then evaluate_split and one_input. The task is the run's own (E2E, WebNLG, DART, or a JSONL folder:
data/task.py), or --data's. Decoding follows the paper (Table 11): beam search (paper/decoding.py)
with 10 beams, length penalty 0.9 (WebNLG, DART: 0.8) and no repeated 4-grams, at most 64 new tokens
(a JSONL task: its longest target), stopping at <|endoftext|> (E2E, WebNLG, DART: or a blank line).
Each distinct context of the test set (E2E: its 630 MRs) is decoded once; the predictions (MR or
context, output) are written beside the adapter before they are scored with the task's metrics
(E2E's five, data/e2e/metrics.py, also for a JSONL task; WebNLG's and DART's BLEU, METEOR and TER,
data/scorers/mt_metrics.py), beside the paper's row where the task has one.

The rest is a call at a time into harness/sample_cli.py (the flag rules, where the predictions
go, several adapters on one base: --mix, mixed batches, Sec. 4.2, paper/multitask.py; --latency:
Table 1, paper/latency.py), harness/evaluation.py (a split decoded and scored) and the plumbing
(plumbing/: the command line, the device, torchrun's world).

    torchrun --standalone --nproc_per_node 4 sample.py --adapter RUN_DIR/adapter.safetensors

decodes the test set over 4 processes (GPUs): each searches a share of the batches, rank 0 writes
the predictions (the same file, byte for byte) and scores them once (plumbing/distributed.py).
"""

import sys

import torch

import lora
from data.e2e.prepare import FORMATS
from data.task import EOT, tokenizer
from harness import evaluation, sample_cli
from model import GPT, PRESETS
from paper import adapter, qlora
from paper.decoding import decode
from plumbing import cli, distributed, hardware


def load_model(args, device) -> tuple[GPT, str]:
    """The model to decode with, and what it is: the base with the adapter merged in (LoRA),
    inserted (Adapter^H / Adapter^L), or a plain checkpoint (--model alone)."""
    if not args.adapter:  # a preset is the pretrained base; a local checkpoint, fine-tuned
        kind = "base" if args.model.removeprefix("openai-community/") in PRESETS else "full"
        return GPT.from_pretrained(args.model).to(device).eval(), kind
    meta, base = sample_cli.adapter_base(args.adapter, args.model)
    model = GPT.from_pretrained(base)
    if meta["method"] == "lora":
        if not args.qlora_merge:
            lora.load(model, args.adapter, check_base=not args.any_base)
        else:  # QLoRA's: W0 in NF4 as it trained; kept, dequantized or full precision again
            qlora.load(model, args.adapter, args.qlora_merge, check_base=not args.any_base)
            print(f"trained over W0 in NF4 (QLoRA); decoded {qlora.WAYS[args.qlora_merge]}")
            if args.qlora_merge == "nf4":  # (B A cannot fold into 4-bit codes: LoRA unmerged)
                return model.to(device).eval(), "lora"
        lora.merge(model)  # W = W0 + (alpha/r) B A: plain Linear layers again (Sec. 4.1)
        print(f"merged LoRA ({lora.describe(model).split(':')[0]}) into {base}: the model now "
              "computes exactly what GPT-2 computes, at the same cost")
        return model.to(device).eval(), "lora"
    kind = adapter.load(model, args.adapter, check_base=not args.any_base)["kind"]
    print(f"{adapter.describe(model)}: adapters cannot be merged; they run on every forward pass")
    return model.to(device).eval(), kind


def evaluate_split(model, kind: str, args, device, world):
    """Decode each distinct context of the split once with the paper's beam search, write the
    predictions, score them (harness/evaluation.py), then print the row next to the paper's."""
    job = sample_cli.split_job(model, args, device, world)  # its inputs, where they go, what is done
    report, = evaluation.run_jobs(model, [job], meteor=not args.no_meteor, world=world)
    if report is not None:  # (a rank of torchrun but 0: rank 0 scores)
        sample_cli.print_report(report, model, kind, args)


def one_input(model, args, device):
    """--prompt: continue free text (greedy, or sampled); --mr, --context: beam-search one MR
    or context, as the test set is decoded."""
    enc, task = tokenizer(), getattr(args, "task", None)
    if args.prompt is None:
        text, mr = (args.mr, True) if args.mr is not None else (args.context, False)
        prompt = task.prompt(text, mr=mr)
        evaluation.check_search(model, sample_cli.decoding(args), [prompt], device)
        tokens = decode(model, [prompt], **sample_cli.decoding(args).kwargs(),
                        stop_tokens=task.stop_tokens, progress=False)[0]
        print(evaluation.output_text(enc, tokens, task.blank_line_ends))
        return
    idx = torch.tensor([enc.encode(args.prompt, allowed_special={"<|endoftext|>"})],
                       device=device)
    if idx.size(1) >= model.config.block_size:
        raise cli.UserError(f"--prompt has {idx.size(1)} tokens; the model reads at most "
                            f"{model.config.block_size - 1} before it writes")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with hardware.autocast(device, args.amp_dtype):
        out = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k,
                             args.top_p, stop_token=EOT, generator=generator)
    print(enc.decode(out[0].tolist()))


def parse_args(argv=None):
    p = cli.parser("sample.py", description="Decode with a fine-tuned GPT-2 (a task's test set, "
                   "one input, or free text), or time the forward pass (paper Table 1).")
    p.add_argument("--adapter", action="append",
                   help="adapter.safetensors from train.py, or its run folder (its base model is "
                        "read from the file); give several, or a folder of them, to serve them "
                        "on one base")
    p.add_argument("--model", help="base model (overrides the adapter's), or a full fine-tuned "
                                   "checkpoint to decode without an adapter")
    p.add_argument("--data", help="the task: e2e, webnlg, dart, or a folder (their files, or "
                                  "train.jsonl, dev.jsonl, test.jsonl) (default: the run's own; "
                                  "else E2E: $E2E_DATA_DIR, else data/e2e/, downloaded on first "
                                  "use)")
    p.add_argument("--split", default="test", choices=("test", "dev"), help="split to decode")
    p.add_argument("--format", choices=list(FORMATS),
                   help="E2E's text: paper, the released pre-tokenized text, scored against the "
                        "released references (comparable with Table 3); official: the raw CSVs "
                        "(default: the run's own, else paper)")
    p.add_argument("--limit", type=int, default=0, help="decode only the first N MRs (contexts)")
    p.add_argument("--out", help="folder for predictions and scores (default: the adapter's)")
    p.add_argument("--force", action="store_true",
                   help="replace earlier predictions (and discard an unfinished decode with other "
                        "settings)")
    p.add_argument("--any-base", action="store_true",
                   help="load the adapter even onto a base whose weights are not the ones it was "
                        "trained on (the check compares a fingerprint of those weights)")
    p.add_argument("--qlora-merge", choices=("dequantized", "nf4", "base"),
                   help="an adapter trained with --quantize nf4 (QLoRA): merge it into the "
                        "dequantized NF4 W0 it trained over (the default), keep it unmerged over "
                        "NF4, or merge it into the full-precision base (docs/qlora.md)")
    p.add_argument("--mix", action="store_true",
                   help="several adapters: decode in mixed batches, W0 unmerged and each row with "
                        "its own adapter, instead of merging one adapter at a time")
    p.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR (it needs pycocoevalcap's word lists, and about 10 s)")
    g = p.add_argument_group("decoding")
    g.add_argument("--beam", type=int, default=10, help="beam width (1: greedy)")
    g.add_argument("--length-penalty", type=float, default=0.9,
                   help="score = log p / length ** penalty (WebNLG, DART: 0.8, Table 11)")
    g.add_argument("--no-repeat-ngram", type=int, default=4, help="0 allows repeats")
    g.add_argument("--max-new-tokens", type=int, default=64,
                   help="longest output, in tokens (a JSONL task: its longest target's)")
    g.add_argument("--batch-size", type=int, default=32, help="MRs (contexts) decoded together")
    g.add_argument("--no-cache", action="store_true", help="recompute the whole sequence at "
                                                           "every step (slow; for comparison)")
    g.add_argument("--device", default="auto",
                   help="auto (cuda, else mps, else cpu), cuda, cuda:N, mps, cpu")
    g.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto: fp32, as the released code decodes; bf16, fp16: autocast (CUDA, CPU)")
    g = p.add_argument_group("one input")
    g.add_argument("--mr", help="one E2E meaning representation, e.g. 'name[The Eagle], "
                                "eatType[pub]'")
    g.add_argument("--context", help="one context as the model reads it (any task), e.g. "
                                     "'city : Oslo | sky : snow' for data/toy")
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
    args.adapters = args.adapter or []  # (a folder among them is opened by check)
    args.adapter = args.adapters[0] if len(args.adapters) == 1 else None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    owners = []  # the output folders' locks (rank 0's), while decoding the test set
    test_set = all(getattr(args, name) is None for name in sample_cli.INPUTS) and not args.latency
    claimed = False  # (on every rank: the folders are rank 0's)
    try:
        with cli.stopping_on_signals():  # SIGTERM and SIGHUP stop as Ctrl-C does
            world = distributed.start()  # torchrun's processes join here; alone, nothing happens
            device = world.agree(sample_cli.check, args, world)  # the flags, the task, the adapters
            if args.latency:
                sample_cli.run_latency(args, device)
                return 0
            if test_set:
                stems = [sample_cli.output_stem(view)
                         for view in (args.served if args.several else [args])]
                owners = world.agree(sample_cli.claim_outputs, stems, args.force,
                                     main_only=True) or []
                claimed = True
            if args.several:  # several adapters on one base (paper/multitask.py)
                sample_cli.serve_several(args, device, world, test_set)
            else:
                model, kind = world.agree(load_model, args, device, main_first=True)
                if test_set:
                    evaluate_split(model, kind, args, device, world)
                else:
                    one_input(model, args, device)
    except (*cli.USER_ERRORS, KeyboardInterrupt) as e:
        for owner in owners:  # a folder made for this decode goes again if it stayed empty
            owner.abandon()
        if isinstance(e, KeyboardInterrupt):
            cli.interrupted("sample.py", sample_cli.kept(args, claimed), e)
        cli.fail("sample.py", e)
    except cli.WriteError as e:  # a full disk, a folder no longer writable
        e.kept = sample_cli.kept(args, claimed)
        cli.cannot_write("sample.py", e)
    except distributed.LostRank as e:  # torchrun: another rank died or hung
        return e.say("sample.py", sample_cli.kept(args, claimed))
    finally:
        for owner in owners:
            owner.release()
    world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
