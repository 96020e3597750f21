"""Run folders: one process owns each, default names never collide, and nothing an interrupted
write left behind survives.

- One owner. train.py owns its run folder (--out, --resume) and sample.py the folder it writes
  predictions into, from before the first check of what the folder holds to the end: `claim`
  takes an exclusive lock (fcntl.flock) on FOLDER/.lock. The OS drops the lock when the process
  ends, however it ends, so a kill -9 never leaves a stale lock behind; a second process is
  refused with the folder and the pid that holds it (FolderInUse), before it writes anything.
- Unique names. `claim_new` creates a folder named by the time and a random suffix, and never
  one that exists already: two runs started in the same second get two folders.
- What a run holds: its result (run_result: adapter.safetensors, or model/ for full
  fine-tuning), or why it has none yet (still training, or stopped: resume it).
- No leftovers. Every file we write goes to NAME.tmp first and is renamed (checkpoint.py), and
  safetensors itself writes .tmpXXXXXX first: a kill in the middle leaves such a file, which
  `remove_stale_files` deletes once the folder is ours again.

The lock needs fcntl (Linux, macOS); where there is none (Windows), folders are not locked.
"""

import contextlib
import os
import re
import secrets
import shlex
import time

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per folder is then up to the user
    fcntl = None

from plumbing.errors import UserError

LOCK = ".lock"
# what our writers leave when killed mid-write: NAME.tmp (ours), .tmpXXXXXX (safetensors')
STALE = re.compile(r".+\.tmp|\.tmp[0-9A-Za-z]{6}")


class FolderInUse(UserError):
    """Another process owns the folder; the message names it and its pid."""


class Claim:
    """The lock on one folder, held until release() (or the end of a `with` block). abandon()
    marks a start that failed before writing anything: release() then also removes the folders
    that claiming created."""

    def __init__(self, folder: str, program: str, hint: str, new: bool = False):
        self.folder, self.created, self.abandoned = os.path.abspath(folder), [], False
        path = os.path.dirname(self.folder)
        while not os.path.exists(path):  # the parents this claim creates, deepest first
            self.created.append(path)
            path = os.path.dirname(path)
        os.makedirs(os.path.dirname(self.folder), exist_ok=True)
        if new or not os.path.exists(self.folder):
            os.mkdir(self.folder)  # new: FileExistsError when another process took the name
            self.created.insert(0, self.folder)
        self.fd = self._lock(program, hint)

    def _lock(self, program: str, hint: str) -> int | None:
        if fcntl is None:
            return None
        path = os.path.join(self.folder, LOCK)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                program, pid = holder(os.read(fd, 200))
                os.close(fd)
                who = f"{program} (pid {pid})" if pid else program
                raise FolderInUse(f"{self.folder} is in use by {who}; {hint}") from None
            try:  # the owner before us may have removed the file between our open and flock
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {program}\n".encode())
        return fd

    def abandon(self):
        self.abandoned = True

    def release(self):
        """Drop the lock (the file goes first, so a process waiting on it tries again), and
        after abandon() the folders this claim created, where they are empty."""
        if self.fd is not None:
            with contextlib.suppress(OSError):  # (a folder turned read-only keeps the file)
                os.unlink(os.path.join(self.folder, LOCK))
            os.close(self.fd)
            self.fd = None
        if self.abandoned:
            for path in self.created:  # deepest first
                if os.path.isdir(path) and not os.listdir(path):
                    os.rmdir(path)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc):
        self.release()


def claim(folder: str, program: str, hint: str) -> Claim:
    """Own folder (created if missing), or FolderInUse naming who does. hint: what the refused
    user can do instead."""
    return Claim(folder, program, hint)


def claim_new(parent: str, prefix: str, program: str) -> Claim:
    """Own a new folder parent/prefix-YYYYmmdd-HHMMSS-xxxx, one that did not exist before."""
    while True:
        name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            return Claim(os.path.join(parent, name), program, "", new=True)
        except FileExistsError:  # started in the same second and drew the same suffix
            continue


def is_stale(name: str) -> bool:
    """A file an interrupted write of ours (or of safetensors) left behind."""
    return STALE.fullmatch(name) is not None


def remove_stale_files(folder: str) -> list[str]:
    """Delete the leftovers of interrupted writes anywhere under folder (which must be ours:
    claimed, and a run folder); returns their paths relative to folder."""
    stale = []
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if is_stale(name):
                os.remove(os.path.join(root, name))
                stale.append(os.path.relpath(os.path.join(root, name), folder))
    return stale


# --- what a run folder holds ----------------------------------------------------------------


def is_run_folder(path: str) -> bool:
    """Whether path is a folder train.py wrote (its log, its checkpoint or its result)."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in (
        "adapter.safetensors", "state.safetensors", "model", "metrics.jsonl"))


def run_result(path: str) -> tuple[str | None, str | None]:
    """A run folder's result as (adapter, model): adapter.safetensors, or model/ for a full
    fine-tuning run (train.py's result_path). Its state.safetensors is a checkpoint to resume,
    not an adapter."""
    if os.path.isfile(adapter := os.path.join(path, "adapter.safetensors")):
        return adapter, None
    if os.path.isdir(model := os.path.join(path, "model")):
        return None, model
    if who := in_use(path):
        raise UserError(f"{path} is a run still training ({who}): its adapter.safetensors is "
                        "written when it ends (or pass an adapter-epochN.safetensors kept in it)")
    raise UserError(f"{path} is a run folder without a result yet (train.py writes "
                    "adapter.safetensors when the run ends; continue it with: python train.py "
                    f"--resume {shlex.quote(path)}, or pass an adapter-epochN.safetensors kept "
                    "in it)")


def holder(lock_text: bytes) -> tuple[str, str | None]:
    """(program, pid) of the process a lock file names ('123 train.py'), or ('another process',
    None) where it names none (written by no process of ours, or not yet)."""
    words = lock_text.decode(errors="replace").split()
    return (words[1], words[0]) if len(words) == 2 else ("another process", None)


def in_use(folder: str) -> str | None:
    """Who owns folder now ('train.py, pid 123'), or None where no process does."""
    path = os.path.join(folder, LOCK)
    if fcntl is None or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            program, pid = holder(f.read(200))
            return f"{program}, pid {pid}" if pid else program
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None
