"""The pieces of fine-tuning that train.py puts together (and bench.py times): the loss at the
reference tokens, AdamW with the paper's settings, the learning-rate schedule, the epoch's batches,
the dev loss, the resumable training state, and the run's log.

Every function takes explicit arguments; the loop itself, with its flags, is finetune.py.
"""

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from data.task import collate, loss_positions
from kit.checkpoint import (CheckpointError, load_metadata, load_tensors, save_tensors, short_list,
                            tensor_mismatch, write_atomic)
from kit.distributed import ALONE


def token_loss(model, inputs, positions, labels, label_smoothing: float = 0.0):
    """Summed cross-entropy at the given positions: the LM head (50,257 outputs per position)
    runs only where the loss is, about half of the positions of an E2E batch."""
    hidden = model.features(inputs).flatten(0, 1).index_select(0, positions)
    logits = model.lm_head(hidden).float()
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")


class TrainingLoss(torch.nn.Module):
    """The training loss of a batch as one call of a module, loss(inputs, positions, labels):
    what DistributedDataParallel wraps, since DDP sees only what runs inside forward()."""

    def __init__(self, model, loss_fn, label_smoothing: float):
        super().__init__()
        self.model, self.loss_fn, self.label_smoothing = model, loss_fn, label_smoothing

    def forward(self, inputs, positions, labels):
        return self.loss_fn(self.model, inputs, positions, labels, self.label_smoothing)


# --compile cuda-graphs: CUDA graphs replay one recorded shape each, so the sequence length is
# rounded up to a multiple of 16 and the number of loss positions to a multiple of 128 (E2E's
# batches then need a few dozen graphs).
CUDA_GRAPH_SHAPES = (16, 128)


def compiled_loss(mode: str | None):
    """The loss function for --compile (None: eager; "default"; "cuda-graphs": torch.compile's
    reduce-overhead mode), and the shape multiples its batches need."""
    if mode is None:
        return token_loss, (1, 1)
    if mode == "cuda-graphs":
        return torch.compile(token_loss, dynamic=True, mode="reduce-overhead"), CUDA_GRAPH_SHAPES
    return torch.compile(token_loss, dynamic=True), (1, 1)


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


def make_optimizer(model, lr: float, weight_decay: float, fused: bool = False):
    """AdamW over the trainable parameters, betas 0.9/0.999 and eps 1e-6 as the paper's released
    code; weight decay on matrices only (not on biases and LayerNorms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, fused=fused)


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
             multiple: tuple[int, int] = (1, 1), world=ALONE) -> float:
    """Mean cross-entropy per reference token on the dev examples (no label smoothing); multiple
    as device_batch's. Under torchrun each rank takes every world.size-th batch, and the sums
    are added up over the ranks: the number one process computes."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for start in range(world.rank * batch_size, len(examples), world.size * batch_size):
        batch = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            total += loss_fn(model, *device_batch(batch, device, multiple))
        count += sum(len(tokens) - prompt_length for tokens, prompt_length in batch)
    model.train()
    total, count = world.sum(total, count)
    return total / count


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


# --- the run's log ------------------------------------------------------------------------------


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


class Log:
    """Progress on the terminal (a tqdm bar, or plain lines when stderr is not a terminal) and
    every value in metrics.jsonl; run_dir None: nothing at all (the ranks of torchrun but 0)."""

    def __init__(self, run_dir: str | None, step: int, total: int):
        from tqdm import tqdm

        self.silent = run_dir is None
        self.file = None if self.silent else open(os.path.join(run_dir, "metrics.jsonl"), "a",
                                                  encoding="utf-8")
        self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True,
                        disable=self.silent or not sys.stderr.isatty())
        self.total, self.start, self.start_step = total, time.time(), step
        self.projected = False  # the time the whole run takes, said once

    def write(self, record: dict, line: str | None = None, error: bool = False):
        if self.silent:
            return
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
        seconds = (time.time() - self.start) / max(done, 1)
        eta = seconds * (self.total - step)
        self.write(record, None if not self.bar.disable else
                   f"step {step}/{self.total} | epoch {record['epoch']} | loss "
                   f"{record['loss']:.4f} | lr {record['lr']:.2e} | "
                   f"{record['tokens_per_s']:,.0f} tok/s | ETA {duration(eta)}")
        if not self.projected and step < self.total:
            self.projected = True
            self.write({"event": "projected", "step": step, "seconds_per_step": seconds},
                       f"{seconds:.3g} s per step so far: the {self.total - step:,} steps left "
                       f"take about {duration(eta)}")

    def close(self):
        self.bar.close()
        if self.file:
            self.file.close()
