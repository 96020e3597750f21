"""What a training run needs besides its loop (train.py): its settings checked, its folder owned,
a resume, the checkpoints, Ctrl-C, SIGTERM and SIGHUP, the log. train.py calls it in this order:

    run = bookkeeping.open_run(cfg, world, given, go_on)  # every check; the folder owned
    with run.setting_up():               # a user error or Ctrl-C in here: every file as it was
        run.examples("train"); ...; run.check_lengths(model)
        start = run.restore(model, optimizer, scaler, save_result)  # a resumed run's state
    with run.training(what, examples, total) as log:  # config.json, signals, metrics.jsonl
        log.count(loss, ...); stop = run.stop_requested(step); log.train(...); log.eval(...)
        run.save(where, why); return run.stopped(step, stop)  # at the end: run.done(step)
    return run.exit_code  # after a second signal, a loss or weights no longer finite, a lost rank

A run folder holds config.json (the settings, paths absolute), metrics.jsonl (every logged
value), the result (adapter.safetensors, or model/ for full fine-tuning) and state.safetensors
(the trainable tensors, the optimizer's moments, the RNG states, the position). Both are saved
atomically at every checkpoint, so a kill at any moment leaves the last one whole; weights that
are no longer finite are never saved. `keep_epochs` also keeps each epoch's result
(adapter-epoch{N}.safetensors, model-epoch{N}/). A resumed run goes on where it stopped with an
uninterrupted run's losses, on another device if need be; only SAFE_ON_RESUME may change.

Ctrl-C, SIGTERM or SIGHUP: every rank stops after the same step, saves, and exits 130 / 143 /
129; a second signal quits at once, unless a checkpoint is being written. Under torchrun
(distributed.py) every rank runs the same calls: rank 0 owns and writes the folder, a user error
on any rank is raised on all, and rank 0 loads (and downloads) first.
"""

import contextlib
import dataclasses
import json
import math
import os
import random
import shlex
import signal
import sys
import time

import torch

import lora
from data.task import open_task
from model import PRESETS, GPTConfig
from paper import adapter, mfu
from plumbing import cli, distributed, hardware, rundir
from plumbing.checkpoint import (CheckpointError, check_base, load_metadata, load_tensors,
                                 read_hf_config, save_tensors, short_list, tensor_mismatch,
                                 write_atomic, writing)
from plumbing.errors import UserError, WriteError

# The route that ends in minutes on a CPU (docs/no-gpu.md): GPT-2 small, a few hundred steps
QUICK_ROUTE = "python train.py --model gpt2 --max-steps 200 --warmup 20 --out runs/quick"
# The MFU a CPU training run reaches against its measured fp32 matrix-product speed (paper/mfu.py):
# this machine's, GPT-2 small and medium shapes, LoRA (BENCHMARKS.md); what projects a CPU run's
# time before its first step
CPU_MFU = 0.75

# What a resumed run may change: how long it runs, where and how fast, how often it reports.
SAFE_ON_RESUME = ("--max-steps", "--epochs", "--device", "--dtype", "--log-interval",
                  "--eval-interval", "--save-every", "--compile")
# The flags each method leaves unused: given anyway, they are refused rather than ignored.
VARIANTS = ("rslora", "dora", "init", "lora_plus")  # LoRA's descendants' flags
UNUSED = {"lora": (), "full": ("targets", "rank", "alpha", "lora_dropout", *VARIANTS),
          "adapter_h": ("targets", "alpha", "lora_dropout", *VARIANTS),
          "adapter_l": ("targets", "alpha", "lora_dropout", *VARIANTS)}


# --- the settings ------------------------------------------------------------------------------


def check(cfg, given: tuple = (), world=distributed.ALONE) -> tuple[torch.device,
                                                                     torch.dtype | None]:
    """Refuse bad settings (given: the flags typed) before anything is loaded or written:
    (device, autocast dtype)."""
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
                        "--lora-dropout": cfg.lora_dropout, "--lora-plus": cfg.lora_plus,
                        "--label-smoothing": cfg.label_smoothing}.items():
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    for flag, value in {"--lr": cfg.lr, "--lora-plus": cfg.lora_plus}.items():
        if not value > 0:
            raise UserError(f"{flag} must be positive, got {value}")
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
    if cfg.quantize and cfg.method != "lora":
        raise UserError(f"--quantize {cfg.quantize} is QLoRA, LoRA over a frozen W0 kept in 4 "
                        f"bits; --method {cfg.method} " + (
                            "trains every weight, which 4-bit codes cannot hold" if cfg.method ==
                            "full" else "is not built over a quantized W0 here") + ": drop one")
    if cfg.quantize and cfg.compile:
        raise UserError(f"--compile is untested with --quantize {cfg.quantize} (paper/qlora.py's "
                        "dequantizing autograd.Function): drop one")
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}  # (typed as the default, a
    if unused := [name for name in UNUSED[cfg.method]  # flag changes nothing: taken)
                  if name in given and getattr(cfg, name) != defaults[name]]:
        raise UserError(f"--method {cfg.method} does not use "
                        f"{', '.join('--' + n.replace('_', '-') for n in unused)}; drop "
                        f"{'it' if len(unused) == 1 else 'them'}")
    device = world.place(hardware.pick_device(cfg.device))
    return device, hardware.amp_dtype(device, cfg.dtype, "training")


def resumed(cfg, given: tuple = ()):
    """The settings saved in cfg.resume's config.json, with the flags that are safe to change
    taken from the command line; any other flag given (typed) is refused."""
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
    if unsafe := [name for name in given if name not in safe | {"resume"}]:
        flags = ", ".join("--" + name.replace("_", "-") for name in unsafe)
        raise UserError(f"{flags} cannot change when a run resumes (only "
                        f"{', '.join(SAFE_ON_RESUME)} can); start a new run with --out instead")
    # runs saved before --format and --lora-dropout existed trained on the CSVs' own text,
    # with one dropout for the model and the LoRA path
    saved.setdefault("format", "official")
    saved.setdefault("lora_dropout", saved["dropout"])
    saved.setdefault("save_every", 0)
    saved.setdefault("random_init", False)
    saved.setdefault("quantize", None)
    if saved.get("compile") in (True, False):  # a switch before cuda-graphs existed
        saved["compile"] = "default" if saved["compile"] else None
    saved.update({name: getattr(cfg, name) for name in given if name in safe})
    known = {f.name for f in dataclasses.fields(cfg)}
    return type(cfg)(**{k: v for k, v in saved.items() if k in known},
                     resume=os.path.abspath(cfg.resume))


def checked(cfg, given: tuple = (), world=distributed.ALONE) -> tuple:
    """The run's settings (a resumed run's from its config.json), checked, before anything is
    loaded or written: (settings, device, autocast dtype)."""
    if cfg.resume:
        cfg = resumed(cfg, given)
    else:  # Table 11's values for the task where they are not E2E's (train.py's), unless given
        cfg = dataclasses.replace(cfg, **recipe(cfg, given))
    device, amp_dtype = check(cfg, given, world)
    if not cfg.resume:  # paths recorded absolute, so a resume works from anywhere
        cfg = dataclasses.replace(cfg, out=cfg.out and os.path.abspath(cfg.out))
        for name in ("model", "data"):  # (a preset's name stays a name)
            if getattr(cfg, name) and os.path.exists(getattr(cfg, name)):
                setattr(cfg, name, os.path.abspath(getattr(cfg, name)))
    cfg.format = open_task(cfg.data, cfg.format).format  # (E2E's default text, or jsonl)
    return cfg, device, amp_dtype


def recipe(cfg, given: tuple = ()) -> dict:
    """The settings that a new run takes from its task's recipe (Task.recipe): those not given
    (typed)."""
    return {k: v for k, v in open_task(cfg.data, cfg.format).recipe.items() if k not in given}


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


def result_path(method: str, run_dir: str, epoch: int | None = None) -> str:
    """Where a run's result goes: adapter.safetensors, or model/ for full fine-tuning; an
    epoch's kept copy (keep_epochs) is adapter-epoch{N}.safetensors, model-epoch{N}/."""
    suffix = "" if epoch is None else f"-epoch{epoch}"
    return os.path.join(run_dir, f"model{suffix}" if method == "full"
                        else f"adapter{suffix}.safetensors")


# --- the run folder ------------------------------------------------------------------------------


def run_directory(cfg) -> rundir.Claim:
    """The run's folder, owned by this process from here on (rundir.py): --resume's, --out, or a
    new runs/<task>-<method>-<model>-<time>-<xxxx>. A new run refuses a folder that holds a
    checkpoint or someone's files."""
    hint = "wait for it to end, or pick another --out"
    if cfg.resume:  # (a run goes on in its own folder: it must be writable)
        cli.check_writable(cfg.resume, "--resume", "make it writable, or copy the folder "
                                                   "elsewhere and resume the copy")
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
                        f"that run with --resume {shlex.quote(owner.folder)}")
    if files:
        print(f"{owner.folder} holds a run that never saved a checkpoint: starting it again")
    return owner


def begin(cfg, run_dir: str, given: tuple = (), precision: str = "fp32"):
    """What a start writes, once every check has passed: the leftovers of interrupted writes
    removed, and config.json: a new run's settings and what it computes in (precision), or the
    flags a resume changed (so the next resume keeps them), listed under "resumed"."""
    for name in rundir.remove_stale_files(run_dir):
        print(f"removed {name}, left behind by an interrupted write")
    path = os.path.join(run_dir, "config.json")
    if cfg.resume:
        if changed := {name: getattr(cfg, name) for name in given if name != "resume"}:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            config["args"].update(changed)
            config.setdefault("resumed", []).append(
                {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed,
                 "precision": precision})
            config["precision"] = precision
            write_atomic(path, json.dumps(config, indent=2))
        return
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):  # a run that never saved
        os.remove(os.path.join(run_dir, "metrics.jsonl"))
    write_atomic(path, json.dumps({
        "args": cfg.recorded(), "data_format": open_task(cfg.data, cfg.format).describe(),
        "precision": precision, "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


# --- the resumable state -------------------------------------------------------------------------


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
    meta = {**position, "scaler": scaler.state_dict() if scaler.is_enabled() else None}
    save_tensors(path, tensors, {"state": json.dumps(meta)})


def load_state(path: str, model, optimizer, scaler) -> dict:
    """Put a saved state back in place (CUDA or CPU, whatever it was saved on); returns the
    position it was saved at. A damaged file, or the state of another run, raises
    CheckpointError before anything changes."""
    try:
        tensors, meta = load_tensors(path), json.loads(load_metadata(path)["state"])
    except (CheckpointError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is damaged and cannot be resumed ({str(e)[:120]}); start a "
                              "new run, or resume from a copy of the run directory") from None
    expected = {f"param.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    problems = tensor_mismatch({k: v for k, v in tensors.items() if k.startswith("param.")},
                               expected)
    if problems:
        raise CheckpointError(f"{path} holds the state of another run (another method, targets "
                              f"or rank?): {problems}")
    if bad := [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]:
        raise CheckpointError(f"{path} holds NaN or infinite values ({short_list(bad, 3)}): the "
                              "run had diverged when it was saved, so it cannot go on from there; "
                              "start a new run (a lower --lr?)")
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
    if scaler.is_enabled() and meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    return meta


# --- the log -------------------------------------------------------------------------------------


def roughly(seconds: float) -> str:
    """'about 7 minutes', 'about 40 hours', 'about 1.7 days': a projection's precision."""
    for unit, size, limit in (("seconds", 1, 90), ("minutes", 60, 5400), ("hours", 3600, 172800)):
        if seconds < limit:
            return f"about {max(1, round(seconds / size))} {unit}"
    return f"about {seconds / 86400:.1f} days"


def duration(seconds: float) -> str:
    """'04:05:06', or with days: '10 d 16:57:16'."""
    days, rest = divmod(int(seconds), 86400)
    clock = time.strftime("%H:%M:%S", time.gmtime(rest))
    return f"{days} d {clock}" if days else clock


def trim_log(run_dir: str, step: int):
    """Drop what metrics.jsonl logged after `step` (the checkpoint a run resumes from): those
    steps run again, and each step stays in the log once."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(kept))


class Diverged(Exception):
    """The loss or the weights are no longer finite: the run stops, and nothing more is saved
    over the last good checkpoint."""

    def __init__(self, what: str, value: float, step: int):
        super().__init__(f"{what} became {value} at step {step}")
        self.what, self.value, self.step = what, value, step


class Log:
    """Progress on the terminal (a tqdm bar, or plain lines when stderr is not a terminal) and
    every value in metrics.jsonl; run_dir None: nothing at all (the ranks of torchrun but 0).
    It keeps the loss, tokens and FLOPs since the last log line (every rank's, summed when
    logged), and the clock of training tokens/s and MFU (paper/mfu.py: the FLOPs the steps need
    over their time, over the device's peak), which evaluations and saves (paused) do not
    count."""

    def __init__(self, run_dir: str | None, step: int, total: int,
                 world=distributed.ALONE, device=torch.device("cpu"), model=None,
                 amp_dtype=None):
        from tqdm import tqdm

        self.silent = run_dir is None
        self.path, self.file = None if self.silent else os.path.join(run_dir, "metrics.jsonl"), None
        if self.path:
            with writing(self.path):
                self.file = open(self.path, "a", encoding="utf-8")
        self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True,
                        disable=self.silent or not sys.stderr.isatty())
        self.total, self.start, self.start_step, self.world = total, time.time(), step, world
        self.projected = False  # the time the whole run takes, said once
        self.running, self.tokens = torch.zeros((), device=device), 0  # since the last line
        self.model, self.flops = model, 0
        self.peak = mfu.peak(device, amp_dtype)[0] if model is not None else None
        self.logged, self.clock = step, time.time()
        self.scale = None  # fp16's loss scale after the last step (scaled)

    def write(self, record: dict, line: str | None = None, error: bool = False):
        if self.silent:
            return
        with writing(self.path):  # (a disk that fills up: a WriteError, saying what was kept)
            self.file.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
            self.file.flush()
        if line and (self.bar.disable or error):
            print(line, file=sys.stderr if error else sys.stdout, flush=True)
        elif line:
            self.bar.write(line)

    def count(self, loss: torch.Tensor, examples: list, weight: float):
        """A micro-batch's loss and input tokens, for the next line (not where weight is 0: a
        rank without examples in a short last batch)."""
        if weight:
            self.running += loss.detach()
            self.tokens += sum(len(tokens) - 1 for tokens, _ in examples)
            if self.model is not None:
                self.flops += mfu.batch_flops(self.model, examples)

    def check(self, step: int):
        """Diverged when the mean loss since the last line is no longer finite (summed over the
        ranks, so every rank decides the same)."""
        if step > self.logged:
            self._finite(self.world.sum(self.running)[0] / (step - self.logged), step)

    @staticmethod
    def _finite(value: float, step: int):
        if not math.isfinite(value):
            raise Diverged("the loss", value, step)

    def train(self, step: int, epoch: int, lr: float):
        """The log line of the steps since the last one: their mean loss, lr, tokens/s."""
        loss_sum, tokens, flops = self.world.sum(self.running, self.tokens, self.flops)  # (all)
        mean_loss = loss_sum / (step - self.logged)
        self._finite(mean_loss, step)
        seconds = max(time.time() - self.clock, 1e-9)
        self.progress(step, {"event": "train", "step": step, "epoch": epoch, "loss": mean_loss,
                             "lr": lr, "tokens_per_s": tokens / seconds,
                             "mfu": flops / seconds / (self.peak * self.world.size)
                             if self.peak else None})
        self.running, self.tokens, self.flops = self.running * 0, 0, 0
        self.logged, self.clock = step, time.time()

    def scaled(self, step: int, scaler):
        """fp16: a step the GradScaler skipped (its gradients inf or NaN: the weights stay as
        they were) said, with the scale it lowered; nothing without loss scaling. (It reads the
        scale each step: one wait for the GPU, in fp16 runs only.)"""
        if not scaler.is_enabled():
            return
        scale = scaler.get_scale()
        if self.scale is not None and scale < self.scale:
            self.write({"event": "skipped", "step": step, "scale": scale, "was": self.scale},
                       f"step {step}: fp16 gradients inf or NaN, the step skipped (weights "
                       f"unchanged); loss scale {self.scale:,.0f} -> {scale:,.0f}")
        self.scale = scale

    def eval(self, step: int, epoch: int, loss: float, when: str):
        self.write({"event": "eval", "step": step, "epoch": epoch, "dev_loss": loss},
                   f"{when}: dev loss {loss:.4f}")

    @contextlib.contextmanager
    def paused(self):
        """Evaluations and saves: their time is left out of the tokens/s of training steps."""
        start = time.time()
        yield
        self.clock += time.time() - start

    def progress(self, step: int, record: dict):
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(epoch=record["epoch"], loss=f"{record['loss']:.3f}",
                             lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}",
                             **({} if record["mfu"] is None else
                                {"mfu": f"{100 * record['mfu']:.1f}%"}))
        done = step - self.start_step
        seconds = (time.time() - self.start) / max(done, 1)
        eta = seconds * (self.total - step)
        utilization = "" if record["mfu"] is None else f"MFU {100 * record['mfu']:.1f}% | "
        self.write(record, None if not self.bar.disable else
                   f"step {step}/{self.total} | epoch {record['epoch']} | loss "
                   f"{record['loss']:.4f} | lr {record['lr']:.2e} | "
                   f"{record['tokens_per_s']:,.0f} tok/s | {utilization}ETA {duration(eta)}")
        if not self.projected and step < self.total:
            self.projected = True
            self.write({"event": "projected", "step": step, "seconds_per_step": seconds},
                       f"{seconds:.3g} s per step so far: the {self.total - step:,} steps left "
                       f"take about {duration(eta)}")

    def close(self):
        self.bar.close()
        if self.file:
            with contextlib.suppress(OSError):  # (what a full disk refused is refused again)
                self.file.close()


# --- the run -------------------------------------------------------------------------------------


class Stop(Exception):
    """A second Ctrl-C, SIGTERM or SIGHUP outside a checkpoint write: quit without saving."""

    def __init__(self, name: str, code: int):
        super().__init__(name)
        self.code = code


class Run:
    """One run that passed every check, its folder owned (by rank 0 under torchrun): what the
    loop in train.py calls for its data, checkpoints, signals and log."""

    def __init__(self, cfg, device, amp_dtype, folder: str, owner: rundir.Claim | None,
                 state: str | None, world=distributed.ALONE, given: tuple = (),
                 go_on: str = ""):
        self.cfg, self.device, self.amp_dtype, self.world = cfg, device, amp_dtype, world
        self.given, self.go_on = given, go_on  # the flags typed; what a stop says to do next
        self.folder, self.owner, self.state = folder, owner, state
        self.task, self.splits = None, {}  # the examples handed out, by split
        self.position = {"step": 0, "epoch": 0, "batch": 0, "last_good": None}
        self.step = 0  # the steps done so far
        self.log, self.exit_code = None, None
        self.stop_code, self.saving = None, False  # exit code once a signal asks to stop

    @contextlib.contextmanager
    def setting_up(self):
        """Around loading the data and the model: every rank, rank 0 first (it downloads and
        caches, the others read what it wrote); a user error on any rank is raised on all. Any
        error or Ctrl-C meanwhile releases the folder, and removes it again if this run made
        it: nothing has been written yet."""
        try:
            with self.world.agreeing(main_first=True):
                yield
        except BaseException:
            if self.owner:
                self.owner.abandon()
                self.owner.release()
            raise

    def examples(self, split: str) -> list:
        """The split's training examples (task.examples: (token ids, prompt length)), the first
        --limit of them where it is set."""
        self.task = self.task or open_task(self.cfg.data, self.cfg.format)
        examples = self.task.examples(split)
        n = min(self.cfg.limit or len(examples), len(examples))
        self.splits[split] = [examples[i] for i in range(n)]
        return self.splits[split]

    def check_lengths(self, model):
        """Refuse an example longer than the model's positions, naming where it comes from (an
        example's last token is only a label)."""
        for split, examples in self.splits.items():
            i = max(range(len(examples)), key=lambda i: len(examples[i][0]))
            if len(examples[i][0]) - 1 > model.config.block_size:
                raise UserError(f"{self.task.where(split, i)}: the example has "
                                f"{len(examples[i][0]) - 1} tokens, more than the model's "
                                f"{model.config.block_size} positions; shorten it (or drop it)")

    def restore(self, model, optimizer, scaler, save_result) -> dict:
        """What a checkpoint holds: the model's trainable tensors, the optimizer and the scaler
        (state.safetensors) and the result (save_result(model, cfg, path) writes it). A resumed
        run's state is loaded into them, checked first. Returns where the run starts: its step,
        epoch and batch."""
        self.model, self.optimizer, self.scaler, self.save_result = (model, optimizer, scaler,
                                                                     save_result)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if self.state:
            self.check_same_base(model)
            self.position = load_state(self.state, model, optimizer, scaler)
        self.step = self.position["step"]
        return {k: self.position[k] for k in ("step", "epoch", "batch")}

    def check_same_base(self, model):
        """A resumed run goes on over the base it started from: the weights its adapter's
        fingerprint was taken of (sample.py's check of the same file) are the ones --model holds
        now. Full fine-tuning keeps every weight in its state: there, nothing else matters."""
        path = result_path(self.cfg.method, self.folder)
        if self.cfg.method == "full" or not os.path.isfile(path):
            return
        weights = (lora.base_weights(model, lora.settings(model)["targets"])
                   if self.cfg.method == "lora" else adapter.base_weights(model))
        try:
            check_base(path, model, weights)
        except CheckpointError:
            raise CheckpointError(
                f"{self.folder} was trained on other weights than {self.cfg.model} holds now (a "
                "fingerprint of its W0 differs): put back the checkpoint it started from, or "
                "start a new run; nothing was changed") from None

    @property
    def saved_at(self) -> int | None:
        """The step of the last checkpoint (None before the first)."""
        return self.position["last_good"]

    def done_already(self, total: int) -> int:
        """A finished run resumed as it was: nothing to train (exit code 0)."""
        with self.owner or contextlib.nullcontext():
            if self.owner:
                begin(self.cfg, self.folder, self.given, hardware.precision(self.amp_dtype))
            print(f"{self.folder} has run all its {total:,} steps already: nothing to do (to "
                  "train it longer, resume with a larger --max-steps or --epochs)")
        return 0

    @contextlib.contextmanager
    def training(self, what: str, examples: int, total: int):
        """Around the loop: config.json written, Ctrl-C, SIGTERM and SIGHUP caught (save after
        the step), metrics.jsonl opened (what ran after a resumed checkpoint dropped: it runs
        again) and yielded; the folder released at the end, however it ends. A second signal, a
        loss or weights no longer finite, a lost rank: one line, and exit_code says which. A
        write the OS refuses (a full disk) raises WriteError, saying what was kept."""
        self.saving = True  # a second signal before the loop waits for it
        previous = {s: signal.signal(s, self.on_signal)
                    for s in (signal.SIGINT, *cli.STOP_SIGNALS)}
        try:
            with self.owner or contextlib.nullcontext():
                if self.owner:
                    begin(self.cfg, self.folder, self.given, hardware.precision(self.amp_dtype))
                    trim_log(self.folder, self.step)  # what ran after the checkpoint runs again
                self.log = Log(self.folder if self.world.main else None, self.step, total,
                               self.world, self.device, self.model, self.amp_dtype)
                if self.scaler.is_enabled():  # (a resumed run's, as its checkpoint had it)
                    self.log.scale = self.scaler.get_scale()
                self._started(what, examples, total)
                try:
                    self.saving = False  # from here on a second signal quits (Stop, below)
                    yield self.log
                except Stop as e:
                    self.log.write({"event": "quit", "signal": str(e), "step": self.step},
                                   f"train.py: {e} again: quit without saving; {self.kept()}",
                                   error=True)
                    self.exit_code = e.code
                except Diverged as e:
                    kept = (f"the last good checkpoint (step {self.saved_at}) is in {self.folder}"
                            if self.saved_at is not None else "no checkpoint had been saved yet")
                    self.log.write({"event": "nonfinite", "step": e.step, "loss": str(e.value)},
                                   f"train.py: {e}; stopped, {kept}", error=True)
                    self.exit_code = 1
                except distributed.LostRank as e:  # torchrun: another rank died or hung
                    self.log.write({"event": "lost", "error": str(e), "step": self.step})
                    self.exit_code = e.say("train.py", f"stopped, {self.kept()}")
        except WriteError as e:  # (the last checkpoint is whole: writes are atomic)
            go_on = way_on(self.go_on, self.folder)
            e.kept = (f"stopped, {self.kept()}" + (f"; make room (or make the folder writable "
                                                   f"again), then {go_on}" if go_on else ""))
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.log:
                self.log.close()

    def _started(self, what: str, examples: int, total: int):
        cfg, world, step = self.cfg, self.world, self.step
        self.log.write({"event": "start", "step": step, "total_steps": total,
                        "trainable": sum(p.numel() for p in self.params), "processes": world.size,
                        "precision": hardware.precision(self.amp_dtype)},
                       f"{what}; {examples:,} examples, "
                       f"{math.ceil(examples / cfg.batch_size):,} steps per epoch, {total:,} steps"
                       + ("" if self.amp_dtype is None else
                          f"; {hardware.precision(self.amp_dtype)}")
                       + (f", resuming at step {step}" if step else "")
                       + (f"; {world.size} processes (torchrun), "
                          f"{cfg.batch_size // world.size} examples of each batch apiece"
                          if world.size > 1 else ""))
        if (applied := recipe(cfg, self.given)) and not cfg.resume:
            self.log.write({"event": "note", "recipe": applied}, f"{self.task.name}: Table 11's "
                           "recipe for it: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                         for k, v in applied.items()))
        if self.device.type != "cuda" and step < total:  # a CPU, or Apple's MPS
            seconds = self.projected_seconds(total - step)
            where = ("no CUDA GPU here, so this trains on the CPU" if self.device.type == "cpu"
                     and cfg.device == "auto" else f"on {self.device.type.upper()}")
            self.log.write({"event": "note", "device": self.device.type,
                            "projected_seconds": seconds},
                           f"{where}: its {total - step:,} steps take {roughly(seconds)} "
                           "(projected from the FLOPs they need at this device's measured speed; "
                           "the first log lines measure it)" + (
                               f". A route that ends in minutes without a GPU: {QUICK_ROUTE} "
                               "(docs/no-gpu.md)" if seconds > 3600 else ""))

    def projected_seconds(self, steps: int) -> float:
        """How long `steps` steps take on a CPU (or MPS), before the first: the FLOPs of the
        training set's batches (paper/mfu.py, over 32 drawn at random) at the device's measured
        matrix-product speed, at the MFU such runs reach (CPU_MFU)."""
        examples, rng = self.splits["train"], random.Random(0)
        draws = [[examples[i] for i in rng.sample(range(len(examples)),
                                                  min(self.cfg.batch_size, len(examples)))]
                 for _ in range(32)]
        flops = sum(mfu.batch_flops(self.model, batch) for batch in draws) / len(draws)
        return steps * flops / (mfu.peak(self.device, self.amp_dtype)[0] * CPU_MFU)

    def on_signal(self, signum, frame):
        """Ctrl-C, SIGTERM or SIGHUP: save after this step and stop (exit 130, 143 or 129). A
        second one quits at once, unless a checkpoint is being written: that finishes first."""
        if signum == cli.HANGUP:  # the terminal is gone: the lines go to metrics.jsonl only
            cli.hung_up()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.stop_code is not None and not self.saving:
            raise Stop(name, 128 + signum)
        if self.stop_code is None:
            self.stop_code = 128 + signum
            record = {"event": "signal", "signal": name, "step": self.step}
            line = f"{name}: saving after this step (again to quit without saving)"
            if self.log:
                self.log.write(record, line)
            else:  # (the log opens a moment later)
                print(line, flush=True)

    def stop_requested(self, step: int) -> int | None:
        """After each step: the exit code a Ctrl-C or signal on any rank asks for, or None. A
        signal may reach the ranks at different steps: all stop after the same one. (Asked
        before anything waits for the GPU: on GPUs this exchange, over gloo, is also what finds
        a rank that died while NCCL waits for it.)"""
        self.step = step
        return self.world.max(self.stop_code)

    def save(self, where: dict, why: str, epoch_end: int | None = None):
        """A checkpoint: the result (adapter or model) and the resumable state, both written
        atomically; a signal that arrives meanwhile waits until both are written. A loss since
        the last log line or weights no longer finite are never saved (Diverged): the last
        checkpoint stays the last good one. At an epoch's end with keep_epochs, that epoch's
        result is kept too (written first: a kill before the state is saved runs the epoch's end
        again, which writes the same file)."""
        self.log.check(where["step"])
        if not bool(torch.stack([p.isfinite().all() for p in self.params]).all()):  # one sync
            raise Diverged("the weights", float("nan"), where["step"])
        self.saving = True
        with self.log.paused():
            # the position the checkpoint holds; the run's own once it is written (a write the
            # OS refuses, WriteError, leaves the one before as the last)
            position = {**self.position, **where, "last_good": where["step"]}
            if self.world.main:  # (every rank holds the same weights)
                method = self.cfg.method
                if epoch_end is not None and self.cfg.keep_epochs:
                    self.save_result(self.model, self.cfg,
                                     result_path(method, self.folder, epoch_end))
                self.save_result(self.model, self.cfg, result_path(method, self.folder))
                save_state(os.path.join(self.folder, "state.safetensors"), self.model,
                           self.optimizer, self.scaler, position)
            self.world.barrier()  # no rank goes on (or exits) before the checkpoint is whole
            self.position = position
        self.saving = False
        self.log.write({"event": "checkpoint", "why": why, **where},
                       f"saved {self.folder} ({why}, step {where['step']})")

    def kept(self) -> str:
        return (f"the last checkpoint (step {self.saved_at}) is in {self.folder}"
                if self.saved_at is not None else "no checkpoint was saved")

    def stopped(self, step: int, code: int) -> int:
        """After the checkpoint a signal asked for: how to go on, and the signal's exit code."""
        go_on = way_on(self.go_on, self.folder)
        self.log.write({"event": "stopped", "step": step},
                       f"stopped at step {step}" + (f"; {go_on}" if go_on else ""))
        return code

    def done(self, step: int) -> int:
        result = result_path(self.cfg.method, self.folder)
        self.log.write({"event": "done", "step": step}, f"done: {result}; decode and score it "
                       f"with: python sample.py --{'model' if self.cfg.method == 'full' else 'adapter'}"
                       f" {shlex.quote(result)}")
        return 0


GO_ON = "continue with: python train.py --resume {folder}"  # what a stopped run says to do


def way_on(go_on: str, folder: str) -> str:
    """How a stopped run goes on: go_on (GO_ON, or "" where the caller says it: reproduce.py)
    with the folder quoted for a shell."""
    return go_on.format(folder=shlex.quote(folder))


def open_run(cfg, world=distributed.ALONE, given: tuple = (), go_on: str = GO_ON) -> Run:
    """Every check, and the run folder owned, before anything is loaded or written: a bad
    setting, a missing file, a folder in use raise a user error with nothing touched. Under
    torchrun every rank calls it: rank 0 owns the folder, a user error on any rank is raised on
    all (world.agree)."""
    cfg, device, amp_dtype = world.agree(checked, cfg, given, world)
    owner = world.agree(run_directory, cfg, main_only=True)
    try:
        folder = world.broadcast(owner and owner.folder)  # (a new run's name is rank 0's)
    except BaseException:
        if owner:
            owner.abandon()
            owner.release()
        raise
    if not cfg.resume:
        cfg.out = folder
    state = None
    if cfg.resume:
        state = os.path.join(folder, "state.safetensors")
        if not os.path.isfile(state):
            print(f"{folder} has no checkpoint yet: resuming it from step 0")
            state = None
    return Run(cfg, device, amp_dtype, folder, owner, state, world, given, go_on)
