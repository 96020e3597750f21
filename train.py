"""Fine-tune GPT-2 with LoRA: the paper's recipe and its training loop, top to bottom.

    python train.py --rank 4 --targets q,v                # GPT-2 M + LoRA on E2E (Table 11)
    python train.py --data webnlg                         # WebNLG (Table 14); DART: --data dart
    python train.py --data data/toy --model gpt2          # your own task (data/jsonl.py)
    torchrun --standalone --nproc_per_node 4 train.py     # the same run on 4 GPUs

Read it in order: the recipe (one dataclass, a field per flag, the defaults Table 11's), the
method's small pieces (the loss at the reference tokens, AdamW's groups, the learning-rate
schedule, the dev loss, the model with LoRA applied), then train(), which sets the run up and
runs the loop: learning rate, micro-batches, forward under autocast, backward, clip, step, log,
evaluate, save. The rest is a call or two at a time into the plumbing (run, log, world, hardware:
the map above train() says what each is and where it lives): skip it on a first read.

What the paper leaves out comes from its released code (microsoft/LoRA, examples/NLG): AdamW's
betas 0.9/0.999 and eps 1e-6, the schedule decaying to 0, dropout 0.1 on the LoRA path only (no
dropout in the backbone), seed 110, and the released pre-tokenized E2E text (--format paper,
data/e2e/paper_format.py). `--method full | adapter_h | adapter_l` trains Table 3's other rows;
`--method full --random-init` the same shape from scratch (what pretraining buys); `--quantize nf4`
is QLoRA, LoRA over a W0 kept in 4 bits (paper/qlora.py).

A run folder holds config.json, metrics.jsonl, the result (adapter.safetensors, or model/ for full
fine-tuning) and state.safetensors, saved atomically every --save-every steps, at each epoch end, at
the last step and after Ctrl-C, SIGTERM or SIGHUP (exit 130 / 143 / 129). `--resume RUN_DIR` goes on
with the losses of an uninterrupted run. Under torchrun, --batch-size stays the global batch: each
process takes its share, DDP sums the gradients, and rank 0 writes the folder.
"""

import dataclasses
import math
import sys

import torch
import torch.nn.functional as F

import lora
from data.e2e.prepare import FORMATS
from data.task import collate, loss_positions
from harness import bookkeeping
from model import GPT
from paper import adapter, qlora
from plumbing import cli, distributed, hardware
from plumbing.cli import flag

METHODS = ("lora", "full", "adapter_h", "adapter_l")  # LoRA, and Table 3's other rows


@dataclasses.dataclass
class Recipe:
    """One run's settings, a field per flag of train.py (the text beside each is its --help).
    The defaults are the paper's GPT-2 M + LoRA recipe on E2E (Table 11); a task's own values
    there (DART's) replace them where a flag is not given (Task.recipe)."""
    model: str = flag("gpt2-medium", "GPT-2 preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or "
                      "local checkpoint")
    method: str = flag("lora", "lora, full fine-tuning, or the Adapter^H / Adapter^L baselines",
                       choices=METHODS)
    random_init: bool = flag(False, "train from scratch: --model's shape with random weights "
                             "(GPT-2's init, seeded by --seed), nothing downloaded; needs "
                             "--method full")
    data: str | None = flag(None, "the task: e2e (the default: $E2E_DATA_DIR, else data/e2e/, "
                            "downloaded on first use), webnlg, dart, or a folder: theirs, or "
                            "yours with train.jsonl and dev.jsonl (data/jsonl.py)")
    format: str | None = flag(None, "E2E's text: paper (the default), the pre-tokenized text the "
                              "paper's released code trains on; official: the raw E2E CSVs",
                              choices=list(FORMATS))
    out: str | None = flag(None, "run directory (default: a new "
                           "runs/<task>-<method>-<model>-<time>-<xxxx>)")
    resume: str | None = flag(None, "continue the run saved in RUN_DIR with its settings; only "
                              + ", ".join(bookkeeping.SAFE_ON_RESUME) + " may change",
                              metavar="RUN_DIR")
    # LoRA (Sec. 4): W0 + (alpha / r) B A on the chosen matrices
    rank: int = flag(4, "LoRA rank r (the adapter bottleneck for adapter_h / adapter_l)",
                     group="LoRA / adapters")
    alpha: float = flag(32, "LoRA alpha: the update is scaled by alpha / r")
    targets: str = flag("q,v", "matrices LoRA adapts: q,k,v,o (attention) and fc,proj (MLP)")
    dropout: float = flag(0.0, "dropout in the GPT-2 backbone (embeddings, attention, residual "
                          "branches); the released code uses none")
    lora_dropout: float = flag(0.1, "dropout on the input of the LoRA path (paper: 0.1; DART 0)")
    # LoRA's descendants (lora.py's section after the merge, docs/variants.md)
    rslora: bool = flag(False, "rsLoRA: scale the update by alpha / sqrt(r), not alpha / r")
    dora: bool = flag(False, "DoRA: a trainable magnitude per output row; LoRA moves the "
                      "direction")
    init: str = flag("lora", "how A and B start: lora (A random, B zero), or pissa (W0's top r "
                     "singular directions; W0 keeps the rest)", choices=("lora", "pissa"))
    lora_plus: float = flag(1.0, "LoRA+: B's learning rate over A's (1: LoRA; its paper "
                            "suggests 16)")
    quantize: str | None = flag(None, "QLoRA: W0 of every Linear in the blocks kept in 4-bit "
                                "NormalFloat (paper/qlora.py)", choices=("nf4",))
    # the optimization (Table 11)
    epochs: int = flag(5, "passes over the training set", group="optimization")
    max_steps: int = flag(0, "stop after this many optimizer steps (0: run all epochs)")
    batch_size: int = flag(8, "examples per optimizer step")
    grad_accum: int = flag(1, "split each batch into this many micro-batches (same result, less "
                           "memory)")
    lr: float = flag(2e-4, "peak learning rate (AdamW)")
    warmup: int = flag(500, "linear warmup steps")
    weight_decay: float = flag(0.01, "AdamW's decoupled weight decay, on matrices only (DART: 0)")
    label_smoothing: float = flag(0.1, "of the training loss (the dev loss has none; DART: 0)")
    grad_clip: float = flag(0.0, "max gradient norm (0: off)")
    seed: int = flag(110, "the seed of the paper's released code")
    # where it runs, how fast, how it reports
    device: str = flag("auto", "auto (cuda, else mps, else cpu), cuda, cuda:N, mps, cpu",
                       group="hardware and logging")
    dtype: str = flag("auto", "autocast dtype, the weights kept in fp32 (auto: bf16 on CUDA, fp32 "
                      "on the CPU); fp16 adds a GradScaler", choices=("auto", "bf16", "fp16",
                                                                       "fp32"))
    compile: str | None = flag(None, "torch.compile the loss function (with the model in it); "
                               "cuda-graphs also replays CUDA graphs, over batches padded to a "
                               "few shapes", nargs="?", const="default",
                               choices=("default", "cuda-graphs"))
    bucket: bool = flag(False, "batch examples of similar length together (less padding)")
    eval_interval: int = flag(0, "dev loss every N steps, besides each epoch end (0: epoch ends "
                              "only)")
    log_interval: int = flag(10, "steps between log lines")
    save_every: int = flag(1000, "also checkpoint every N steps (0: only at epoch ends, the last "
                           "step and on Ctrl-C, SIGTERM or SIGHUP)")
    limit: int = flag(0, "use only the first N training and dev examples (quick runs)")
    keep_epochs: bool = flag(False, "also keep each epoch's result (adapter-epoch{N}.safetensors, "
                             "or model-epoch{N}/), to pick the best epoch afterwards "
                             "(reproduce.py)")

    def recorded(self) -> dict:
        """What config.json records: every setting but --resume."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "resume"}


def parse_args(argv=None) -> tuple[Recipe, tuple]:
    """The recipe, and the flags typed on the command line (not defaults): those are checked
    against the method, and on a resume against what may change."""
    return cli.parse_dataclass(Recipe, "train.py", argv, description="Fine-tune GPT-2 on E2E "
                               "NLG, WebNLG, DART or your own task (defaults: the paper's GPT-2 "
                               "M + LoRA recipe).")


# --- the method's pieces -------------------------------------------------------------------------


def token_loss(model, inputs, positions, labels, label_smoothing: float = 0.0):
    """Summed cross-entropy at the given positions (the reference tokens and the final
    <|endoftext|>: data/task.py): the LM head (50,257 outputs per position) runs only there,
    about half of the positions of an E2E batch."""
    hidden = model.features(inputs).flatten(0, 1).index_select(0, positions)
    logits = model.lm_head(hidden).float()
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")


def device_batch(examples: list, device, multiple: tuple[int, int] = (1, 1)):
    """A batch on the device: (inputs, loss positions, labels), copied from pinned memory on
    CUDA so the copy does not wait for the GPU. multiple rounds the sequence length and the number
    of loss positions up (padding takes no loss), for compiled code that wants few shapes."""
    inputs, targets = collate(examples, multiple=multiple[0])
    positions, labels = loss_positions(targets, multiple=multiple[1])
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True)
                     for t in (inputs, positions, labels))
    return inputs, positions, labels


def make_optimizer(model, lr: float, weight_decay: float, fused: bool = False,
                   lora_plus: float = 1.0):
    """AdamW over the trainable parameters (LoRA's A and B), betas 0.9/0.999 and eps 1e-6 as the
    released code; weight decay on matrices only (not on biases, LayerNorms, DoRA's m). Each
    group's learning rate is lr_scale x the schedule's: 1, but LoRA+ (Hayou et al. 2024, arXiv
    2402.12354) trains B lora_plus times faster than A, B being the factor whose learning rate
    should grow with the width (its groups: PEFT's create_loraplus_optimizer)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    plus = lora_plus != 1  # (B, and the vectors, in LoRA+'s faster groups, as PEFT puts them)
    groups = [{"params": [p for n, p in named if p.dim() >= 2 and not (plus and n.endswith(".B"))],
               "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0,
               "lr_scale": lora_plus}]
    if plus:
        groups.append({"params": [p for n, p in named if p.dim() >= 2 and n.endswith(".B")],
                       "weight_decay": weight_decay, "lr_scale": lora_plus})
    return torch.optim.AdamW([{**g, "lr": lr * g["lr_scale"]} for g in groups], lr=lr,
                             betas=(0.9, 0.999), eps=1e-6, fused=fused)


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then linear decay towards 0 at the last step. Step 0
    (the first update) has learning rate 0, as in the released code's LambdaLR schedule; Adam's
    moments still take its gradient."""
    if step < warmup:
        return lr * step / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def epoch_batches(examples, epoch: int, batch_size: int, seed: int,
                  bucket: bool = False) -> list[list[int]]:
    """The batches of one epoch: a seeded shuffle, so a resumed run sees the same order. bucket
    sorts by length within windows of 100 batches, then shuffles the batches (less padding)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(examples), generator=g).tolist()
    if bucket:
        window = 100 * batch_size
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s:s + window], key=lambda i: len(examples[i][0]))]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


@torch.no_grad()
def dev_loss(model, loss_fn, examples, batch_size: int, device, amp_dtype,
             multiple: tuple[int, int] = (1, 1), world=distributed.ALONE) -> float:
    """Mean cross-entropy per reference token on the dev examples (no label smoothing); multiple
    as device_batch's. Under torchrun each rank takes every world.size-th batch, and the sums
    are added up over the ranks: the number one process computes."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for start in range(world.rank * batch_size, len(examples), world.size * batch_size):
        batch = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        with hardware.autocast(device, amp_dtype):
            total += loss_fn(model, *device_batch(batch, device, multiple))
        count += sum(len(tokens) - prompt_length for tokens, prompt_length in batch)
    model.train()
    total, count = world.sum(total, count)
    return total / count


def build_model(cfg: Recipe, device) -> GPT:
    """GPT-2 with the method's trainable parameters, the rest frozen: LoRA's A and B on the
    chosen matrices (Sec. 4.2), an adapter's layers, or every weight (--method full). With
    --random-init, --model's shape with GPT-2's random init instead of its weights; with
    --quantize nf4, the frozen Linear weights in 4 bits (QLoRA) once LoRA is applied."""
    torch.manual_seed(cfg.seed)  # (--random-init: GPT-2's init, from the seed)
    model = (GPT(bookkeeping.model_shape(cfg.model, cfg.dropout)) if cfg.random_init
             else GPT.from_pretrained(cfg.model, dropout=cfg.dropout))
    torch.manual_seed(cfg.seed)  # LoRA's A (and the adapters) start from the seed
    try:  # what only the model's shape can refuse: a rank above its width
        if cfg.method == "lora":
            lora.apply(model, cfg.targets, r=cfg.rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                       rslora=cfg.rslora, dora=cfg.dora, init=cfg.init)
        elif cfg.method in ("adapter_h", "adapter_l"):
            adapter.apply(model, "houlsby" if cfg.method == "adapter_h" else "lin", r=cfg.rank)
    except ValueError as e:
        raise cli.UserError(f"{e} (--rank)") from None
    model.to(device)  # (then quantized there: PiSSA's residual is what goes into NF4, QPiSSA)
    return qlora.quantize(model) if cfg.quantize else model


def describe(model: GPT, cfg: Recipe) -> str:
    """One line: what trains, e.g. 'LoRA r=4 alpha=32 on q,v (48 matrices): 393,216 trainable
    parameters, 0.11% of 355,216,384'."""
    if cfg.method == "lora":
        return lora.describe(model)
    if cfg.method == "full":
        start = "random init (--random-init)" if cfg.random_init else cfg.model
        return f"full fine-tuning: all {model.num_params():,} parameters trainable, from {start}"
    return adapter.describe(model)


def save_result(model: GPT, cfg: Recipe, path: str):
    """What the run produces: LoRA's A and B (lora.save: 1.6 MB for the paper's setting), the
    adapters' tensors, or for full fine-tuning a whole GPT-2 checkpoint."""
    if cfg.method == "lora":
        lora.save(model, path)
    elif cfg.method == "full":
        model.save_pretrained(path)
    else:
        adapter.save(model, path)


# --- the run -------------------------------------------------------------------------------------
# What the loop calls besides torch and the pieces above (skip them on a first read):
#   run       harness/bookkeeping.py's Run: the flags checked and the folder owned (open_run), the
#             data and lengths checked, a resume restored, checkpoints saved, a signal's stop
#   log       its Log (run.training): the progress bar, metrics.jsonl, tokens/s and MFU; paused()
#             leaves evaluations and saves out of tokens/s
#   world     plumbing/distributed.py's World: torchrun's processes (alone, each call is a no-op):
#             a batch shared out (share), DDP's gradient sync (wrap_loss, syncing), sums, seeds
#   hardware  plumbing/hardware.py: autocast's dtype per device, torch.compile (compiled)
#   adapter   paper/adapter.py: the Adapter^H / Adapter^L baselines (--method adapter_h | adapter_l)


def train(cfg: Recipe, world: distributed.World = distributed.ALONE, given: tuple = (),
          go_on: str = bookkeeping.GO_ON) -> int:
    """One run, from its start (or its last checkpoint) to its last step: 0 when done, 1 when the
    loss or the weights stop being finite (or a rank of torchrun is lost), 130 / 143 / 129 after
    Ctrl-C / SIGTERM / SIGHUP (with a checkpoint). Bad settings raise a user error before
    anything is written. given: the flags typed; go_on: what a stop says to do next."""
    # the flags checked, the run folder owned; a resumed run's settings come from its config.json
    run = bookkeeping.open_run(cfg, world, given, go_on)
    cfg, device, amp_dtype = run.cfg, run.device, run.amp_dtype
    with run.setting_up():  # a user error or Ctrl-C in here leaves every file as it was
        # the data: each example is (token ids, prompt length), laid out as data/task.py says:
        # context<|endoftext|> target<|endoftext|>, the loss on the target and the last token
        train_set, dev_set = run.examples("train"), run.examples("dev")
        model = build_model(cfg, device)  # GPT-2 from its checkpoint, LoRA on W_q and W_v
        run.check_lengths(model)  # every example fits its positions
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, fused=device.type == "cuda",
                                   lora_plus=cfg.lora_plus)
        # fp16 needs loss scaling; a disabled GradScaler is a no-op, so bf16 and fp32 share the code
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        # --compile compiles the loss function, not the model: the checkpoints, saved from `model`
        # itself, never get torch.compile's "_orig_mod." prefix
        loss_fn, multiple = hardware.compiled(token_loss, cfg.compile)
        # what a checkpoint holds; a resumed run's is loaded into them: where it stopped
        start = run.restore(model, optimizer, scaler, save_result)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = min(steps_per_epoch * cfg.epochs, cfg.max_steps or math.inf)
    if start["step"] >= total:
        return run.done_already(total)
    # the loss as one module: under torchrun DDP's, which sums the ranks' gradients in backward
    forward = world.wrap_loss(model, loss_fn, cfg.label_smoothing)

    with run.training(describe(model, cfg), len(train_set), total) as log:
        model.train()
        step, where = start["step"], start
        for epoch in range(start["epoch"], cfg.epochs):
            batches = epoch_batches(train_set, epoch, cfg.batch_size, cfg.seed, cfg.bucket)
            first = start["batch"] if epoch == start["epoch"] else 0
            last = min(len(batches), first + total - step)  # (--max-steps may end it early)
            for b in range(first, last):
                # the learning rate: linear warmup, then linear decay to 0 (Table 11)
                lr = lr_at(step, total, cfg.lr, cfg.warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]  # (1, but LoRA+'s B: --lora-plus)
                # the batch in --grad-accum micro-batches (under torchrun, this rank's share of
                # it): each loss divided by the batch's reference tokens, so that the gradients
                # add up to the gradient of the batch's mean loss
                batch = [train_set[i] for i in batches[b]]
                n_targets = sum(len(tokens) - prompt for tokens, prompt in batch)
                chunks, weight = world.share(batch, cfg.batch_size // cfg.grad_accum)
                world.seed_step(cfg.seed, step)  # dropout's masks (each rank its own)
                for m, chunk in enumerate(chunks):
                    # forward and loss under autocast: --dtype's (bf16 on CUDA by default)
                    with world.syncing(forward, now=m == len(chunks) - 1), \
                            hardware.autocast(device, amp_dtype):
                        loss = forward(*device_batch(chunk, device, multiple)) / n_targets
                    # backward outside autocast, as PyTorch's AMP notes ask (weight is 1 in one
                    # process; under torchrun the number of ranks, as DDP averages what the last
                    # micro-batch's backward sums over them: a rank lost there is named)
                    with world.guard():
                        scaler.scale(loss * weight).backward()
                    log.count(loss, chunk, weight)
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)  # AdamW on A and B (fp16: skipped when inf or NaN)
                scaler.update()  # (fp16: after a skipped step, a lower loss scale)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                log.scaled(step, scaler)  # (fp16: a skipped step said, with the scale)
                where = {"step": step, "epoch": epoch, "batch": b + 1}  # where a resume goes on
                # log, evaluate, save; Ctrl-C, SIGTERM or SIGHUP on any rank stops every rank here
                stop = run.stop_requested(step)
                if step % cfg.log_interval == 0 or step == total:
                    log.train(step, epoch + 1, lr)
                if cfg.eval_interval and step % cfg.eval_interval == 0 and b + 1 < len(batches):
                    with log.paused():  # (evaluations and saves are left out of tokens/s)
                        loss = dev_loss(model, loss_fn, dev_set, cfg.batch_size, device,
                                        amp_dtype, multiple, world)
                    log.eval(step, epoch + 1, loss, f"step {step}")
                if stop:
                    run.save(where, "interrupted")
                    return run.stopped(step, stop)
                if cfg.save_every and step % cfg.save_every == 0 and step < total \
                        and b + 1 < len(batches):
                    run.save(where, f"every {cfg.save_every} steps")
            if last < len(batches):
                break  # --max-steps reached inside the epoch
            # the epoch ran to its end: its dev loss, and a checkpoint
            log.check(step)  # (a loss no longer finite stops the run first)
            with log.paused():
                loss = dev_loss(model, loss_fn, dev_set, cfg.batch_size, device, amp_dtype,
                                multiple, world)
            log.eval(step, epoch + 1, loss, f"epoch {epoch + 1}")
            run.save({"step": step, "epoch": epoch + 1, "batch": 0}, f"epoch {epoch + 1}",
                     epoch_end=epoch + 1)
        if run.saved_at != step:
            run.save(where, "last step")
        return run.done(step)
    return run.exit_code  # 1: the loss or weights diverged, or a rank was lost; 130 / 143 / 129


def main(argv=None) -> int:
    cfg, given = parse_args(argv)
    try:
        world = distributed.start()  # torchrun's processes join here; alone, nothing happens
        with cli.stopping_on_signals():  # SIGTERM, SIGHUP: as Ctrl-C
            code = train(cfg, world, given)
    except KeyboardInterrupt as e:  # (once training runs, a signal saves after the step instead)
        cli.interrupted("train.py", "stopped before training began; nothing was written"
                        + (f" ({bookkeeping.way_on(bookkeeping.GO_ON, cfg.resume)})"
                           if cfg.resume else ""), e)
    except cli.USER_ERRORS as e:
        cli.fail("train.py", e)
    except cli.WriteError as e:  # a full disk, a folder no longer writable: e says what was kept
        cli.cannot_write("train.py", e)
    except distributed.LostRank as e:
        return e.say("train.py", "stopped before training began")
    world.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
