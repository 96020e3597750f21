"""What the command lines (train.py, sample.py, reproduce.py, paper/analysis.py, scripts/bench.py)
share: one-line user errors, Ctrl-C, SIGTERM and SIGHUP, flags from a dataclass, --help that shows
each default once, and output folders checked before any work (the device and mixed precision are
plumbing/hardware.py's).

A user error (a bad flag, a missing or wrong file, no data, a folder another process owns) ends
with one line on stderr and exit code 2; Ctrl-C with one line saying what was kept, exit code 130;
SIGTERM and SIGHUP (a closed terminal, a dropped ssh connection) as Ctrl-C, exit code 143 / 129.
Anything else is a bug in our code and keeps its traceback. Under torchrun every process exits
so, and rank 0 alone says it (speaks()), after leaving the process group in order.
"""

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import types

from plumbing.errors import UserError, WriteError

# The errors a user can cause: every subsystem's subclasses UserError (plumbing/errors.py), and a
# path given that does not exist. Scripts turn these, and only these, into one line.
USER_ERRORS = (UserError, FileNotFoundError)


def speaks() -> bool:
    """Whether this process reports to the user: the only one, or rank 0 of torchrun's (the
    others meet the same errors and exit with the same code, silently)."""
    return os.environ.get("RANK", "0") == "0"


def fail(prog: str, message) -> None:
    """One line on stderr, exit code 2."""
    leave_process_group()
    if speaks():
        print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(2)


def interrupted(prog: str, kept: str, stop: KeyboardInterrupt | None = None) -> None:
    """Ctrl-C (or a Signalled stop): one line on stderr saying what was kept (and how to
    continue), exit code 130 (128 + the signal's number)."""
    name, code = ("Ctrl-C", 130) if not isinstance(stop, Signalled) else (stop.name, stop.code)
    leave_process_group()
    if speaks():
        print(f"{prog}: {name}: {kept}", file=sys.stderr)
    sys.exit(code)


def cannot_write(prog: str, e: WriteError) -> None:
    """A write the operating system refused (a WriteError: a full disk, a folder no longer
    writable): one line naming the file and why, and what was kept; exit code 1."""
    leave_process_group()
    if speaks():
        print(f"{prog}: {e}" + (f"; {e.kept}" if e.kept else ""), file=sys.stderr)
    sys.exit(1)


def leave_process_group():
    """Under torchrun, before a user error or a stop ends this rank: leave the process group in
    order (a gloo group still open at exit can abort the process: "terminate called without an
    active exception"), and let no SIGTERM cut the exit short: torchrun sends one to the ranks
    still running as soon as one exits with an error, and each should exit with its own code."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    dist.destroy_process_group()


# --- SIGTERM and SIGHUP stop a script as Ctrl-C does -----------------------------------------

HANGUP = getattr(signal, "SIGHUP", None)  # (Windows has none)
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, HANGUP) if s is not None)


class Signalled(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler) or SIGHUP (a closed terminal, a dropped ssh connection),
    raised where the work is, as Python raises KeyboardInterrupt for Ctrl-C: the code that keeps
    what was done on Ctrl-C keeps it here too. Exit code 128 + the signal's number."""

    def __init__(self, signum: int):
        self.name, self.code = signal.Signals(signum).name, 128 + signum
        super().__init__(self.name)


def hung_up():
    """After SIGHUP: the terminal is gone, and a write to it would fail (EIO) in the middle of
    keeping what was done; so stdout and stderr, where they are that terminal, go to /dev/null
    from here on (a pipe or a file stays as it is, and metrics.jsonl has every line)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        if os.isatty(fd):
            os.dup2(devnull, fd)
    os.close(devnull)


@contextlib.contextmanager
def stopping_on_signals():
    """Inside, SIGTERM and SIGHUP raise Signalled (a KeyboardInterrupt), as Ctrl-C does."""
    def stop(signum, frame):
        if signum == HANGUP:
            hung_up()
        raise Signalled(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def plural(n: int, word: str) -> str:
    """'1 MR', '2 MRs'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default once: not for flags without one (None, or off), nor where
    the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action) if text else "(default: %(default)s)"


def parser(prog: str, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser whose errors are one line (exit 2) and whose help shows defaults. Flags
    are never abbreviated, so `given` knows exactly which were typed."""
    p = argparse.ArgumentParser(formatter_class=kwargs.pop("formatter_class", HelpFormatter),
                                allow_abbrev=False, **kwargs)
    p.error = lambda message: fail(prog, f"{message} (see --help)")
    return p


def given(p: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The dests of the flags on the command line (typed, not defaults), sorted."""
    options = {o: a.dest for a in p._actions for o in a.option_strings}
    return sorted({options[w.split("=")[0]] for w in argv if w.split("=")[0] in options})


def flag(default, help: str, **argparse_settings):
    """A field of a settings dataclass that is also a command-line flag (parse_dataclass): its
    default, its --help, and argparse's own settings (choices, metavar, nargs, const). group="..."
    starts a group of flags in --help, which the fields after it join."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_settings})


def parse_dataclass(cls, prog: str, argv=None, **kwargs) -> tuple:
    """cls(**flags) from the command line: one --flag per field made with flag() (--max-steps
    for max_steps; a bool field is a switch), and the fields whose flags were typed (given)."""
    p = parser(prog, **kwargs)
    group = p
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        settings = dict(field.metadata)
        if "group" in settings:
            group = p.add_argument_group(settings.pop("group"))
        name = "--" + field.name.replace("_", "-")
        if field.type is bool:
            group.add_argument(name, action="store_true", **settings)
            continue
        kind = field.type  # str | None: str
        if isinstance(kind, types.UnionType):
            kind = next(k for k in kind.__args__ if k is not type(None))
        group.add_argument(name, type=kind, default=field.default, **settings)
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = p.parse_args(argv)
    return cls(**vars(args)), tuple(given(p, argv))


def check_writable(folder: str, flag: str = "--out", remedy: str | None = None):
    """Refuse, before any work, a folder that cannot be created or written to: a file, a
    read-only place (remedy: what to do then; default: pick another flag). What the probe
    creates is removed again."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {folder} is a file, not a folder; pick another {flag}")
    missing = []
    path = os.path.abspath(folder)  # (a relative name's dirname ends in "", never found)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {folder} ({e.strerror}); "
                        f"{remedy or f'pick another {flag}'}") from None
    finally:
        for path in missing:  # deepest first
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)


def check_writable_file(path: str, flag: str):
    """Refuse, before any work, an output file that could not be written: a folder, or a place
    where no file can be created."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name")
    check_writable(os.path.dirname(os.path.abspath(path)), flag)
