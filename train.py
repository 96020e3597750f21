"""Fine-tune GPT-2 on the E2E NLG Challenge with LoRA (or full fine-tuning, or adapters).

    python train.py --rank 4 --targets q,v            # the paper's GPT-2 M + LoRA recipe

The defaults are the paper's (Hu et al. 2021, Table 11, GPT-2 M on E2E), with every detail the
paper leaves out taken from its released code (microsoft/LoRA, examples/NLG): AdamW (betas
0.9/0.999, eps 1e-6, weight decay 0.01), lr 2e-4 with 500 warmup steps then linear decay to 0,
batch 8, 5 epochs, LoRA r=4 on W_q and W_v with alpha 32, dropout 0.1 on the LoRA path only (the
released model has none in the backbone), label smoothing 0.1, seed 110, and the released
pre-tokenized E2E text (--format paper; data/e2e/paper_format.py). `--method full | adapter_h |
adapter_l` trains the other rows of Table 3 from the same script; `--method full --random-init`
trains the same shape from scratch (no pretrained weights: the control for what pretraining buys).

A run directory gets config.json (the run's settings, paths absolute), metrics.jsonl (every logged
value), the result (adapter.safetensors, or model/ for full fine-tuning) and state.safetensors
(trainable tensors, optimizer moments, RNG states, position). Both are saved every --save-every
steps (1000: about a minute of GPU work), at each epoch end, at the last step, and on Ctrl-C or
SIGTERM (after the current step; exit 130 / 143); each save replaces the previous one atomically,
so a kill at any moment leaves the last checkpoint whole. `--resume RUN_DIR` continues exactly
where it stopped (the losses equal an uninterrupted run's, each step logged once), on another
device if need be; only the flags in SAFE_ON_RESUME may change. A run folder belongs to one
process at a time (rundir.py: a lock); a second train.py or sample.py there is refused.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time

import torch

import adapter
import cli
import lora
import rundir
import training
from checkpoint import read_hf_config, write_atomic
from cli import UserError
from data.e2e import prepare as e2e
from model import GPT, GPTConfig, PRESETS

METHODS = ("lora", "full", "adapter_h", "adapter_l")
# What a resumed run may change: how long it runs, where and how fast, how often it reports.
SAFE_ON_RESUME = ("--max-steps", "--epochs", "--device", "--dtype", "--log-interval",
                  "--eval-interval", "--save-every", "--compile")


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser("train.py", description="Fine-tune GPT-2 on E2E NLG (defaults: the paper's "
                   "GPT-2 M + LoRA recipe).")
    p.add_argument("--model", default="gpt2-medium",
                   help="GPT-2 preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or local checkpoint")
    p.add_argument("--method", default="lora", choices=METHODS,
                   help="lora, full fine-tuning, or the Adapter^H / Adapter^L baselines")
    p.add_argument("--random-init", action="store_true",
                   help="train from scratch: --model's shape with random weights (GPT-2's "
                        "init, seeded by --seed), nothing downloaded; needs --method full")
    p.add_argument("--data", help="folder with the E2E CSVs (default: $E2E_DATA_DIR, else data/e2e/, "
                                  "downloaded on first use)")
    p.add_argument("--format", default="paper", choices=list(e2e.FORMATS),
                   help="paper: the pre-tokenized text the paper's released code trains on; "
                        "official: the raw E2E CSVs")
    p.add_argument("--out", help="run directory (default: a new "
                                 "runs/e2e-<method>-<model>-<time>-<xxxx>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run saved in RUN_DIR with its settings; only "
                        + ", ".join(SAFE_ON_RESUME) + " may change")
    g = p.add_argument_group("LoRA / adapters")
    g.add_argument("--rank", type=int, default=4, help="LoRA rank r (the adapter bottleneck for "
                                                       "adapter_h / adapter_l)")
    g.add_argument("--alpha", type=float, default=32, help="LoRA alpha: the update is scaled by "
                                                           "alpha / r")
    g.add_argument("--targets", default="q,v", help="matrices LoRA adapts: q,k,v,o (attention) "
                                                    "and fc,proj (MLP)")
    g.add_argument("--dropout", type=float, default=0.0,
                   help="dropout in the GPT-2 backbone (embeddings, attention, residual "
                        "branches); the released code uses none")
    g.add_argument("--lora-dropout", type=float, default=0.1,
                   help="dropout on the input of the LoRA path (paper: 0.1)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=5, help="passes over the training set")
    g.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many optimizer steps (0: run all epochs)")
    g.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="split each batch into this many micro-batches (same result, less memory)")
    g.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (AdamW)")
    g.add_argument("--warmup", type=int, default=500, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW's decoupled weight decay, on matrices only")
    g.add_argument("--label-smoothing", type=float, default=0.1,
                   help="of the training loss (the dev loss has none)")
    g.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm (0: off)")
    g.add_argument("--seed", type=int, default=110, help="the seed of the paper's released code")
    g = p.add_argument_group("hardware and logging")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N, cpu")
    g.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast dtype on CUDA (auto: bf16); fp16 adds a GradScaler; CPU: fp32")
    g.add_argument("--compile", nargs="?", const="default", choices=("default", "cuda-graphs"),
                   help="torch.compile the loss function (with the model in it); cuda-graphs "
                        "also replays CUDA graphs, over batches padded to a few shapes")
    g.add_argument("--bucket", action="store_true",
                   help="batch examples of similar length together (less padding)")
    g.add_argument("--eval-interval", type=int, default=0,
                   help="dev loss every N steps, besides each epoch end (0: epoch ends only)")
    g.add_argument("--log-interval", type=int, default=10, help="steps between log lines")
    g.add_argument("--save-every", type=int, default=1000,
                   help="also checkpoint every N steps (0: only at epoch ends, the last step "
                        "and on Ctrl-C or SIGTERM)")
    g.add_argument("--limit", type=int, default=0,
                   help="use only the first N training and dev examples (quick runs)")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = p.parse_args(argv)
    args.given = cli.given(p, argv)  # the flags typed (not defaults): --resume checks them
    return args


# The flags each method leaves unused: given anyway, they are refused rather than ignored.
UNUSED = {"lora": (), "full": ("targets", "rank", "alpha", "lora_dropout"),
          "adapter_h": ("targets", "alpha", "lora_dropout"),
          "adapter_l": ("targets", "alpha", "lora_dropout")}


def check(args) -> tuple[torch.device, torch.dtype | None]:
    """Refuse bad settings before anything is loaded or written: (device, autocast dtype)."""
    positive = {"--epochs": args.epochs, "--batch-size": args.batch_size,
                "--grad-accum": args.grad_accum, "--log-interval": args.log_interval}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    for flag, value in {"--max-steps": args.max_steps, "--warmup": args.warmup,
                        "--eval-interval": args.eval_interval, "--limit": args.limit,
                        "--save-every": args.save_every, "--weight-decay": args.weight_decay,
                        "--grad-clip": args.grad_clip}.items():
        if not value >= 0 or not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, not negative: got {value}")
    for flag, value in {"--lr": args.lr, "--alpha": args.alpha, "--dropout": args.dropout,
                        "--lora-dropout": args.lora_dropout,
                        "--label-smoothing": args.label_smoothing}.items():
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    if not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    if not 0 <= args.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.batch_size % args.grad_accum:
        raise UserError(f"--batch-size {args.batch_size} is not a multiple of --grad-accum "
                        f"{args.grad_accum}")
    if not 0 <= args.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {args.dropout}")
    try:  # --targets, --rank, --alpha, --lora-dropout: checked by the function lora.apply uses
        lora.check_settings(args.targets if args.method == "lora" else "q", args.rank, args.alpha,
                            args.lora_dropout)
    except ValueError as e:
        raise UserError(f"{e} (--targets, --rank, --alpha, --lora-dropout)") from None
    if args.random_init and args.method != "full":
        raise UserError(f"--random-init trains every weight from scratch, which is --method full; "
                        f"--method {args.method} adapts pretrained weights that it would lack")
    if unused := [name for name in UNUSED[args.method] if name in args.given]:
        raise UserError(f"--method {args.method} does not use "
                        f"{', '.join('--' + n.replace('_', '-') for n in unused)}; drop "
                        f"{'it' if len(unused) == 1 else 'them'}")
    device = cli.pick_device(args.device)
    return device, cli.amp_dtype(device, args.dtype, "training")


# --- the model -----------------------------------------------------------------------------------


def model_shape(name: str, dropout: float) -> GPTConfig:
    """--random-init: the shape of --model (a preset, or a checkpoint's config.json), without
    its weights."""
    preset = name.removeprefix("openai-community/")
    if preset in PRESETS:
        return GPTConfig.from_preset(preset, dropout=dropout)
    folder = name if os.path.isdir(name) else os.path.dirname(name)
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise UserError(f"--random-init needs the shape of --model {name}: a preset "
                        f"({', '.join(PRESETS)}) or a checkpoint folder with a config.json")
    return GPTConfig(**{**read_hf_config(config), "dropout": dropout})


def build_model(args, device) -> GPT:
    """The pretrained model with the method's trainable parameters (the rest frozen); with
    --random-init, the same shape with GPT-2's random init instead of its weights."""
    if args.random_init:
        torch.manual_seed(args.seed)
        model = GPT(model_shape(args.model, args.dropout))
    else:
        model = GPT.from_pretrained(args.model, dropout=args.dropout)
    torch.manual_seed(args.seed)  # LoRA's A (and the adapters) start from the seed
    try:  # what only the model's shape can refuse: a rank above its width
        if args.method == "lora":
            lora.apply(model, args.targets, r=args.rank, alpha=args.alpha,
                       dropout=args.lora_dropout)
        elif args.method in ("adapter_h", "adapter_l"):
            adapter.apply(model, "houlsby" if args.method == "adapter_h" else "lin", r=args.rank)
    except ValueError as e:
        raise UserError(f"{e} (--rank)") from None
    return model.to(device)


def describe(model, args) -> str:
    if args.method == "lora":
        return lora.describe(model)
    if args.method == "full":
        start = "random init (--random-init)" if args.random_init else args.model
        return f"full fine-tuning: all {model.num_params():,} parameters trainable, from {start}"
    return adapter.describe(model)


def save_result(model, args, run_dir: str):
    """What the run produces: the adapter file, or for full fine-tuning a GPT-2 checkpoint."""
    if args.method == "lora":
        lora.save(model, os.path.join(run_dir, "adapter.safetensors"))
    elif args.method == "full":
        model.save_pretrained(os.path.join(run_dir, "model"))
    else:
        adapter.save(model, os.path.join(run_dir, "adapter.safetensors"))


# --- the loop ------------------------------------------------------------------------------------


class Stop(Exception):
    """A second Ctrl-C or SIGTERM outside a checkpoint write: quit without saving."""

    def __init__(self, name: str, code: int):
        super().__init__(name)
        self.code = code


class Diverged(Exception):
    """The trainable weights are no longer finite: nothing more is saved over the last good
    checkpoint."""


class Trainer:
    """One run's loop: optimizer steps, dev evaluations, checkpoints, Ctrl-C and SIGTERM."""

    def __init__(self, args, device, amp_dtype, model, train_set, dev_set, run_dir, state=None):
        self.args, self.device, self.amp_dtype = args, device, amp_dtype
        self.model, self.train_set, self.dev_set, self.run_dir = model, train_set, dev_set, run_dir
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = training.make_optimizer(model, args.lr, args.weight_decay,
                                                 fused=device.type == "cuda")
        # fp16 needs loss scaling; a disabled GradScaler is a no-op, so bf16 and fp32 share the code
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        # Compile the loss function, not the model: checkpoints are saved from `model` itself, so
        # they never get torch.compile's "_orig_mod." prefix.
        self.loss_fn, self.multiple = training.compiled_loss(args.compile)
        self.steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
        total = self.steps_per_epoch * args.epochs
        self.total = min(total, args.max_steps) if args.max_steps else total
        self.position = {"step": 0, "epoch": 0, "batch": 0, "last_good": None}
        if state:  # checked and loaded here, before anything is written
            self.position = training.load_state(state, model, self.optimizer, self.scaler)
        self.stop_code, self.saving = None, False  # exit code once a signal asks to stop
        self.clock = time.time()  # since the last log line, less evaluations and saves

    def step(self, batch: list, lr: float) -> tuple[torch.Tensor, int]:
        """One optimizer step on a batch (in --grad-accum micro-batches that add up to the
        batch's mean loss per reference token): (the loss, detached; input tokens)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_targets = sum(len(t) - p for t, p in batch)  # reference tokens + final EOT
        micro = self.args.batch_size // self.args.grad_accum
        total, tokens = torch.zeros((), device=self.device), 0
        for m in range(0, len(batch), micro):
            tokens += sum(len(t) - 1 for t, _ in batch[m:m + micro])
            with cli.autocast(self.device, self.amp_dtype):
                loss = self.loss_fn(self.model, *training.device_batch(
                                        batch[m:m + micro], self.device, self.multiple),
                                    self.args.label_smoothing) / n_targets
            self.scaler.scale(loss).backward()
            total += loss.detach()
        if self.args.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.args.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, tokens

    def dev_loss(self) -> float:
        with self.paused():
            return training.dev_loss(self.model, self.loss_fn, self.dev_set,
                                     self.args.batch_size, self.device, self.amp_dtype,
                                     self.multiple)

    @contextlib.contextmanager
    def paused(self):
        """Evaluations and saves: their time is left out of the tokens/s of training steps."""
        start = time.time()
        yield
        self.clock += time.time() - start

    def save(self, where: dict, why: str):
        """The result (adapter or model) and the resumable state, both written atomically; a
        signal that arrives meanwhile waits until both are written. Weights that are no longer
        finite are never saved (Diverged): the last checkpoint stays the last good one."""
        if not bool(torch.stack([p.isfinite().all() for p in self.params]).all()):  # one sync
            raise Diverged(where["step"])
        self.saving = True
        with self.paused():
            save_result(self.model, self.args, self.run_dir)
            self.position.update(where, last_good=where["step"])
            training.save_state(os.path.join(self.run_dir, "state.safetensors"), self.model,
                                self.optimizer, self.scaler, self.position)
        self.saving = False
        self.log.write({"event": "checkpoint", "why": why, **where},
                       f"saved {self.run_dir} ({why}, step {where['step']})")

    def finite(self, value: float, step: int, what: str = "the loss") -> bool:
        """False, with the last good checkpoint named, once the loss is NaN or infinite."""
        if math.isfinite(value):
            return True
        kept = (f"the last good checkpoint (step {self.position['last_good']}) is in "
                f"{self.run_dir}" if self.position["last_good"] is not None
                else "no checkpoint had been saved yet")
        self.log.write({"event": "nonfinite", "step": step, "loss": str(value)},
                       f"train.py: {what} became {value} at step {step}; stopped, {kept}",
                       error=True)
        return False

    def on_signal(self, signum, frame):
        """Ctrl-C or SIGTERM: save after this step and stop (exit 130 or 143). A second one
        quits at once, unless a checkpoint is being written: that finishes first."""
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.stop_code is not None and not self.saving:
            raise Stop(name, 128 + signum)
        if self.stop_code is None:
            self.stop_code = 128 + signum
            self.log.write({"event": "signal", "signal": name, "step": self.position["step"]},
                           f"{name}: saving after this step (again to quit without saving)")

    def run(self) -> int:
        """Train to the last step: 0 when done (or done already), 1 on a non-finite loss, 130
        after Ctrl-C, 143 after SIGTERM (with a checkpoint saved, or without after a second
        signal)."""
        args = self.args
        step = self.position["step"]
        if step >= self.total:
            print(f"{self.run_dir} has run all its {self.total:,} steps already: nothing to do "
                  "(to train it longer, resume with a larger --max-steps or --epochs)")
            return 0
        training.trim_log(self.run_dir, step)  # what ran after the checkpoint runs again
        self.log = training.Log(self.run_dir, step, self.total)
        self.log.write({"event": "start", "step": step, "total_steps": self.total,
                        "trainable": sum(p.numel() for p in self.params)},
                       f"{describe(self.model, args)}; {len(self.train_set):,} examples, "
                       f"{self.steps_per_epoch:,} steps per epoch, {self.total:,} steps"
                       + (f", resuming at step {step}" if step else ""))
        if self.device.type == "cpu" and args.device == "auto":
            self.log.write({"event": "note", "device": "cpu"}, "no CUDA GPU here, so this "
                           "trains on the CPU: how long that takes is projected after the first "
                           f"{min(args.log_interval, self.total - step)} steps")
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self.epochs()
        except Stop as e:
            kept = (f"the last checkpoint (step {self.position['last_good']}) is in {self.run_dir}"
                    if self.position["last_good"] is not None else "no checkpoint was saved")
            self.log.write({"event": "quit", "signal": str(e), "step": self.position["step"]},
                           f"train.py: {e} again: quit without saving; {kept}", error=True)
            return e.code
        except Diverged as e:
            self.finite(float("nan"), e.args[0], what="the weights")
            return 1
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.log.close()

    def epochs(self) -> int:
        args, position = self.args, self.position
        self.model.train()
        step = position["step"]
        running, running_steps, tokens = torch.zeros((), device=self.device), 0, 0
        self.clock = time.time()
        where = {k: position[k] for k in ("step", "epoch", "batch")}
        for epoch in range(position["epoch"], args.epochs):
            batches = training.epoch_batches(self.train_set, epoch, args.batch_size, args.seed,
                                             args.bucket)
            first = position["batch"] if epoch == position["epoch"] else 0
            for b in range(first, len(batches)):
                if step >= self.total:
                    break
                lr = training.lr_at(step, self.total, args.lr, args.warmup)
                loss, n = self.step([self.train_set[i] for i in batches[b]], lr)
                running, tokens = running + loss, tokens + n
                step, running_steps = step + 1, running_steps + 1
                position["step"] = step
                where = {"step": step, "epoch": epoch, "batch": b + 1}
                if step % args.log_interval == 0 or step == self.total:
                    mean_loss = running.item() / running_steps
                    if not self.finite(mean_loss, step):
                        return 1
                    self.log.progress(step, {"event": "train", "step": step, "epoch": epoch + 1,
                                             "loss": mean_loss, "lr": lr, "tokens_per_s":
                                             tokens / max(time.time() - self.clock, 1e-9)})
                    running, running_steps, tokens, self.clock = running * 0, 0, 0, time.time()
                if args.eval_interval and step % args.eval_interval == 0 and b + 1 < len(batches):
                    loss = self.dev_loss()
                    self.log.write({"event": "eval", "step": step, "epoch": epoch + 1,
                                    "dev_loss": loss}, f"step {step}: dev loss {loss:.4f}")
                if self.stop_code is not None:
                    if running_steps and not self.finite(running.item(), step):
                        return 1
                    self.save(where, "interrupted")
                    self.log.write({"event": "stopped", "step": step}, f"stopped at step {step}; "
                                   f"continue with: python train.py --resume {self.run_dir}")
                    return self.stop_code
                if args.save_every and step % args.save_every == 0 and step < self.total \
                        and b + 1 < len(batches):
                    if running_steps and not self.finite(running.item(), step):
                        return 1
                    self.save(where, f"every {args.save_every} steps")
            else:  # the epoch ran to its end
                if running_steps and not self.finite(running.item() / running_steps, step):
                    return 1
                loss = self.dev_loss()
                self.log.write({"event": "eval", "step": step, "epoch": epoch + 1,
                                "dev_loss": loss}, f"epoch {epoch + 1}: dev loss {loss:.4f}")
                self.save({"step": step, "epoch": epoch + 1, "batch": 0}, f"epoch {epoch + 1}")
                continue
            break  # --max-steps reached inside the epoch
        if position["last_good"] != step:
            self.save(where, "last step")
        result = os.path.join(self.run_dir, "model/" if args.method == "full"
                              else "adapter.safetensors")
        self.log.write({"event": "done", "step": step}, f"done: {result}; decode and score it "
                       f"with: python sample.py --{'model' if args.method == 'full' else 'adapter'}"
                       f" {result}")
        return 0


# --- set-up and the command line -----------------------------------------------------------------


def resumed_args(args) -> argparse.Namespace:
    """The settings saved in args.resume's config.json, with the flags that are safe to change
    taken from the command line; any other flag given is refused."""
    config = os.path.join(args.resume, "config.json")
    if not os.path.isfile(config):
        raise UserError(f"{args.resume} holds no run to resume (no config.json): start one with "
                        f"--out {args.resume}")
    try:
        with open(config, encoding="utf-8") as f:
            saved = json.load(f).get("args")
    except (OSError, ValueError, AttributeError) as e:
        saved = f"unreadable: {e}"
    if not isinstance(saved, dict) or "dropout" not in saved:
        raise UserError(f"{config} is not a run's config.json written by train.py (its 'args': "
                        f"{str(saved)[:60]}); start a new run instead")
    safe = {flag.lstrip("-").replace("-", "_") for flag in SAFE_ON_RESUME}
    if unsafe := [name for name in args.given if name not in safe | {"resume"}]:
        flags = ", ".join("--" + name.replace("_", "-") for name in unsafe)
        raise UserError(f"{flags} cannot change when a run resumes (only "
                        f"{', '.join(SAFE_ON_RESUME)} can); start a new run with --out instead")
    # runs saved before --format and --lora-dropout existed trained on the CSVs' own text,
    # with one dropout for the model and the LoRA path
    saved.setdefault("format", "official")
    saved.setdefault("lora_dropout", saved["dropout"])
    saved.setdefault("save_every", 0)
    saved.setdefault("random_init", False)
    if saved.get("compile") in (True, False):  # a switch before cuda-graphs existed
        saved["compile"] = "default" if saved["compile"] else None
    saved.update({name: getattr(args, name) for name in args.given if name in safe})
    return argparse.Namespace(**{**saved, "resume": os.path.abspath(args.resume),
                                 "given": args.given})


def settings(args) -> tuple[argparse.Namespace, torch.device, torch.dtype | None]:
    """The run's settings (a resumed run's from its config.json), checked, before anything is
    loaded or written: (args, device, autocast dtype)."""
    if args.resume:
        args = resumed_args(args)
    device, amp_dtype = check(args)
    if not args.resume:  # paths recorded absolute, so a resume works from anywhere
        args.out = args.out and os.path.abspath(args.out)
        for name in ("model", "data"):  # (a preset's name stays a name)
            if getattr(args, name) and os.path.exists(getattr(args, name)):
                setattr(args, name, os.path.abspath(getattr(args, name)))
    return args, device, amp_dtype


def run_directory(args) -> rundir.Claim:
    """The run's folder, owned by this process from here on (rundir.py): --resume's, --out, or a
    new runs/e2e-<method>-<model>-<time>-<xxxx>. A new run refuses a folder that holds a
    checkpoint or someone's files."""
    hint = "wait for it to end, or pick another --out"
    if args.resume:
        return rundir.claim(args.resume, "train.py", hint)
    if not args.out:
        cli.check_writable("runs")
        name = (f"e2e-{args.method}-{os.path.basename(args.model.rstrip('/'))}"
                + ("-scratch" if args.random_init else ""))
        return rundir.claim_new("runs", name, "train.py")
    cli.check_writable(args.out)
    owner = rundir.claim(args.out, "train.py", hint)
    files = {name for name in os.listdir(owner.folder)
             if name != rundir.LOCK and not rundir.is_stale(name)}
    if not files <= {"config.json", "metrics.jsonl"}:  # a checkpoint, or someone's files
        owner.release()
        raise UserError(f"{owner.folder} already holds files; pick another --out, or continue "
                        f"that run with --resume {owner.folder}")
    if files:
        print(f"{owner.folder} holds a run that never saved a checkpoint: starting it again")
    return owner


def setup(args, run_dir: str, device) -> tuple:
    """Everything training needs, every check done and nothing written: (model, train examples,
    dev examples, the state file to resume from or None)."""
    state = None
    if args.resume:
        state = os.path.join(run_dir, "state.safetensors")
        if not os.path.isfile(state):
            print(f"{run_dir} has no checkpoint yet: resuming it from step 0")
            state = None
    train_set = e2e.load_examples("train", args.data, args.format)
    dev_set = e2e.load_examples("dev", args.data, args.format)
    if args.limit:
        train_set = [train_set[i] for i in range(min(args.limit, len(train_set)))]
        dev_set = [dev_set[i] for i in range(min(args.limit, len(dev_set)))]
    model = build_model(args, device)
    longest = max(len(examples[i][0]) for examples in (train_set, dev_set)
                  for i in range(len(examples))) - 1
    if longest > model.config.block_size:
        raise UserError(f"the longest example has {longest} tokens, more than the model's "
                        f"{model.config.block_size} positions")
    return model, train_set, dev_set, state


def begin(args, run_dir: str):
    """What a start writes, once every check has passed: the leftovers of interrupted writes
    removed, and config.json: a new run's settings, or the flags a resume changed (so the next
    resume keeps them), listed under "resumed"."""
    for name in rundir.remove_stale_files(run_dir):
        print(f"removed {name}, left behind by an interrupted write")
    path = os.path.join(run_dir, "config.json")
    if args.resume:
        if changed := {name: getattr(args, name) for name in args.given if name != "resume"}:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            config["args"].update(changed)
            config.setdefault("resumed", []).append(
                {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed})
            write_atomic(path, json.dumps(config, indent=2))
        return
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):  # a run that never saved
        os.remove(os.path.join(run_dir, "metrics.jsonl"))
    saved = {k: v for k, v in vars(args).items() if k not in ("given", "resume")}
    write_atomic(path, json.dumps({
        "args": saved, "data_format": e2e.FORMATS[args.format], "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


def main(argv=None) -> int:
    owner = None
    try:
        args, device, amp_dtype = settings(parse_args(argv))
        owner = run_directory(args)
        args.out = args.out if args.resume else owner.folder
        model, train_set, dev_set, state = setup(args, owner.folder, device)
        trainer = Trainer(args, device, amp_dtype, model, train_set, dev_set, owner.folder, state)
    except (*cli.USER_ERRORS, KeyboardInterrupt) as e:
        if owner is not None:  # nothing was written: a folder made for this run goes again
            owner.abandon()
            owner.release()
        if isinstance(e, KeyboardInterrupt):
            cli.interrupted("train.py", "stopped before training began; nothing was written"
                            + (f" (continue with: python train.py --resume {args.resume})"
                               if owner is not None and args.resume else ""))
        cli.fail("train.py", e)
    with owner:  # the folder stays ours until the run ends, however it ends
        begin(args, owner.folder)
        return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
