"""The one base class of the errors a user can cause: a bad flag, a missing or wrong file, no
data, a download that fails, a folder another process owns. Each subsystem's own error
(CheckpointError, DataError, FolderInUse, ...) subclasses UserError, so a command line turns
exactly these into one line and exit code 2 (kit/cli.py) without importing any subsystem; every
other exception is a bug of ours and keeps its traceback. This module imports nothing.
"""


class UserError(ValueError):
    """A bad flag or input, reported as one line (exit code 2): the message names the problem
    and what to do about it."""
