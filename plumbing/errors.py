"""The one base class of the errors a user can cause: a bad flag, a missing or wrong file, no
data, a download that fails, a folder another process owns. Each subsystem's own error
(CheckpointError, DataError, FolderInUse, ...) subclasses UserError, so a command line turns
exactly these into one line and exit code 2 (plumbing/cli.py) without importing any subsystem; every
other exception is a bug of ours and keeps its traceback. Beside it, WriteError: a write the
operating system refused, one line too (exit code 1). This module imports nothing.
"""


class UserError(ValueError):
    """A bad flag or input, reported as one line (exit code 2): the message names the problem
    and what to do about it."""


class WriteError(Exception):
    """A file we could not write: a full disk, a folder that turned unwritable or read-only. Not
    the user's mistake, nor a bug: one line (exit code 1) naming the file and why, with what was
    kept (`kept`, filled in by the code that knows it). Nothing half-written is left behind, and
    the file the write would have replaced is untouched (checkpoint.writing)."""

    def __init__(self, path: str, reason: str, kept: str = ""):
        super().__init__(f"cannot write {path} ({reason})")
        self.path, self.reason, self.kept = path, reason, kept

