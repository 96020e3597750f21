"""Fine-tune GPT-2 on the E2E NLG Challenge with LoRA (or full fine-tuning, or adapters).

    python train.py --rank 4 --targets q,v            # the paper's GPT-2 M + LoRA recipe

The defaults are the paper's (Hu et al. 2021, Table 11, GPT-2 M on E2E): AdamW (betas 0.9/0.999,
weight decay 0.01), lr 2e-4 with 500 warmup steps then linear decay to 0, batch 8, 5 epochs, LoRA
r=4 on W_q and W_v with alpha 32 and dropout 0.1, label smoothing 0.1. `--method full | adapter_h |
adapter_l` trains the other rows of Table 3 from the same script.

A run directory gets config.json (the run's settings), metrics.jsonl (every logged value), the
result (adapter.safetensors, or model/ for full fine-tuning) and state.safetensors (optimizer,
RNG states, step) at every epoch end and on Ctrl-C; `--resume RUN_DIR` continues exactly where
it stopped: the losses after resuming equal those of an uninterrupted run.
"""

import argparse
import json
import math
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F

import adapter
import lora
from cli import HelpFormatter
from data.e2e import prepare as e2e
from model import GPT, load_metadata, load_tensors, save_tensors, write_atomic

METHODS = ("lora", "full", "adapter_h", "adapter_l")


class UserError(ValueError):
    """A bad flag or input, reported as one line (exit code 2)."""


def fail(message: str):
    print(f"train.py: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Fine-tune GPT-2 on E2E NLG (defaults: the paper's GPT-2 M + LoRA recipe).",
        formatter_class=HelpFormatter)
    p.error = lambda message: fail(f"{message} (see --help)")
    p.add_argument("--model", default="gpt2-medium",
                   help="GPT-2 preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or local checkpoint")
    p.add_argument("--method", default="lora", choices=METHODS,
                   help="lora, full fine-tuning, or the Adapter^H / Adapter^L baselines")
    p.add_argument("--data", help="folder with the E2E CSVs (default: $E2E_DATA_DIR, else data/e2e/, "
                                  "downloaded on first use)")
    p.add_argument("--out", help="run directory (default: runs/e2e-<method>-<model>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    g = p.add_argument_group("LoRA / adapters")
    g.add_argument("--rank", type=int, default=4, help="LoRA rank r (the adapter bottleneck for "
                                                       "adapter_h / adapter_l)")
    g.add_argument("--alpha", type=float, default=32, help="LoRA alpha: the update is scaled by "
                                                           "alpha / r")
    g.add_argument("--targets", default="q,v", help="matrices LoRA adapts: q,k,v,o (attention) "
                                                    "and fc,proj (MLP)")
    g.add_argument("--dropout", type=float, default=0.1,
                   help="dropout of the model and of the LoRA path")
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
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--bucket", action="store_true",
                   help="batch examples of similar length together (less padding)")
    g.add_argument("--eval-interval", type=int, default=0,
                   help="dev loss every N steps, besides each epoch end (0: epoch ends only)")
    g.add_argument("--log-interval", type=int, default=10, help="steps between log lines")
    g.add_argument("--limit", type=int, default=0,
                   help="use only the first N training and dev examples (quick runs)")
    return p.parse_args(argv)


def check(args) -> torch.device:
    """Refuse bad settings before anything is loaded or written; returns the device."""
    positive = {"--rank": args.rank, "--epochs": args.epochs, "--batch-size": args.batch_size,
                "--grad-accum": args.grad_accum, "--log-interval": args.log_interval}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    for flag, value in {"--max-steps": args.max_steps, "--warmup": args.warmup,
                        "--eval-interval": args.eval_interval, "--limit": args.limit,
                        "--weight-decay": args.weight_decay, "--grad-clip": args.grad_clip}.items():
        if value < 0:
            raise UserError(f"{flag} must not be negative, got {value}")
    if not args.lr > 0 or not args.alpha > 0:
        raise UserError(f"--lr and --alpha must be positive, got {args.lr} and {args.alpha}")
    for flag, value in {"--dropout": args.dropout, "--label-smoothing": args.label_smoothing}.items():
        if not 0 <= value < 1:
            raise UserError(f"{flag} must be in [0, 1), got {value}")
    if args.batch_size % args.grad_accum:
        raise UserError(f"--batch-size {args.batch_size} is not a multiple of --grad-accum "
                        f"{args.grad_accum}")
    if args.method == "lora":
        lora.parse_targets(args.targets)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}, but this torch ({torch.__version__}) sees no CUDA "
                        "GPU; use --device cpu")
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--device {args.device}: only cpu and cuda are supported")
    if device.type == "cpu" and args.dtype in ("bf16", "fp16"):
        raise UserError(f"--dtype {args.dtype} is mixed precision for CUDA; on CPU training runs "
                        "in fp32 (drop --dtype)")
    return device


# --- data ----------------------------------------------------------------------------------------


def collate(examples: list[tuple], pad: int = e2e.EOT) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch to its longest example. targets[i, t] is the token after inputs[i, t], or -100
    where no loss is taken: over the context and separator, and over the padding."""
    longest = max(len(tokens) for tokens, _ in examples) - 1
    inputs = torch.full((len(examples), longest), pad, dtype=torch.long)
    targets = torch.full((len(examples), longest), -100, dtype=torch.long)
    for i, (tokens, prompt_length) in enumerate(examples):
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        inputs[i, :len(tokens) - 1] = tokens[:-1]
        # the first position that predicts a reference token is the separator's
        targets[i, prompt_length - 1:len(tokens) - 1] = tokens[prompt_length:]
    return inputs, targets


def loss_positions(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the loss is taken, as flat indices into (B*T), and the labels there. Computed on
    the CPU next to collate, so the GPU never waits to find them."""
    flat = targets.flatten()
    positions = (flat != -100).nonzero().squeeze(1)
    return positions, flat[positions]


def token_loss(model, inputs, positions, labels, label_smoothing: float = 0.0):
    """Summed cross-entropy at the given positions: the LM head (50,257 outputs per position)
    runs only where the loss is, about half of the positions of an E2E batch."""
    hidden = model.features(inputs).flatten(0, 1).index_select(0, positions)
    logits = model.lm_head(hidden).float()
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")


def epoch_batches(examples, epoch: int, args) -> list[list[int]]:
    """The batches of one epoch: a seeded shuffle, so a resumed run sees the same order."""
    g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    order = torch.randperm(len(examples), generator=g).tolist()
    if args.bucket:  # sort by length within windows of 100 batches, then shuffle the batches
        window = 100 * args.batch_size
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s:s + window], key=lambda i: len(examples[i][0]))]
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    if args.bucket:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


# --- model ---------------------------------------------------------------------------------------


def build_model(args, device) -> GPT:
    """The pretrained model with the method's trainable parameters (the rest frozen)."""
    model = GPT.from_pretrained(args.model, dropout=args.dropout)
    torch.manual_seed(args.seed)  # LoRA's A (and the adapters) start from the seed
    if args.method == "lora":
        lora.apply(model, args.targets, r=args.rank, alpha=args.alpha, dropout=args.dropout)
    elif args.method in ("adapter_h", "adapter_l"):
        adapter.apply(model, "houlsby" if args.method == "adapter_h" else "lin", r=args.rank)
    return model.to(device)


def describe(model, args) -> str:
    if args.method == "lora":
        return lora.describe(model)
    if args.method == "full":
        return f"full fine-tuning: all {model.num_params():,} parameters trainable"
    return adapter.describe(model)


def save_result(model, args, run_dir: str):
    """What the run produces: the adapter file, or for full fine-tuning a GPT-2 checkpoint."""
    if args.method == "lora":
        lora.save(model, os.path.join(run_dir, "adapter.safetensors"))
    elif args.method == "full":
        model.save_pretrained(os.path.join(run_dir, "model"))
    else:
        adapter.save(model, os.path.join(run_dir, "adapter.safetensors"))


def lr_at(step: int, total: int, args) -> float:
    """Linear warmup over args.warmup steps, then linear decay to 0 at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * max(0.0, (total - step) / max(1, total - args.warmup))


# --- checkpoints ---------------------------------------------------------------------------------


def save_state(path: str, model, optimizer, scaler, position: dict):
    """One atomic file with everything a resumed run needs: the trainable tensors, the
    optimizer's moments, the RNG states and the position (step, epoch, batch)."""
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters()
               if p.requires_grad}
    for i, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{i}.{k}": v.detach().cpu().contiguous() for k, v in state.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta = {**position, "scaler": scaler.state_dict() if scaler else None}
    save_tensors(path, tensors, {"state": json.dumps(meta)})


def load_state(path: str, model, optimizer, scaler) -> dict:
    tensors, meta = load_tensors(path), json.loads(load_metadata(path)["state"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(tensors[f"param.{name}"])
    state = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = value
    optimizer.load_state_dict({"state": state,
                               "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    if scaler and meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    return meta


# --- training ------------------------------------------------------------------------------------


@torch.no_grad()
def dev_loss(model, loss_fn, examples, args, device, amp_dtype) -> float:
    """Mean cross-entropy per reference token on the dev examples (no label smoothing)."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for start in range(0, len(examples), args.batch_size):
        inputs, targets = collate([examples[i] for i in range(start, min(start + args.batch_size,
                                                                           len(examples)))])
        positions, labels = loss_positions(targets)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            total += loss_fn(model, inputs.to(device), positions.to(device), labels.to(device))
        count += len(labels)
    model.train()
    return total.item() / count


class Log:
    """Progress on the terminal (a tqdm bar, or plain lines when stderr is not a terminal) and
    every value in metrics.jsonl."""

    def __init__(self, run_dir: str, step: int, total: int):
        from tqdm import tqdm

        self.file = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
        self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True,
                        disable=not sys.stderr.isatty())
        self.total, self.start, self.start_step = total, time.time(), step

    def write(self, record: dict, line: str | None = None, error: bool = False):
        self.file.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
        self.file.flush()
        if line and (self.bar.disable or error):
            print(line, file=sys.stderr if error else sys.stdout, flush=True)
        elif line:
            self.bar.write(line)

    def progress(self, step: int, record: dict):
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(epoch=record["epoch"], loss=f"{record['loss']:.3f}",
                             lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
        done = step - self.start_step
        eta = (time.time() - self.start) / max(done, 1) * (self.total - step)
        self.write(record, None if not self.bar.disable else
                   f"step {step}/{self.total} | epoch {record['epoch']} | loss "
                   f"{record['loss']:.4f} | lr {record['lr']:.2e} | "
                   f"{record['tokens_per_s']:,.0f} tok/s | ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")

    def close(self):
        self.bar.close()
        self.file.close()


def train(args, device, model, train_set, dev_set, run_dir, resume_from=None) -> int:
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16,
                     "fp32": None}[args.dtype]
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # biases, LN
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-6,
                                  fused=device.type == "cuda")
    # Compile the loss function, not the model: checkpoints are saved from `model` itself, so
    # they never get torch.compile's "_orig_mod." prefix.
    loss_fn = torch.compile(token_loss, dynamic=True) if args.compile else token_loss

    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total = steps_per_epoch * args.epochs
    total = min(total, args.max_steps) if args.max_steps else total
    position = {"step": 0, "epoch": 0, "batch": 0, "last_good": None}
    if resume_from:
        position = load_state(resume_from, model, optimizer, scaler)
    step = position["step"]
    log = Log(run_dir, step, total)
    log.write({"event": "start", "step": step, "total_steps": total,
               "trainable": sum(p.numel() for p in params)}, f"{describe(model, args)}; "
              f"{len(train_set):,} examples, {steps_per_epoch:,} steps per epoch, {total:,} steps"
              + (f", resuming at step {step}" if step else ""))

    stop = {"asked": False}

    def on_sigint(signum, frame):
        if stop["asked"]:
            raise KeyboardInterrupt
        stop["asked"] = True
        log.write({"event": "sigint", "step": step},
                  "Ctrl-C: saving after this step (press again to quit without saving)", error=True)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)

    def checkpoint(where: dict, why: str):
        save_result(model, args, run_dir)
        position.update(where, last_good=where["step"])
        save_state(os.path.join(run_dir, "state.safetensors"), model, optimizer, scaler, position)
        log.write({"event": "checkpoint", "why": why, **where}, f"saved {run_dir} ({why}, step "
                                                                f"{where['step']})")

    def loss_is_finite(value: float) -> bool:
        if math.isfinite(value):
            return True
        kept = (f"the last good checkpoint (step {position['last_good']}) is in {run_dir}"
                if position["last_good"] is not None else "no checkpoint had been saved yet")
        log.write({"event": "nonfinite", "step": step, "loss": str(value)},
                  f"train.py: the loss became {value} at step {step}; stopped, {kept}", error=True)
        return False

    model.train()
    micro = args.batch_size // args.grad_accum
    running, running_steps, tokens, clock = torch.zeros((), device=device), 0, 0, time.time()
    where = {k: position[k] for k in ("step", "epoch", "batch")}
    try:
        for epoch in range(position["epoch"], args.epochs):
            batches = epoch_batches(train_set, epoch, args)
            first = position["batch"] if epoch == position["epoch"] else 0
            for b in range(first, len(batches)):
                if step >= total:
                    break
                lr = lr_at(step, total, args)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = [train_set[i] for i in batches[b]]
                n_targets = sum(len(t) - p for t, p in batch)  # reference tokens + final EOT
                for m in range(0, len(batch), micro):  # micro-batches add up to the batch's mean
                    inputs, targets = collate(batch[m:m + micro])
                    positions, labels = loss_positions(targets)
                    tokens += sum(len(t) - 1 for t, _ in batch[m:m + micro])
                    with torch.autocast(device.type, dtype=amp_dtype,
                                        enabled=amp_dtype is not None):
                        loss = loss_fn(model, inputs.to(device, non_blocking=True),
                                       positions.to(device, non_blocking=True),
                                       labels.to(device, non_blocking=True),
                                       args.label_smoothing) / n_targets
                    (scaler.scale(loss) if scaler else loss).backward()
                    running += loss.detach()
                if args.grad_clip:
                    if scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step, running_steps = step + 1, running_steps + 1
                where = {"step": step, "epoch": epoch, "batch": b + 1}

                if step % args.log_interval == 0 or step == total:
                    mean_loss = running.item() / running_steps
                    if not loss_is_finite(mean_loss):
                        return 1
                    elapsed = time.time() - clock
                    log.progress(step, {"event": "train", "step": step, "epoch": epoch + 1,
                                        "loss": mean_loss, "lr": lr,
                                        "tokens_per_s": tokens / max(elapsed, 1e-9)})
                    running, running_steps, tokens, clock = running * 0, 0, 0, time.time()
                if args.eval_interval and step % args.eval_interval == 0 and b + 1 < len(batches):
                    log.write({"event": "eval", "step": step, "epoch": epoch + 1,
                               "dev_loss": dev_loss(model, loss_fn, dev_set, args, device,
                                                    amp_dtype)}, None)
                if stop["asked"]:
                    if running_steps and not loss_is_finite(running.item()):
                        return 1
                    checkpoint(where, "interrupted")
                    log.write({"event": "stopped", "step": step}, f"stopped at step {step}; "
                              f"continue with: python train.py --resume {run_dir}")
                    return 130
            else:  # the epoch ran to its end
                if running_steps and not loss_is_finite(running.item() / running_steps):
                    return 1
                loss = dev_loss(model, loss_fn, dev_set, args, device, amp_dtype)
                log.write({"event": "eval", "step": step, "epoch": epoch + 1, "dev_loss": loss},
                          f"epoch {epoch + 1}: dev loss {loss:.4f}")
                checkpoint({"step": step, "epoch": epoch + 1, "batch": 0}, f"epoch {epoch + 1}")
                continue
            break  # --max-steps reached inside the epoch
        if position["last_good"] != step:
            checkpoint(where, "last step")
        result = "model/" if args.method == "full" else "adapter.safetensors"
        log.write({"event": "done", "step": step},
                  f"done: {os.path.join(run_dir, result)}; decode and score it with: python "
                  f"sample.py --{'model' if args.method == 'full' else 'adapter'} "
                  f"{os.path.join(run_dir, result)}")
        return 0
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        log.close()


def setup(args):
    """Everything before training, with every check done and nothing written:
    (args, device, model, train examples, dev examples, run directory, resuming?)."""
    resume = args.resume
    if resume:  # the saved settings, except where to resume from
        config = os.path.join(resume, "config.json")
        if not (os.path.isfile(config) and os.path.isfile(os.path.join(resume, "state.safetensors"))):
            raise UserError(f"{resume} holds no resumable run (config.json and state.safetensors)")
        with open(config, encoding="utf-8") as f:
            args = argparse.Namespace(**json.load(f)["args"])
        run_dir = resume
    device = check(args)
    if not resume:
        run_dir = args.out or os.path.join("runs", f"e2e-{args.method}-"
                                           f"{os.path.basename(args.model.rstrip('/'))}-"
                                           f"{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(run_dir) and os.listdir(run_dir):
            raise UserError(f"{run_dir} already holds files; pick another --out, or continue "
                            f"that run with --resume {run_dir}")
    train_set = e2e.load_examples("train", args.data)
    dev_set = e2e.load_examples("dev", args.data)
    if args.limit:
        train_set = [train_set[i] for i in range(min(args.limit, len(train_set)))]
        dev_set = [dev_set[i] for i in range(min(args.limit, len(dev_set)))]
    model = build_model(args, device)
    longest = max(len(examples[i][0]) for examples in (train_set, dev_set)
                  for i in range(len(examples))) - 1
    if longest > model.config.block_size:
        raise UserError(f"the longest example has {longest} tokens, more than the model's "
                        f"{model.config.block_size} positions")
    return args, device, model, train_set, dev_set, run_dir, bool(resume)


def main(argv=None) -> int:
    try:
        args, device, model, train_set, dev_set, run_dir, resume = setup(parse_args(argv))
    except (UserError, e2e.DataError, ValueError, FileNotFoundError, RuntimeError) as e:
        fail(str(e))
    if not resume:
        os.makedirs(run_dir, exist_ok=True)
        write_atomic(os.path.join(run_dir, "config.json"), json.dumps({
            "args": vars(args), "data_format": e2e.FORMAT, "torch": torch.__version__,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    return train(args, device, model, train_set, dev_set, run_dir,
                 resume_from=os.path.join(run_dir, "state.safetensors") if resume else None)


if __name__ == "__main__":
    sys.exit(main())
