"""torchrun for `reproduce.py --nproc N`: the same launcher (torch.distributed.run, --standalone),
quiet. The ranks say what happened, in one line from rank 0 (plumbing/cli.py); torchrun would add
its own report after them: a banner, a warning per signal it forwards, a traceback when it is
stopped (Ctrl-C, SIGTERM, SIGHUP, all forwarded to the ranks) and a page when a rank exits
with an error. Here the launcher exits with the ranks' code instead: 128 + the signal's number
when it was stopped, the first failed rank's code otherwise, and one line only where a rank was
killed by a signal and so could say nothing itself. The ranks die with it, even by kill -9
(distributed.die_with_launcher).

Run as a script, so that it needs nothing but torch:

    python plumbing/launch.py NPROC SCRIPT [ARGS...]
"""

import logging
import os
import signal
import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

# how long the ranks have to stop after a forwarded signal before they are killed: a Ctrl-C in
# training saves a checkpoint first (torchrun's default is 30 s)
SHUTDOWN_TIMEOUT = 600


def main(nproc: str, script: str, *args: str) -> int:
    os.environ["LORA_LAUNCHER_PID"] = str(os.getpid())  # the ranks' parent: they die with it
    for name in list(logging.root.manager.loggerDict):  # torchrun's own messages: not shown
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun.run(torchrun.parse_args([
            "--standalone", f"--nproc_per_node={nproc}", f"--shutdown-timeout={SHUTDOWN_TIMEOUT}",
            "--", script, *args]))  # ("--": nothing in args is read as torchrun's own flag)
    except SignalException as e:  # forwarded to the ranks, which said what they kept
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode >= 0:  # the rank said why: its line, or a bug's traceback
            return failure.exitcode
        name = signal.Signals(-failure.exitcode).name
        print(f"{os.path.basename(script)}: rank {rank} (pid {failure.pid}) was killed by {name}",
              file=sys.stderr)
        return 128 - failure.exitcode
    return 0


USAGE = "usage: python plumbing/launch.py NPROC SCRIPT [ARGS...] (NPROC processes of SCRIPT)"


def check(argv: list[str]) -> str | None:
    """What is wrong with the command line (one line, with the usage), or None."""
    if len(argv) < 2:
        return f"launch.py: give the number of processes and the script; {USAGE}"
    if not argv[0].isdigit() or int(argv[0]) < 1:
        return f"launch.py: NPROC is a number of processes (1 or more), not {argv[0]!r}; {USAGE}"
    if not os.path.isfile(argv[1]):
        return f"launch.py: no such script: {argv[1]}; {USAGE}"
    return None


if __name__ == "__main__":
    if problem := check(sys.argv[1:]):
        print(problem, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
