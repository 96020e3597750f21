"""Many processes, one run: data parallelism over the processes that torchrun starts.

    torchrun --standalone --nproc_per_node 4 train.py ...     # 4 GPUs of this machine
    torchrun --standalone --nproc_per_node 2 sample.py --adapter RUN/adapter.safetensors

torchrun (PyTorch's own launcher) starts N copies of a script and tells each, in environment
variables, which one it is (RANK; LOCAL_RANK on its machine) and how many there are (WORLD_SIZE).
start() joins them into one process group; started without torchrun it returns ALONE, a world of
one process where every method below is a no-op, so the scripts run the same lines either way
(under torchrun with one process, the methods do run: a check of the machinery on one GPU).

What the scripts ask of a world, each a method with one collective:
- agree(fn), agreeing(): a set-up step on every rank (rank 0 first where it downloads or caches).
  A user error on any rank is raised on all of them, so every rank exits 2 and none waits for
  the others; rank 0 alone prints it (cli.speaks).
- share(batch, micro_batch), wrap_loss(...), syncing(...), guard(): each rank's part of a global
  batch, and DDP, which sums the ranks' gradients in the backward pass of the last micro-batch.
- sum, max, gather, broadcast, barrier: the few values the ranks exchange.
- A collective that fails because a rank died or hung raises LostRank, which names the rank
  (a roll call after the failure); any other failure keeps its traceback. Checked on CPU (gloo);
  on GPUs, untested so far, NCCL's gradient all-reduce waits on the GPU, and a lost rank is
  found by the gloo exchange that follows each step (train.py), else at NCCL's own timeout.

CPU tensors travel over gloo (flags, sums, decoded text: no wait for the GPU), CUDA tensors over
NCCL (DDP's gradients). Every collective gives up after LORA_DIST_TIMEOUT seconds (default 600:
it must cover rank 0 writing a checkpoint while the others wait), but agree()'s, which wait
while rank 0 downloads a model or the data (a day at most). Ranks other than 0 stay quiet:
their stdout goes nowhere, and their stderr, which still shows their tracebacks, is not a
terminal (no progress bars).
"""

import contextlib
import datetime
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from plumbing.cli import USER_ERRORS, UserError


class LostRank(Exception):
    """A rank died or stopped answering, so the collectives cannot go on. `report`: whether this
    process says so (rank 0, or rank 1 when rank 0 is the one lost)."""

    def __init__(self, message: str, report: bool):
        super().__init__(message)
        self.report = report

    def say(self, prog: str, what: str) -> int:
        """One line on stderr, "prog: this; what" (where this process reports); the exit
        code, 1."""
        if self.report:
            print(f"{prog}: {self}; {what}", file=sys.stderr, flush=True)
        return 1


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


class World:
    """This process's place among the run's processes; World() is one process alone."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0,
                 timeout: float = 600.0, setup=None, roll=None):
        self.rank, self.size, self.local_rank, self.timeout = rank, size, local_rank, timeout
        self.setup = setup  # a gloo group for agree(), which may wait for rank 0's downloads
        self.roll = roll  # a gloo group kept for the roll call after a failure
        self.joined = roll is not None  # a process group (torchrun's, even of one process)
        self.broken = False  # a rank was lost: no more collectives

    @property
    def main(self) -> bool:
        return self.rank == 0

    # --- set-up ------------------------------------------------------------------------------

    def place(self, device: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK under torchrun (one GPU per process)."""
        if not self.joined or device.type != "cuda":
            return device
        if device.index not in (None, self.local_rank):
            raise UserError(f"--device {device}: under torchrun each process takes the GPU of "
                            "its LOCAL_RANK; give --device cuda (or auto)")
        if self.local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started more processes on this machine than its "
                            f"{torch.cuda.device_count()} GPUs; lower --nproc_per_node")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def agree(self, fn, *args, main_first: bool = False, main_only: bool = False):
        """fn(*args) on every rank (main_only: on rank 0 only, None elsewhere), its result
        returned, agreeing() as below."""
        with self.agreeing(main_first):
            return fn(*args) if self.main or not main_only else None

    @contextlib.contextmanager
    def agreeing(self, main_first: bool = False):
        """Around a set-up step that every rank runs: a user error on any rank is raised on every
        rank, the lowest rank's, so all stop together and none waits for the others. main_first:
        rank 0 runs the step before the others start, so they read what it downloaded or cached
        instead of writing it at the same time."""
        if not self.joined:
            yield
            return
        if main_first and not self.main:
            self._verdict(None)  # rank 0's outcome: go on, or stop with its error
        error = None
        try:
            yield
        except USER_ERRORS as e:
            error = e
        if main_first and self.main:
            self._verdict(error)
        self._verdict(error)

    def _verdict(self, error: Exception | None):
        """Raise, on every rank, the user error of the lowest rank that had one."""
        errors = [None] * self.size
        with self.guard():  # every rank's error message, or None
            dist.all_gather_object(errors, None if error is None else str(error),
                                   group=self.setup)
        for rank, message in enumerate(errors):
            if message is not None:
                if rank == self.rank:
                    raise error
                raise UserError(message if rank == 0 else f"rank {rank}: {message}")

    # --- training ----------------------------------------------------------------------------

    def share(self, batch: list, micro_batch: int) -> tuple[list[list], int]:
        """This rank's part of a global batch (every size-th example, from the rank-th on) in
        micro-batches of micro_batch / size examples (micro_batch: of the whole batch), and the
        weight of its losses. DDP averages the ranks' gradients: weight = size makes that their
        sum, the batch's gradient. A rank that the epoch's short last batch leaves without
        examples still joins the all-reduce, with one example at weight 0."""
        mine, micro = batch[self.rank::self.size], micro_batch // self.size
        if not mine:
            return [batch[:1]], 0
        return [mine[m:m + micro] for m in range(0, len(mine), micro)], self.size

    def wrap_loss(self, model: torch.nn.Module, loss_fn, label_smoothing: float):
        """The training loss as one module, loss(inputs, positions, labels) = loss_fn(model,
        ..., label_smoothing): under torchrun, in DDP (wrap), which sees only what runs inside
        forward() and starts by giving every rank rank 0's weights."""
        return self.wrap(TrainingLoss(model, loss_fn, label_smoothing))

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP around module: its backward all-reduces the gradients (an average over ranks).
        No find_unused_parameters: every trainable tensor (LoRA's A and B, an adapter's, or all
        of them in full fine-tuning) takes part in every forward pass, and frozen ones have no
        gradient for DDP to wait for. No forward_sync_buffers: the buffers never change (PiSSA's
        B0 A0, QLoRA's NF4 codes), so they go from rank 0 once, at the start, not every step."""
        if not self.joined:
            return module
        device = next(module.parameters()).device
        with self.guard():  # (DDP starts by sending rank 0's weights to every rank)
            return torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None,
                forward_sync_buffers=False)

    def syncing(self, module, now: bool):
        """Around one micro-batch's forward: DDP all-reduces the gradients in that forward's
        backward only when `now` (the last micro-batch); before it they accumulate on each rank
        (no_sync). The backward itself goes inside guard(): the all-reduce is in it."""
        return contextlib.nullcontext() if now or not self.joined else module.no_sync()

    def seed_step(self, seed: int, step: int):
        """Dropout's random masks. Rank 0 draws them from the run's own RNG stream, saved in its
        checkpoints as one process does; the other ranks from a seed of (seed, rank, step), so
        a resumed run draws theirs again without their states being saved."""
        if self.rank:
            torch.manual_seed((seed * 1_000_003 + self.rank) * 1_000_003 + step)

    # --- the values the ranks exchange -------------------------------------------------------

    def sum(self, *values) -> list[float]:
        """Each value (a number or a one-element tensor) summed over the ranks, as floats."""
        if not self.joined:
            return [float(v) for v in values]
        total = torch.tensor([float(v) for v in values], dtype=torch.float64)
        with self.guard():
            dist.all_reduce(total)  # a CPU tensor: over gloo
        return total.tolist()

    def max(self, code: int | None) -> int | None:
        """The largest code of any rank (None counts as 0, and 0 comes back as None): a stop
        that one rank was asked for becomes every rank's."""
        if not self.joined:
            return code
        flag = torch.tensor([code or 0])
        with self.guard():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag) or None

    def gather(self, items: list) -> list:
        """Every rank's items, concatenated in rank order, on rank 0 ([] on the others)."""
        if not self.joined:
            return items
        parts = [None] * self.size if self.main else None
        with self.guard():
            dist.gather_object(items, parts, dst=0)
        return [item for part in parts for item in part] if self.main else []

    def broadcast(self, value):
        """Rank 0's value, on every rank."""
        if not self.joined:
            return value
        box = [value]
        with self.guard():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        """Wait until every rank is here (after rank 0 writes what the others must not outrun)."""
        if self.joined:
            with self.guard():
                dist.barrier()

    # --- when a rank is lost -----------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self):
        """Collectives inside: a failure because a rank died or hung becomes LostRank, naming
        it; a failure with every rank still answering stays what it was (a bug: traceback).
        Only communication goes inside, so a bug on one rank ends that rank at once (its
        traceback) and the others find it gone."""
        try:
            yield
        except RuntimeError:  # what gloo and NCCL raise (DistBackendError is one)
            if not self.joined or not (lost := self.missing()):
                raise
            self.broken = True
            who = f"rank {lost[0]}" if len(lost) == 1 else f"ranks {', '.join(map(str, lost))}"
            raise LostRank(f"{who} of {self.size} stopped answering (died, or hung for over "
                           f"{self.timeout:.0f} s)",
                           report=self.main or (self.rank == 1 and lost == [0])) from None

    def missing(self) -> list[int]:
        """After a collective failed: the ranks that do not answer a roll call within the
        timeout. Rank 0 calls each rank over the roll group and answers those that reply; a
        rank that hears nothing back has lost rank 0."""
        deadline = time.monotonic() + self.timeout

        def waited(op, peer) -> bool:  # one message to or from peer, in the time left
            try:
                left = max(deadline - time.monotonic(), 0.001)
                op(torch.zeros(1), peer, group=self.roll).wait(datetime.timedelta(seconds=left))
                return True
            except RuntimeError:  # the peer is gone (connection closed) or silent (timeout)
                return False

        if not self.main:
            return [] if waited(dist.isend, 0) and waited(dist.irecv, 0) else [0]
        answered = [r for r in range(1, self.size) if waited(dist.irecv, r)]
        for r in answered:
            waited(dist.isend, r)
        return [r for r in range(1, self.size) if r not in answered]

    def close(self):
        """Leave the process group (at the end of a script that started one)."""
        if self.joined and not self.broken:
            dist.destroy_process_group()


ALONE = World()


class TrainingLoss(torch.nn.Module):
    """The training loss of a batch as one call of a module, loss(inputs, positions, labels):
    what DistributedDataParallel wraps (World.wrap_loss)."""

    def __init__(self, model, loss_fn, label_smoothing: float):
        super().__init__()
        self.model, self.loss_fn, self.label_smoothing = model, loss_fn, label_smoothing

    def forward(self, inputs, positions, labels):
        return self.loss_fn(self.model, inputs, positions, labels, self.label_smoothing)


class _NotATerminal:
    """stderr of a rank other than 0: written as usual, but no terminal, so no progress bars."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


def die_with_launcher():
    """This rank ends (SIGTERM: it stops as a scheduler's SIGTERM stops it) when the process
    that started it does: torchrun starts each rank in a session of its own, so a kill -9 to the
    launcher's process group would leave the ranks running, and holding the run's folder. Linux
    only (prctl's parent-death signal); plumbing/launch.py names itself, so that a launcher already
    gone when this rank gets here is found too."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    launcher = os.environ.get("LORA_LAUNCHER_PID")
    if launcher and os.getppid() != int(launcher):
        os.kill(os.getpid(), signal.SIGTERM)


def start() -> World:
    """This process's world: torchrun's process group, joined, or ALONE without torchrun."""
    if not launched():
        return ALONE
    die_with_launcher()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    text = os.environ.get("LORA_DIST_TIMEOUT", "600")
    try:
        timeout = float(text)
    except ValueError:
        timeout = float("nan")
    if not 0 < timeout < float("inf"):
        raise UserError(f"LORA_DIST_TIMEOUT={text}: give the seconds a rank waits for the "
                        "others, a positive number (default 600)")
    # CPU tensors over gloo, CUDA tensors over NCCL, in one group
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() \
        else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    # the set-up's exchanges wait as long as rank 0's downloads take (a dead rank is found at
    # once all the same); the roll call's group is untouched until a failure
    setup = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=1))
    roll = dist.new_group(backend="gloo")
    if rank:  # one voice, rank 0's
        sys.stdout = open(os.devnull, "w")
        sys.stderr = _NotATerminal(sys.stderr)
    return World(rank, size, int(os.environ.get("LOCAL_RANK", 0)), timeout, setup, roll)
