"""Many processes (plumbing/distributed.py) on CPU, gloo on localhost, each checked against one
process: torchrun train.py (LoRA with and without --grad-accum, full fine-tuning, Adapter^H;
Adapter^L's run is in BENCHMARKS.md) gives the one-process losses, dev losses and weights; a stop
reaches every rank; a run moves 2 -> 1 -> 2 processes and ends as if never stopped; a lost rank ends
the other with one line; torchrun sample.py writes the one-process predictions byte for byte; a user
error is one line, once.

Two ways to start the ranks: torchrun itself (what users run), and by hand with torchrun's
variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) where a test must reach one rank alone: signal it,
kill it, give it other flags, or read its exit code (torchrun reports only its own).
"""

import fcntl
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, run_main, signal_on_line
from safetensors.torch import load_file

import reproduce
import sample
import train
from harness import bookkeeping, sample_cli
from plumbing import cli, distributed, rundir

# what a run logged, and its result without a full fine-tuning's key biases (why: the script)
_spec = importlib.util.spec_from_file_location("compare_runs", REPO / "scripts" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_runs)
records, result_tensors = compare_runs.losses, compare_runs.result_tensors

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "--"]


@pytest.fixture(scope="module")
def data(e2e_data, gpt2_vocab):
    return e2e_data


def flags(tiny, data, out, *extra):
    """20 steps at the global batch of 8 on 97 examples: the epoch's 13th batch holds one
    example, so rank 1 has none of it. No dropout: each rank would draw its own masks."""
    return ["--model", tiny, "--data", data, "--device", "cpu", "--out", str(out),
            "--limit", "97", "--max-steps", "20", "--warmup", "0", "--log-interval", "1",
            "--eval-interval", "5", "--save-every", "0", "--dropout", "0", *extra]


METHODS = {"lora": ["--lr", "1e-2", "--lora-dropout", "0"], "full": ["--method", "full", "--lr", "1e-3"],
           "adapter_h": ["--method", "adapter_h", "--lr", "1e-2"],
           "qlora": ["--lr", "1e-2", "--lora-dropout", "0", "--quantize", "nf4"]}


def assert_same_run(actual, expected):
    """The same losses logged at the same steps, each within 1e-5 relative."""
    assert [r[:2] for r in actual] == [r[:2] for r in expected]
    for (event, step, a), (_, _, b) in zip(actual, expected):
        assert abs(a - b) <= 1e-5 * abs(b), (event, step, a, b)


def one_process(argv) -> int:
    """train.py's run in this process (seconds quicker than a new interpreter)."""
    cfg, given = train.parse_args(argv)
    return train.train(cfg, given=given)


def torchrun(script, *args, env=None):
    return subprocess.Popen([*TORCHRUN, str(REPO / script), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def by_hand(script, argvs, **env):
    """The ranks started as torchrun starts them (its variables), one argv per rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [subprocess.Popen([sys.executable, str(REPO / script), *map(str, argv)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r),
                                  "WORLD_SIZE": str(len(argvs)), "MASTER_ADDR": "127.0.0.1",
                                  "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", **env})
            for r, argv in enumerate(argvs)]


def state_step(run_dir) -> int:
    from plumbing.checkpoint import load_metadata
    return json.loads(load_metadata(str(run_dir / "state.safetensors"))["state"])["step"]


@pytest.fixture(scope="module")
def reference(tiny, data, tmp_path_factory):
    """One process's runs, made once: (method, grad_accum) -> run folder."""
    made = {}

    def run(method, grad_accum="1"):
        if (method, grad_accum) not in made:
            out = tmp_path_factory.mktemp("one") / f"{method}-{grad_accum}"
            assert one_process(flags(tiny, data, out, *METHODS[method],
                                     "--grad-accum", grad_accum)) == 0
            made[(method, grad_accum)] = out
        return made[(method, grad_accum)]
    return run


@pytest.mark.parametrize("method, grad_accum", [("lora", "1"), ("lora", "2"), ("full", "1"),
                                                ("adapter_h", "1"), ("qlora", "1")])
def test_two_ranks_train_what_one_process_trains(tiny, data, tmp_path, reference, method,
                                                 grad_accum):
    # DDP without find_unused_parameters: a method leaving a trainable tensor unused fails here
    proc = torchrun("train.py", *flags(tiny, data, tmp_path / "run", *METHODS[method],
                                       "--grad-accum", grad_accum))
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    expected = reference(method, grad_accum)
    assert_same_run(records(tmp_path / "run"), records(expected))  # the dev losses among them
    mine, theirs = result_tensors(tmp_path / "run"), result_tensors(expected)
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=1e-5, msg=name)
    if method in ("lora", "qlora"):  # (B starts at 0: the comparison is of trained values)
        assert max(t.abs().max().item() for t in mine.values()) > 0.1
    # rank 0 alone speaks and writes
    assert out.count("2 processes (torchrun), 4 examples of each batch apiece") == 1
    assert out.count("(last step, step 20)") == 1 and "Traceback" not in err
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
        assert json.loads(f.readline())["processes"] == 2


def test_a_run_stopped_under_torchrun_goes_on_with_one_process_then_two(tiny, data, tmp_path,
                                                                        reference):
    run_dir = tmp_path / "run"
    proc = torchrun("train.py", *flags(tiny, data, run_dir, *METHODS["lora"]),  # SIGTERM to
                    env=signal_on_line(tmp_path / "s1", "step 6/", signal.SIGTERM, "parent"))
    out, err = proc.communicate()  # torchrun at step 6, which passes it to both ranks
    assert proc.returncode != 0  # (torchrun's own code after a signal)
    assert state_step(run_dir) == 7 and out.count("stopped at step 7;") == 1, out + err
    one = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--resume", str(run_dir)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=signal_on_line(tmp_path / "s2", "step 15/", signal.SIGTERM))
    out, err = one.communicate()
    assert one.returncode == 143, err
    assert "resuming at step 7" in out
    assert state_step(run_dir) == 16
    two = torchrun("train.py", "--resume", run_dir)
    out, err = two.communicate()
    assert two.returncode == 0, err
    assert "2 processes (torchrun)" in out
    # the same batches, in the same order, whatever the world size: each step logged once
    assert_same_run(records(run_dir), records(reference("lora")))


def test_a_signal_to_one_rank_stops_both_after_the_same_step(tiny, data, tmp_path):
    run_dir = tmp_path / "run"
    argv = flags(tiny, data, run_dir, *METHODS["lora"])
    rank0, rank1 = by_hand("train.py", [argv, argv], **signal_on_line(  # rank 0 is never
        tmp_path / "signal", "step 4/", signal.SIGTERM, "rank:1", env={}))  # signalled
    out, err = rank0.communicate()
    _, err1 = rank1.communicate()
    assert (rank0.returncode, rank1.returncode) == (143, 143), err + err1
    stopped = state_step(run_dir)
    assert out.count(f"stopped at step {stopped};") == 1 and err == err1 == ""
    assert max(step for _, step, _ in records(run_dir)) == stopped


@pytest.mark.parametrize("sig, timeout", [(signal.SIGKILL, "600"), (signal.SIGSTOP, "5")])
def test_a_rank_that_dies_or_hangs_ends_the_other_with_one_line(tiny, data, tmp_path, sig,
                                                                timeout):
    # a dead rank is found at once; a hung one when a collective times out, then the roll call
    run_dir = tmp_path / "run"
    argv = flags(tiny, data, run_dir, *METHODS["lora"], "--save-every", "5")
    rank0, rank1 = by_hand("train.py", [argv, argv], LORA_DIST_TIMEOUT=timeout,
                           **signal_on_line(tmp_path / "signal", "step 12/", sig, "rank:1",
                                            env={}))
    try:
        out, err = rank0.communicate(timeout=300)  # (a hang fails here: it never ends)
    finally:
        rank1.kill()
        rank1.communicate()
    assert rank0.returncode == 1
    assert err == (f"train.py: rank 1 of 2 stopped answering (died, or hung for over {timeout} "
                   f"s); stopped, the last checkpoint (step 10) is in {run_dir}\n")
    assert state_step(run_dir) == 10  # the checkpoint of step 10, whole: it loads
    load_file(str(run_dir / "adapter.safetensors"))


def test_decoding_on_two_ranks_writes_the_one_process_predictions(tiny, data, tmp_path,
                                                                   reference, capsys):
    adapter = reference("lora") / "adapter.safetensors"
    argv = ["--adapter", adapter, "--data", data, "--device", "cpu", "--limit", "20",
            "--batch-size", "3", "--max-new-tokens", "16", "--no-meteor"]
    code, _, err = run_main(sample.main, capsys, *argv, "--out", tmp_path / "one")
    assert code == 0, err
    proc = torchrun("sample.py", *argv, "--out", tmp_path / "two")
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    one = (tmp_path / "one" / "predictions-first20.tsv").read_bytes()
    assert (tmp_path / "two" / "predictions-first20.tsv").read_bytes() == one
    assert len(set(one.decode().splitlines()[1:])) == 20  # 20 MRs, every row there
    assert out.count("wrote") == 2 and out.count("| this run (test, first 20 MRs) |") == 1
    scores = [json.loads((tmp_path / d / "predictions-first20.scores.json").read_text())
              for d in ("one", "two")]
    assert scores[0]["scores"] == scores[1]["scores"]


def test_a_user_error_under_torchrun_is_one_line_once(tiny, data, tmp_path):
    proc = torchrun("train.py", *flags(tiny, data, tmp_path / "run"), "--batch-size", "6",
                    "--grad-accum", "2")
    out, err = proc.communicate()
    ours = [line for line in err.splitlines() if line.startswith("train.py: ")]
    assert ours == ["train.py: --batch-size 6 does not split over 2 processes x --grad-accum 2: "
                    "give a multiple of 4"], err
    assert proc.returncode != 0 and out == ""  # (then torchrun's own report of the ranks)
    # every rank exits with the error's code, none killed (torchrun sends SIGTERM to the ranks
    # still running once one has failed) nor aborted at exit with its process group still open
    assert set(re.findall(r"exitcode +: (-?\d+)", err)) == {"2"}, err  # (torchrun's page)
    assert "terminate called" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script, argv, message", [
    ("train", ["--compile", "cuda-graphs"], "--compile cuda-graphs is untested with several"),
    ("sample", ["--mr", "name[The Eagle]"], "--mr runs in one process: start sample.py without"),
])
def test_what_one_process_does_alone_is_refused_under_torchrun(tiny, script, argv, message):
    # the checks as rank 0 of two runs them (they need no process group to refuse)
    world = distributed.World(rank=0, size=2)
    if script == "train":
        run = lambda: bookkeeping.check(*train.parse_args(["--model", tiny, "--device", "cpu",
                                                        *argv]), world)
    else:
        run = lambda: sample_cli.check(sample.parse_args(["--model", tiny, *argv]), world)
    with pytest.raises(cli.UserError, match=re.escape(message)):
        run()


def test_an_error_on_one_rank_alone_stops_both_and_rank_0_says_it(tiny, data, tmp_path):
    # rank 1 finds no data (say, on a node without the copy): nothing is trained, nor written
    run_dir = tmp_path / "run"
    argv = flags(tiny, data, run_dir)
    elsewhere = flags(tiny, tmp_path / "nowhere", run_dir)
    rank0, rank1 = by_hand("train.py", [argv, elsewhere])
    (out, err), (_, err1) = rank0.communicate(), rank1.communicate()
    assert (rank0.returncode, rank1.returncode) == (2, 2)
    assert err.startswith(f"train.py: rank 1: {tmp_path / 'nowhere'}: no such folder")
    assert err.count("\n") == 1
    assert err1 == "" and out == ""
    assert not run_dir.exists()


def test_reproduce_runs_its_stages_on_two_processes(tiny, data, tmp_path, capsys):
    argv = ["table3", "--model", tiny, "--data", data, "--seeds", "1", "--epochs", "1",
            "--limit", "32", "--mrs", "3", "--beam", "2", "--max-new-tokens", "8",
            "--batch-size", "1", "--no-meteor", "--device", "cpu"]
    code, _, err = run_main(reproduce.main, capsys, *argv, "--out", tmp_path / "one")
    assert code == 0, err
    proc = subprocess.run([sys.executable, str(REPO / "reproduce.py"), *argv, "--out",
                           tmp_path / "two", "--nproc", "2"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("2 processes (torchrun)") == 1
    run = os.path.join("runs", "lora-seed1")
    assert_same_run(records(tmp_path / "two" / run), records(tmp_path / "one" / run))
    for split in ("test", "dev"):
        name = os.path.join(run, "decode", f"epoch1-{split}.tsv")
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_ctrl_c_on_reproduce_over_two_processes_is_one_line(tiny, data, tmp_path):
    # Ctrl-C reaches the launcher alone (torchrun starts each rank in its own session), which
    # passes it on: the ranks save after the same step; one line, one way to go on, exit 130
    # (that the same command goes on from such a stop: the test above, and test_reproduce's)
    argv = [sys.executable, str(REPO / "reproduce.py"), "table3", "--model", tiny, "--data", data,
            "--seeds", "1", "--epochs", "2", "--limit", "32", "--mrs", "1", "--beam", "1",
            "--max-new-tokens", "4", "--batch-size", "1", "--no-meteor", "--device", "cpu",
            "--out", tmp_path / "exp", "--nproc", "2"]
    proc = subprocess.Popen(list(map(str, argv)), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,  # rank 0, in the loop: Ctrl-C
                            env=signal_on_line(tmp_path / "signal", "epoch 1: dev loss",
                                               signal.SIGINT, "parent"))  # to the launcher
    out, err = proc.communicate()
    assert proc.returncode == 130, err
    assert err == "reproduce.py: lora-seed1 stopped: rerun the same command to go on\n"
    assert "Ctrl-C: saving after this step" in out and "--resume" not in out
    assert re.search(r"^saved \S+lora-seed1 \(interrupted, step 5\)$", out, re.M), out


def test_the_ranks_die_with_their_launcher_killed_by_kill_9(tiny, data, tmp_path):
    # kill -9 to reproduce.py --nproc 2's process group (the launcher's): the ranks, each in a
    # session of its own, get SIGTERM (a parent-death signal), stop and let go of the folder
    exp = tmp_path / "exp"
    argv = [sys.executable, str(REPO / "reproduce.py"), "table3", "--model", tiny, "--data", data,
            "--seeds", "1", "--epochs", "2", "--limit", "32", "--mrs", "1", "--beam", "1",
            "--max-new-tokens", "4", "--batch-size", "1", "--no-meteor", "--device", "cpu",
            "--out", exp, "--nproc", "2"]
    proc = subprocess.Popen(list(map(str, argv)), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                            env=signal_on_line(tmp_path / "signal", "epoch 1: dev loss",
                                               signal.SIGKILL, "parent-group"))
    proc.communicate()  # (killed while training, with an epoch to go)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 60
    while held(exp / rundir.LOCK):  # the folder is free once no rank holds its lock
        assert time.monotonic() < deadline, "a rank outlived its launcher by 60 s"
        time.sleep(0.5)
    assert not (exp / "results.json").exists()  # stopped, not run to the end


def held(lock) -> bool:
    """Whether a process holds the lock file (gone: its owner removed it on the way out)."""
    try:
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return False
            except BlockingIOError:
                return True
    except FileNotFoundError:
        return False


def test_an_experiment_in_use_is_refused_once_over_two_processes(tiny, data, tmp_path):
    exp = tmp_path / "exp"
    with rundir.claim(str(exp), "reproduce.py", "wait for it to end"):  # another run holds it
        proc = subprocess.run(list(map(str, [
            sys.executable, REPO / "reproduce.py", "table3", "--model", tiny, "--data", data,
            "--seeds", "1", "--epochs", "1", "--limit", "8", "--mrs", "1", "--no-meteor",
            "--device", "cpu", "--out", exp, "--nproc", "2"])), cwd=REPO, capture_output=True,
            text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        f"reproduce.py: {exp} is in use by reproduce.py (pid {os.getpid()})"), proc.stderr


def test_the_scaling_script_runs_under_torchrun_with_one_process(tiny, data):
    # scripts/scaling.sh at a tiny size on CPU, so it cannot rot before a machine with GPUs;
    # one process under torchrun: the process group comes up and nothing is split
    env = {**os.environ, "SMOKE": "1", "SMOKE_MODEL": tiny, "PYTHON": sys.executable,
           "E2E_DATA_DIR": data}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "scaling.sh"), "1"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\| 1 \| 8 \| [\d.]+ \| \d+ \| 1\.00x \|$", proc.stdout, re.M), proc.stdout


def test_a_bad_timeout_is_one_line(tiny, data, tmp_path):
    rank0, = by_hand("train.py", [flags(tiny, data, tmp_path / "run")], LORA_DIST_TIMEOUT="soon")
    out, err = rank0.communicate()
    assert rank0.returncode == 2 and out == ""
    assert err == ("train.py: LORA_DIST_TIMEOUT=soon: give the seconds a rank waits for the "
                   "others, a positive number (default 600)\n")
