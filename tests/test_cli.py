"""What every command line shares: one rule for abbreviated flags (refused everywhere: a flag
is typed whole, so that a new flag never changes what an old command line means)."""

import subprocess
import sys

import pytest
from conftest import REPO

import reproduce
import sample
import train
from data.dart import metrics as dart_metrics
from data.e2e import metrics as e2e_metrics
from data.e2e import prepare as e2e_prepare
from data.webnlg import metrics as webnlg_metrics
from paper import analysis
from scripts import bench


@pytest.mark.parametrize("parse, argv", [
    (train.parse_args, ["--ran", "4"]),
    (sample.parse_args, ["--adapt", "a.safetensors"]),
    (reproduce.parse_args, ["table3", "--see", "1"]),
    (reproduce.parse_args, ["sweep", "--tar", "q,v"]),
    (analysis.parse_args, ["amplification", "a.safetensors", "--tar", "v"]),
    (bench.parse_args, ["all", "--dev", "cpu"]),
    (e2e_metrics.main, ["refs.txt", "hyp.txt", "--no-met"]),
    (e2e_prepare.main, ["--dat", "folder"]),
    (webnlg_metrics.parse_args, ["hyp.txt", "--prot", "released"]),
    (dart_metrics.parse_args, ["hyp.txt", "--spl", "test"]),
])
def test_an_abbreviated_flag_is_refused_by_every_script(parse, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    err = capsys.readouterr().err
    abbreviated = next(a for a in argv if a.startswith("--"))
    assert stop.value.code == 2 and "unrecognized arguments: " + abbreviated in err, err


@pytest.mark.parametrize("argv, message", [
    ([], "give the number of processes and the script"),
    (["2"], "give the number of processes and the script"),
    (["two", "reproduce.py"], "NPROC is a number of processes (1 or more), not 'two'"),
    (["2", "nowhere.py"], "no such script: nowhere.py"),
])
def test_kit_launch_run_as_its_docstring_shows_says_its_usage(argv, message):
    # (reproduce.py --nproc N runs it; a user may run it as its docstring shows)
    result = subprocess.run([sys.executable, "plumbing/launch.py", *argv], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == "" and result.stderr == (
        f"launch.py: {message}; usage: python plumbing/launch.py NPROC SCRIPT [ARGS...] (NPROC "
        "processes of SCRIPT)\n")
