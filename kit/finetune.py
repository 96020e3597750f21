"""One fine-tuning run, from its settings to its checkpoints: what train.py (the command line)
and reproduce.py (whole experiments of many runs) share.

    job = finetune.prepare(RunConfig(method="lora", rank=4, targets="q,v", out="runs/mine"))
    job.run()   # 0 when done; 1 on a non-finite loss; 130 / 143 after Ctrl-C / SIGTERM

prepare() does every check and owns the run folder (rundir.py) before anything is written: a bad
setting, a missing file, a folder in use raise one of cli.USER_ERRORS with nothing touched. The
run folder gets config.json (the run's settings, paths absolute), metrics.jsonl (every logged
value), the result (adapter.safetensors, or model/ for full fine-tuning) and state.safetensors
(trainable tensors, optimizer moments, RNG states, position). Both are saved every `save_every`
steps, at each epoch end, at the last step, and on Ctrl-C or SIGTERM (after the current step);
each save replaces the previous one atomically, so a kill at any moment leaves the last checkpoint
whole. `keep_epochs` also keeps each epoch's result (adapter-epoch{N}.safetensors, model-epoch{N}/),
for choosing the best epoch afterwards. A resumed run continues exactly where it stopped (the
losses equal an uninterrupted run's), on another device if need be; only the settings in
SAFE_ON_RESUME may change.

Under torchrun (prepare(cfg, world), distributed.py) the run is data-parallel: each rank trains
on its share of every global batch, DDP sums the gradients, and rank 0 alone writes the folder.
The steps are the one-process run's: the same batches, the loss divided by the whole batch's
reference tokens, so the same losses and weights up to float rounding (dropout aside: each rank
draws its own masks). The world size may change when a run resumes.
"""

import contextlib
import dataclasses
import json
import math
import os
import signal
import time

import torch

import lora
from data.task import open_task
from kit import adapter, cli, distributed, rundir, training
from kit.checkpoint import read_hf_config, write_atomic
from kit.cli import UserError
from model import GPT, GPTConfig, PRESETS


@dataclasses.dataclass
class RunConfig:
    """A run's settings, as train.py's flags name them. The defaults are the paper's GPT-2 M +
    LoRA recipe (Table 11), with what the paper leaves out taken from its released code."""
    model: str = "gpt2-medium"
    method: str = "lora"  # lora | full | adapter_h | adapter_l
    random_init: bool = False
    data: str | None = None
    format: str | None = None  # E2E's text: paper (None) or official; a JSONL task's: jsonl
    out: str | None = None
    rank: int = 4
    alpha: float = 32
    targets: str = "q,v"
    dropout: float = 0.0  # in the backbone: the released code has none
    lora_dropout: float = 0.1
    epochs: int = 5
    max_steps: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    warmup: int = 500
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    grad_clip: float = 0.0
    seed: int = 110  # the released code's
    device: str = "auto"
    dtype: str = "auto"
    compile: str | None = None
    bucket: bool = False
    eval_interval: int = 0
    log_interval: int = 10
    save_every: int = 1000
    limit: int = 0
    keep_epochs: bool = False
    # not recorded in config.json: the run folder to continue, and the settings set on purpose
    # (the command line's flags; checked against the method and, on a resume, SAFE_ON_RESUME)
    resume: str | None = None
    given: tuple = ()

    def recorded(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("resume", "given")}


METHODS = ("lora", "full", "adapter_h", "adapter_l")
# What a resumed run may change: how long it runs, where and how fast, how often it reports.
SAFE_ON_RESUME = ("--max-steps", "--epochs", "--device", "--dtype", "--log-interval",
                  "--eval-interval", "--save-every", "--compile")


# The flags each method leaves unused: given anyway, they are refused rather than ignored.
UNUSED = {"lora": (), "full": ("targets", "rank", "alpha", "lora_dropout"),
          "adapter_h": ("targets", "alpha", "lora_dropout"),
          "adapter_l": ("targets", "alpha", "lora_dropout")}


def check(cfg, world=distributed.ALONE) -> tuple[torch.device, torch.dtype | None]:
    """Refuse bad settings before anything is loaded or written: (device, autocast dtype)."""
    positive = {"--epochs": cfg.epochs, "--batch-size": cfg.batch_size,
                "--grad-accum": cfg.grad_accum, "--log-interval": cfg.log_interval}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    for flag, value in {"--max-steps": cfg.max_steps, "--warmup": cfg.warmup,
                        "--eval-interval": cfg.eval_interval, "--limit": cfg.limit,
                        "--save-every": cfg.save_every, "--weight-decay": cfg.weight_decay,
                        "--grad-clip": cfg.grad_clip}.items():
        if not value >= 0 or not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, not negative: got {value}")
    for flag, value in {"--lr": cfg.lr, "--alpha": cfg.alpha, "--dropout": cfg.dropout,
                        "--lora-dropout": cfg.lora_dropout,
                        "--label-smoothing": cfg.label_smoothing}.items():
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    if not cfg.lr > 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.batch_size % cfg.grad_accum:
        raise UserError(f"--batch-size {cfg.batch_size} is not a multiple of --grad-accum "
                        f"{cfg.grad_accum}")
    if cfg.batch_size % (world.size * cfg.grad_accum):  # (the global batch, split over ranks)
        raise UserError(f"--batch-size {cfg.batch_size} does not split over {world.size} "
                        f"processes x --grad-accum {cfg.grad_accum}: give a multiple of "
                        f"{world.size * cfg.grad_accum}")
    if cfg.compile == "cuda-graphs" and world.size > 1:
        raise UserError("--compile cuda-graphs is untested with several processes (DDP); use "
                        "--compile or no --compile under torchrun")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    try:  # --targets, --rank, --alpha, --lora-dropout: checked by the function lora.apply uses
        lora.check_settings(cfg.targets if cfg.method == "lora" else "q", cfg.rank, cfg.alpha,
                            cfg.lora_dropout)
    except ValueError as e:
        raise UserError(f"{e} (--targets, --rank, --alpha, --lora-dropout)") from None
    if cfg.random_init and cfg.method != "full":
        raise UserError(f"--random-init trains every weight from scratch, which is --method full; "
                        f"--method {cfg.method} adapts pretrained weights that it would lack")
    if unused := [name for name in UNUSED[cfg.method] if name in cfg.given]:
        raise UserError(f"--method {cfg.method} does not use "
                        f"{', '.join('--' + n.replace('_', '-') for n in unused)}; drop "
                        f"{'it' if len(unused) == 1 else 'them'}")
    device = world.place(cli.pick_device(cfg.device))
    return device, cli.amp_dtype(device, cfg.dtype, "training")


# --- the model -----------------------------------------------------------------------------------


def model_shape(name: str, dropout: float, who: str = "--random-init") -> GPTConfig:
    """The shape of --model (a preset, or a checkpoint's config.json), without its weights:
    what --random-init trains, and what reproduce.py sizes adapters by."""
    preset = name.removeprefix("openai-community/")
    if preset in PRESETS:
        return GPTConfig.from_preset(preset, dropout=dropout)
    folder = name if os.path.isdir(name) else os.path.dirname(name)
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise UserError(f"{who} needs the shape of --model {name}: a preset "
                        f"({', '.join(PRESETS)}) or a checkpoint folder with a config.json")
    return GPTConfig(**{**read_hf_config(config), "dropout": dropout})


def build_model(cfg, device) -> GPT:
    """The pretrained model with the method's trainable parameters (the rest frozen); with
    --random-init, the same shape with GPT-2's random init instead of its weights."""
    if cfg.random_init:
        torch.manual_seed(cfg.seed)
        model = GPT(model_shape(cfg.model, cfg.dropout))
    else:
        model = GPT.from_pretrained(cfg.model, dropout=cfg.dropout)
    torch.manual_seed(cfg.seed)  # LoRA's A (and the adapters) start from the seed
    try:  # what only the model's shape can refuse: a rank above its width
        if cfg.method == "lora":
            lora.apply(model, cfg.targets, r=cfg.rank, alpha=cfg.alpha,
                       dropout=cfg.lora_dropout)
        elif cfg.method in ("adapter_h", "adapter_l"):
            adapter.apply(model, "houlsby" if cfg.method == "adapter_h" else "lin", r=cfg.rank)
    except ValueError as e:
        raise UserError(f"{e} (--rank)") from None
    return model.to(device)


def describe(model, cfg) -> str:
    if cfg.method == "lora":
        return lora.describe(model)
    if cfg.method == "full":
        start = "random init (--random-init)" if cfg.random_init else cfg.model
        return f"full fine-tuning: all {model.num_params():,} parameters trainable, from {start}"
    return adapter.describe(model)


def result_path(cfg, run_dir: str, epoch: int | None = None) -> str:
    """Where the run's result goes: adapter.safetensors, or model/ for full fine-tuning; an
    epoch's kept copy (keep_epochs) is adapter-epoch{N}.safetensors, model-epoch{N}/."""
    suffix = "" if epoch is None else f"-epoch{epoch}"
    return os.path.join(run_dir, f"model{suffix}" if cfg.method == "full"
                        else f"adapter{suffix}.safetensors")


def save_result(model, cfg, run_dir: str, epoch: int | None = None):
    """What the run produces: the adapter file, or for full fine-tuning a GPT-2 checkpoint."""
    path = result_path(cfg, run_dir, epoch)
    if cfg.method == "lora":
        lora.save(model, path)
    elif cfg.method == "full":
        model.save_pretrained(path)
    else:
        adapter.save(model, path)


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
    """One run's loop: optimizer steps, dev evaluations, checkpoints, Ctrl-C and SIGTERM; one
    rank's part of it under torchrun (world)."""

    def __init__(self, cfg, device, amp_dtype, model, train_set, dev_set, run_dir, state=None,
                 world=distributed.ALONE):
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        self.model, self.train_set, self.dev_set, self.run_dir = model, train_set, dev_set, run_dir
        self.world = world
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = training.make_optimizer(model, cfg.lr, cfg.weight_decay,
                                                 fused=device.type == "cuda")
        # fp16 needs loss scaling; a disabled GradScaler is a no-op, so bf16 and fp32 share the code
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        # Compile the loss function, not the model: checkpoints are saved from `model` itself, so
        # they never get torch.compile's "_orig_mod." prefix.
        self.loss_fn, self.multiple = training.compiled_loss(cfg.compile)
        self.steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
        total = self.steps_per_epoch * cfg.epochs
        self.total = min(total, cfg.max_steps) if cfg.max_steps else total
        self.position = {"step": 0, "epoch": 0, "batch": 0, "last_good": None}
        if state:  # checked and loaded here, before anything is written
            self.position = training.load_state(state, model, self.optimizer, self.scaler)
        self.stop_code, self.saving = None, False  # exit code once a signal asks to stop
        self.clock = time.time()  # since the last log line, less evaluations and saves

    def step(self, batch: list, lr: float) -> tuple[torch.Tensor, int]:
        """One optimizer step on a batch (in --grad-accum micro-batches that add up to the
        batch's mean loss per reference token): (the loss, detached; input tokens). Under
        torchrun, this rank's share of the batch and of that loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_targets = sum(len(t) - p for t, p in batch)  # reference tokens + final EOT
        mine = self.world.share(batch)  # (the whole batch in one process)
        micro = self.cfg.batch_size // self.cfg.grad_accum // self.world.size
        # DDP averages the ranks' gradients: x size makes that their sum, the batch's gradient.
        # A rank that the epoch's short last batch leaves without examples still joins the
        # all-reduce, with weight 0.
        weight = self.world.size if mine else 0
        chunks = [mine[m:m + micro] for m in range(0, len(mine), micro)] or [batch[:1]]
        self.world.seed_step(self.cfg.seed, self.position["step"])
        total, tokens = torch.zeros((), device=self.device), 0
        for m, chunk in enumerate(chunks):
            with self.world.syncing(self.forward, now=m == len(chunks) - 1), \
                    cli.autocast(self.device, self.amp_dtype):
                loss = self.forward(*training.device_batch(chunk, self.device,
                                                           self.multiple)) / n_targets
                self.world.backward(self.scaler.scale(loss * weight))
            if mine:
                total += loss.detach()
                tokens += sum(len(t) - 1 for t, _ in chunk)
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, tokens

    def dev_loss(self) -> float:
        with self.paused():
            return training.dev_loss(self.model, self.loss_fn, self.dev_set,
                                     self.cfg.batch_size, self.device, self.amp_dtype,
                                     self.multiple, self.world)

    def finite_sum(self, running, steps: int, step: int) -> bool:
        """finite() of the loss logged since the last log line (summed over the ranks, so every
        rank decides the same)."""
        return not steps or self.finite(self.world.sum(running)[0] / steps, step)

    @contextlib.contextmanager
    def paused(self):
        """Evaluations and saves: their time is left out of the tokens/s of training steps."""
        start = time.time()
        yield
        self.clock += time.time() - start

    def save(self, where: dict, why: str, epoch_end: int | None = None):
        """The result (adapter or model) and the resumable state, both written atomically; a
        signal that arrives meanwhile waits until both are written. Weights that are no longer
        finite are never saved (Diverged): the last checkpoint stays the last good one. At an
        epoch's end with keep_epochs, that epoch's result is kept too (written first: a kill
        before the state is saved runs the epoch's end again, which writes the same file)."""
        if not bool(torch.stack([p.isfinite().all() for p in self.params]).all()):  # one sync
            raise Diverged(where["step"])
        self.saving = True
        with self.paused():
            self.position.update(where, last_good=where["step"])
            if self.world.main:  # (every rank holds the same weights)
                if epoch_end is not None and self.cfg.keep_epochs:
                    save_result(self.model, self.cfg, self.run_dir, epoch=epoch_end)
                save_result(self.model, self.cfg, self.run_dir)
                training.save_state(os.path.join(self.run_dir, "state.safetensors"),
                                    self.model, self.optimizer, self.scaler, self.position)
            self.world.barrier()  # no rank goes on (or exits) before the checkpoint is whole
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

    def kept(self) -> str:
        return (f"the last checkpoint (step {self.position['last_good']}) is in {self.run_dir}"
                if self.position["last_good"] is not None else "no checkpoint was saved")

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
        cfg = self.cfg
        step = self.position["step"]
        if step >= self.total:
            print(f"{self.run_dir} has run all its {self.total:,} steps already: nothing to do "
                  "(to train it longer, resume with a larger --max-steps or --epochs)")
            return 0
        if self.world.main:
            training.trim_log(self.run_dir, step)  # what ran after the checkpoint runs again
        self.log = training.Log(self.run_dir if self.world.main else None, step, self.total)
        self.log.write({"event": "start", "step": step, "total_steps": self.total,
                        "trainable": sum(p.numel() for p in self.params),
                        "processes": self.world.size},
                       f"{describe(self.model, cfg)}; {len(self.train_set):,} examples, "
                       f"{self.steps_per_epoch:,} steps per epoch, {self.total:,} steps"
                       + (f", resuming at step {step}" if step else "")
                       + (f"; {self.world.size} processes (torchrun), "
                          f"{cfg.batch_size // self.world.size} examples of each batch apiece"
                          if self.world.size > 1 else ""))
        if self.device.type == "cpu" and cfg.device == "auto":
            self.log.write({"event": "note", "device": "cpu"}, "no CUDA GPU here, so this "
                           "trains on the CPU: how long that takes is projected after the first "
                           f"{min(cfg.log_interval, self.total - step)} steps")
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # the model's forward and backward; under torchrun, DDP (it syncs the ranks' weights)
            self.forward = self.world.wrap(training.TrainingLoss(self.model, self.loss_fn,
                                                                 cfg.label_smoothing))
            return self.epochs()
        except Stop as e:
            self.log.write({"event": "quit", "signal": str(e), "step": self.position["step"]},
                           f"train.py: {e} again: quit without saving; {self.kept()}",
                           error=True)
            return e.code
        except Diverged as e:
            self.finite(float("nan"), e.args[0], what="the weights")
            return 1
        except distributed.LostRank as e:  # torchrun: another rank died or hung
            self.log.write({"event": "lost", "error": str(e), "step": self.position["step"]})
            return e.say("train.py", f"stopped, {self.kept()}")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.log.close()

    def epochs(self) -> int:
        cfg, position = self.cfg, self.position
        self.model.train()
        step = position["step"]
        running, running_steps, tokens = torch.zeros((), device=self.device), 0, 0
        self.clock = time.time()
        where = {k: position[k] for k in ("step", "epoch", "batch")}
        for epoch in range(position["epoch"], cfg.epochs):
            batches = training.epoch_batches(self.train_set, epoch, cfg.batch_size, cfg.seed,
                                             cfg.bucket)
            first = position["batch"] if epoch == position["epoch"] else 0
            for b in range(first, len(batches)):
                if step >= self.total:
                    break
                lr = training.lr_at(step, self.total, cfg.lr, cfg.warmup)
                loss, n = self.step([self.train_set[i] for i in batches[b]], lr)
                running, tokens = running + loss, tokens + n
                step, running_steps = step + 1, running_steps + 1
                position["step"] = step
                where = {"step": step, "epoch": epoch, "batch": b + 1}
                # a signal may reach the ranks at different steps: all stop after the same one.
                # (Asked before anything waits for the GPU: on GPUs this exchange, over gloo, is
                # also what finds a rank that died while NCCL waits for it.)
                stop = self.world.max(self.stop_code)
                if step % cfg.log_interval == 0 or step == self.total:
                    loss_sum, tokens = self.world.sum(running, tokens)  # (of every rank)
                    mean_loss = loss_sum / running_steps
                    if not self.finite(mean_loss, step):
                        return 1
                    self.log.progress(step, {"event": "train", "step": step, "epoch": epoch + 1,
                                             "loss": mean_loss, "lr": lr, "tokens_per_s":
                                             tokens / max(time.time() - self.clock, 1e-9)})
                    running, running_steps, tokens, self.clock = running * 0, 0, 0, time.time()
                if cfg.eval_interval and step % cfg.eval_interval == 0 and b + 1 < len(batches):
                    loss = self.dev_loss()
                    self.log.write({"event": "eval", "step": step, "epoch": epoch + 1,
                                    "dev_loss": loss}, f"step {step}: dev loss {loss:.4f}")
                if stop is not None:
                    if not self.finite_sum(running, running_steps, step):
                        return 1
                    self.save(where, "interrupted")
                    self.log.write({"event": "stopped", "step": step}, f"stopped at step {step}; "
                                   f"continue with: python train.py --resume {self.run_dir}")
                    return stop
                if cfg.save_every and step % cfg.save_every == 0 and step < self.total \
                        and b + 1 < len(batches):
                    if not self.finite_sum(running, running_steps, step):
                        return 1
                    self.save(where, f"every {cfg.save_every} steps")
            else:  # the epoch ran to its end
                if not self.finite_sum(running, running_steps, step):
                    return 1
                loss = self.dev_loss()
                self.log.write({"event": "eval", "step": step, "epoch": epoch + 1,
                                "dev_loss": loss}, f"epoch {epoch + 1}: dev loss {loss:.4f}")
                self.save({"step": step, "epoch": epoch + 1, "batch": 0}, f"epoch {epoch + 1}",
                          epoch_end=epoch + 1)
                continue
            break  # --max-steps reached inside the epoch
        if position["last_good"] != step:
            self.save(where, "last step")
        result = result_path(cfg, self.run_dir)
        self.log.write({"event": "done", "step": step}, f"done: {result}; decode and score it "
                       f"with: python sample.py --{'model' if cfg.method == 'full' else 'adapter'}"
                       f" {result}")
        return 0


# --- set-up ------------------------------------------------------------------------------------


def resumed(cfg: RunConfig) -> RunConfig:
    """The settings saved in cfg.resume's config.json, with the flags that are safe to change
    taken from the command line; any other flag given is refused."""
    config = os.path.join(cfg.resume, "config.json")
    if not os.path.isfile(config):
        raise UserError(f"{cfg.resume} holds no run to resume (no config.json): start one with "
                        f"--out {cfg.resume}")
    try:
        with open(config, encoding="utf-8") as f:
            saved = json.load(f).get("args")
    except (OSError, ValueError, AttributeError) as e:
        saved = f"unreadable: {e}"
    if not isinstance(saved, dict) or "dropout" not in saved:
        raise UserError(f"{config} is not a run's config.json written by train.py (its 'args': "
                        f"{str(saved)[:60]}); start a new run instead")
    safe = {flag.lstrip("-").replace("-", "_") for flag in SAFE_ON_RESUME}
    if unsafe := [name for name in cfg.given if name not in safe | {"resume"}]:
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
    saved.update({name: getattr(cfg, name) for name in cfg.given if name in safe})
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in saved.items() if k in known},
                     resume=os.path.abspath(cfg.resume), given=tuple(cfg.given))


def checked(cfg: RunConfig, world=distributed.ALONE) -> tuple[RunConfig, torch.device,
                                                               torch.dtype | None]:
    """The run's settings (a resumed run's from its config.json), checked, before anything is
    loaded or written: (settings, device, autocast dtype)."""
    if cfg.resume:
        cfg = resumed(cfg)
    device, amp_dtype = check(cfg, world)
    if not cfg.resume:  # paths recorded absolute, so a resume works from anywhere
        cfg = dataclasses.replace(cfg, out=cfg.out and os.path.abspath(cfg.out))
        for name in ("model", "data"):  # (a preset's name stays a name)
            if getattr(cfg, name) and os.path.exists(getattr(cfg, name)):
                setattr(cfg, name, os.path.abspath(getattr(cfg, name)))
    cfg.format = open_task(cfg.data, cfg.format).format  # (E2E's default text, or jsonl)
    return cfg, device, amp_dtype


def run_directory(cfg) -> rundir.Claim:
    """The run's folder, owned by this process from here on (rundir.py): --resume's, --out, or a
    new runs/<task>-<method>-<model>-<time>-<xxxx>. A new run refuses a folder that holds a
    checkpoint or someone's files."""
    hint = "wait for it to end, or pick another --out"
    if cfg.resume:
        return rundir.claim(cfg.resume, "train.py", hint)
    if not cfg.out:
        cli.check_writable("runs")
        name = (f"{open_task(cfg.data, cfg.format).name}-{cfg.method}-"
                f"{os.path.basename(cfg.model.rstrip('/'))}"
                + ("-scratch" if cfg.random_init else ""))
        return rundir.claim_new("runs", name, "train.py")
    cli.check_writable(cfg.out)
    owner = rundir.claim(cfg.out, "train.py", hint)
    files = {name for name in os.listdir(owner.folder)
             if name != rundir.LOCK and not rundir.is_stale(name)}
    if not files <= {"config.json", "metrics.jsonl"}:  # a checkpoint, or someone's files
        owner.release()
        raise UserError(f"{owner.folder} already holds files; pick another --out, or continue "
                        f"that run with --resume {owner.folder}")
    if files:
        print(f"{owner.folder} holds a run that never saved a checkpoint: starting it again")
    return owner


def setup(cfg, run_dir: str, device) -> tuple:
    """Everything training needs, every check done and nothing written: (model, train examples,
    dev examples, the state file to resume from or None)."""
    state = None
    if cfg.resume:
        state = os.path.join(run_dir, "state.safetensors")
        if not os.path.isfile(state):
            print(f"{run_dir} has no checkpoint yet: resuming it from step 0")
            state = None
    task = open_task(cfg.data, cfg.format)
    splits = {}
    for split in ("train", "dev"):
        examples = task.examples(split)
        splits[split] = [examples[i] for i in range(min(cfg.limit or len(examples),
                                                        len(examples)))]
    model = build_model(cfg, device)
    for split, examples in splits.items():  # (an example's last token is only a label)
        i = max(range(len(examples)), key=lambda i: len(examples[i][0]))
        if len(examples[i][0]) - 1 > model.config.block_size:
            raise UserError(f"{task.where(split, i)}: the example has {len(examples[i][0]) - 1} "
                            f"tokens, more than the model's {model.config.block_size} "
                            "positions; shorten it (or drop it)")
    return model, splits["train"], splits["dev"], state


def begin(cfg, run_dir: str):
    """What a start writes, once every check has passed: the leftovers of interrupted writes
    removed, and config.json: a new run's settings, or the flags a resume changed (so the next
    resume keeps them), listed under "resumed"."""
    for name in rundir.remove_stale_files(run_dir):
        print(f"removed {name}, left behind by an interrupted write")
    path = os.path.join(run_dir, "config.json")
    if cfg.resume:
        if changed := {name: getattr(cfg, name) for name in cfg.given if name != "resume"}:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            config["args"].update(changed)
            config.setdefault("resumed", []).append(
                {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed})
            write_atomic(path, json.dumps(config, indent=2))
        return
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):  # a run that never saved
        os.remove(os.path.join(run_dir, "metrics.jsonl"))
    write_atomic(path, json.dumps({
        "args": cfg.recorded(), "data_format": open_task(cfg.data, cfg.format).describe(),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


class Job:
    """A run that passed every check, its folder owned (by rank 0): run() trains it."""

    def __init__(self, cfg: RunConfig, folder: str, owner: rundir.Claim | None,
                 trainer: "Trainer"):
        self.cfg, self.folder, self.owner, self.trainer = cfg, folder, owner, trainer

    def run(self) -> int:
        """Train (or go on training) to the last step; the folder is released however it ends."""
        with self.owner or contextlib.nullcontext():
            if self.owner:
                begin(self.cfg, self.folder)
            return self.trainer.run()


def prepare(cfg: RunConfig, world: distributed.World = distributed.ALONE) -> Job:
    """Every check, the run folder owned, the model and data loaded, nothing written. A user's
    error (cli.USER_ERRORS) or Ctrl-C meanwhile leaves everything as it was: the folder this
    made, if any, goes again. Under torchrun every rank calls it: rank 0 owns the folder, a
    user error on any rank is raised on all (world.agree), downloads happen on rank 0 first."""
    cfg, device, amp_dtype = world.agree(checked, cfg, world)
    owner = world.agree(run_directory, cfg, main_only=True)
    try:
        folder = world.broadcast(owner and owner.folder)  # (a new run's name is rank 0's)
        if not cfg.resume:
            cfg.out = folder
        model, train_set, dev_set, state = world.agree(setup, cfg, folder, device,
                                                       main_first=True)
        trainer = world.agree(Trainer, cfg, device, amp_dtype, model, train_set, dev_set,
                              folder, state, world)
    except BaseException:
        if owner:
            owner.abandon()
            owner.release()
        raise
    return Job(cfg, folder, owner, trainer)
