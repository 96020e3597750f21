"""Fine-tune GPT-2 on the E2E NLG Challenge with LoRA (or full fine-tuning, or adapters), or on
your own task: `--data FOLDER` of JSONL files (data/jsonl.py), the same pipeline (data/task.py).

    python train.py --rank 4 --targets q,v            # the paper's GPT-2 M + LoRA recipe
    python train.py --data data/toy --model gpt2      # a task of your own

The defaults are the paper's (Hu et al. 2021, Table 11, GPT-2 M on E2E), with every detail the
paper leaves out taken from its released code (microsoft/LoRA, examples/NLG): AdamW (betas
0.9/0.999, eps 1e-6, weight decay 0.01), lr 2e-4 with 500 warmup steps then linear decay to 0,
batch 8, 5 epochs, LoRA r=4 on W_q and W_v with alpha 32, dropout 0.1 on the LoRA path only (the
released model has none in the backbone), label smoothing 0.1, seed 110, and the released
pre-tokenized E2E text (--format paper; data/e2e/paper_format.py). `--method full | adapter_h |
adapter_l` trains the other rows of Table 3 from the same script; `--method full --random-init`
trains the same shape from scratch (no pretrained weights: the control for what pretraining buys).

This file is the command line; the run itself (the loop, checkpoints every --save-every steps and
at each epoch end, Ctrl-C and SIGTERM: save after the step, exit 130 / 143) is finetune.py, which
reproduce.py runs too. `--resume RUN_DIR` continues exactly where a run stopped (the losses equal
an uninterrupted run's), on another device if need be; only the flags in
finetune.SAFE_ON_RESUME may change. A run folder belongs to one process at a time (rundir.py).

    torchrun --standalone --nproc_per_node 4 train.py ...     # data-parallel over 4 GPUs

trains the same run over several processes (distributed.py): --batch-size stays the global
batch, each process takes its share of it, and rank 0 writes the run folder.
"""


import sys

from data.e2e import prepare as e2e
from kit import cli, distributed, finetune
from kit.finetune import METHODS, SAFE_ON_RESUME, RunConfig

D = RunConfig()  # the defaults


def parse_args(argv=None) -> RunConfig:
    p = cli.parser("train.py", description="Fine-tune GPT-2 on E2E NLG, or your own task "
                   "(defaults: the paper's GPT-2 M + LoRA recipe).")
    p.add_argument("--model", default=D.model,
                   help="GPT-2 preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or local checkpoint")
    p.add_argument("--method", default=D.method, choices=METHODS,
                   help="lora, full fine-tuning, or the Adapter^H / Adapter^L baselines")
    p.add_argument("--random-init", action="store_true",
                   help="train from scratch: --model's shape with random weights (GPT-2's "
                        "init, seeded by --seed), nothing downloaded; needs --method full")
    p.add_argument("--data", help="your task: a folder with train.jsonl and dev.jsonl (data/jsonl.py); "
                                  "or the E2E CSVs' folder (default: $E2E_DATA_DIR, else "
                                  "data/e2e/, downloaded on first use)")
    p.add_argument("--format", default=D.format, choices=list(e2e.FORMATS),
                   help="E2E's text: paper (the default), the pre-tokenized text the paper's "
                        "released code trains on; official: the raw E2E CSVs")
    p.add_argument("--out", help="run directory (default: a new "
                                 "runs/<task>-<method>-<model>-<time>-<xxxx>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run saved in RUN_DIR with its settings; only "
                        + ", ".join(SAFE_ON_RESUME) + " may change")
    g = p.add_argument_group("LoRA / adapters")
    g.add_argument("--rank", type=int, default=D.rank,
                   help="LoRA rank r (the adapter bottleneck for adapter_h / adapter_l)")
    g.add_argument("--alpha", type=float, default=D.alpha,
                   help="LoRA alpha: the update is scaled by alpha / r")
    g.add_argument("--targets", default=D.targets,
                   help="matrices LoRA adapts: q,k,v,o (attention) and fc,proj (MLP)")
    g.add_argument("--dropout", type=float, default=D.dropout,
                   help="dropout in the GPT-2 backbone (embeddings, attention, residual "
                        "branches); the released code uses none")
    g.add_argument("--lora-dropout", type=float, default=D.lora_dropout,
                   help="dropout on the input of the LoRA path (paper: 0.1)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=D.epochs, help="passes over the training set")
    g.add_argument("--max-steps", type=int, default=D.max_steps,
                   help="stop after this many optimizer steps (0: run all epochs)")
    g.add_argument("--batch-size", type=int, default=D.batch_size,
                   help="examples per optimizer step")
    g.add_argument("--grad-accum", type=int, default=D.grad_accum,
                   help="split each batch into this many micro-batches (same result, less memory)")
    g.add_argument("--lr", type=float, default=D.lr, help="peak learning rate (AdamW)")
    g.add_argument("--warmup", type=int, default=D.warmup, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=D.weight_decay,
                   help="AdamW's decoupled weight decay, on matrices only")
    g.add_argument("--label-smoothing", type=float, default=D.label_smoothing,
                   help="of the training loss (the dev loss has none)")
    g.add_argument("--grad-clip", type=float, default=D.grad_clip,
                   help="max gradient norm (0: off)")
    g.add_argument("--seed", type=int, default=D.seed, help="the seed of the paper's released code")
    g = p.add_argument_group("hardware and logging")
    g.add_argument("--device", default=D.device,
                   help="auto (cuda, else mps, else cpu), cuda, cuda:N, mps, cpu")
    g.add_argument("--dtype", default=D.dtype, choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast dtype on CUDA (auto: bf16); fp16 adds a GradScaler; CPU: fp32")
    g.add_argument("--compile", nargs="?", const="default", choices=("default", "cuda-graphs"),
                   help="torch.compile the loss function (with the model in it); cuda-graphs "
                        "also replays CUDA graphs, over batches padded to a few shapes")
    g.add_argument("--bucket", action="store_true",
                   help="batch examples of similar length together (less padding)")
    g.add_argument("--eval-interval", type=int, default=D.eval_interval,
                   help="dev loss every N steps, besides each epoch end (0: epoch ends only)")
    g.add_argument("--log-interval", type=int, default=D.log_interval,
                   help="steps between log lines")
    g.add_argument("--save-every", type=int, default=D.save_every,
                   help="also checkpoint every N steps (0: only at epoch ends, the last step "
                        "and on Ctrl-C or SIGTERM)")
    g.add_argument("--limit", type=int, default=D.limit,
                   help="use only the first N training and dev examples (quick runs)")
    g.add_argument("--keep-epochs", action="store_true",
                   help="also keep each epoch's result (adapter-epoch{N}.safetensors, or "
                        "model-epoch{N}/), to pick the best epoch afterwards (reproduce.py)")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = p.parse_args(argv)  # the flags typed (not defaults) are checked against the method
    return RunConfig(**vars(args), given=tuple(cli.given(p, argv)))  # and, on --resume, kept


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        world = distributed.start()  # torchrun's processes join here; alone, nothing happens
        job = finetune.prepare(cfg, world)
    except KeyboardInterrupt:
        cli.interrupted("train.py", "stopped before training began; nothing was written"
                        + (f" (continue with: python train.py --resume {cfg.resume})"
                           if cfg.resume else ""))
    except cli.USER_ERRORS as e:
        cli.fail("train.py", e)
    except distributed.LostRank as e:
        return e.say("train.py", "stopped before training began")
    code = job.run()
    world.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
