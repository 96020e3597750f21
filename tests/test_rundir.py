"""plumbing/rundir.py: one process owns a run folder (a lock the OS drops with the process), default
names never collide, and the leftovers of interrupted writes go; then the same through train.py,
with real processes started together."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO

from plumbing import rundir


def test_a_claimed_folder_is_refused_to_a_second_claim_until_released(tmp_path):
    folder = tmp_path / "a" / "b"
    owner = rundir.claim(str(folder), "first", "try later")
    assert (folder / rundir.LOCK).read_text() == f"{os.getpid()} first\n"
    with pytest.raises(rundir.FolderInUse, match=f"b is in use by first \\(pid {os.getpid()}\\); "
                                                 "try later"):
        rundir.claim(str(folder), "second", "try later")
    owner.release()
    assert not (folder / rundir.LOCK).exists()  # nothing of ours stays in the folder
    with rundir.claim(str(folder), "second", ""):
        pass
    assert folder.is_dir()  # a plain release keeps the folder it created


def test_an_abandoned_claim_removes_only_the_folders_it_created(tmp_path):
    (tmp_path / "mine").mkdir()
    owner = rundir.claim(str(tmp_path / "mine" / "x" / "y"), "p", "")
    owner.abandon()
    owner.release()
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]
    assert not any((tmp_path / "mine").iterdir())


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path):
    # kill -9 runs no clean-up: the lock file stays, but the OS has dropped the lock itself
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from plumbing import rundir; "
                               "rundir.claim(sys.argv[1], 'holder', ''); print('held', flush=True); "
                               "sys.stdin.read()", str(tmp_path / "run")], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(rundir.FolderInUse, match=f"holder \\(pid {holder.pid}\\)"):
        rundir.claim(str(tmp_path / "run"), "me", "")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / rundir.LOCK).exists()
    with rundir.claim(str(tmp_path / "run"), "me", ""):
        assert (tmp_path / "run" / rundir.LOCK).read_text() == f"{os.getpid()} me\n"


def test_new_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.secrets, "token_hex", lambda n: "abcd")  # the worst luck
    first = rundir.claim_new(str(tmp_path), "run", "p")
    assert re.fullmatch(r"run-\d{8}-\d{6}-abcd", os.path.basename(first.folder))
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "20261202-040406")
    draws = iter(["abcd", "abcd", "0001"])  # one second: the same stamp, the same draw first
    monkeypatch.setattr(rundir.secrets, "token_hex", lambda n: next(draws))
    second = rundir.claim_new(str(tmp_path), "run", "p")
    third = rundir.claim_new(str(tmp_path), "run", "p")
    assert second.folder.endswith("run-20261202-040406-abcd")
    assert third.folder.endswith("run-20261202-040406-0001")
    for claim in (first, second, third):
        claim.release()


def test_stale_files_of_every_writer_are_found_at_any_depth(tmp_path):
    (tmp_path / "model").mkdir()
    for name in ("state.safetensors.tmp", "model/.tmpA1b2C3", "model/config.json.tmp",
                 "config.json", "model/model.safetensors", "notes.tmpfile", ".tmpshort"):
        (tmp_path / name).write_text("x")
    assert rundir.remove_stale_files(str(tmp_path)) == [
        "state.safetensors.tmp", os.path.join("model", ".tmpA1b2C3"),
        os.path.join("model", "config.json.tmp")]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        ".tmpshort", "config.json", "model/model.safetensors", "notes.tmpfile"]


# --- train.py, two processes started together ---------------------------------------------------


def start(tiny, data, cwd, *flags):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "--model", tiny, "--data",
                             data, "--device", "cpu", "--limit", "16", "--max-steps", "2",
                             "--log-interval", "1", *flags], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_runs_in_one_folder_one_wins_and_the_other_changes_nothing(tiny, e2e_data,
                                                                       gpt2_vocab, tmp_path):
    run_dir = tmp_path / "run"
    procs = [start(tiny, e2e_data, tmp_path, "--out", run_dir, "--seed", seed)
             for seed in ("1", "2")]
    results = [(p.returncode, out, err) for p in procs for out, err in [p.communicate()]]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    winner = 1 + [rc for rc, _, _ in results].index(0)
    _, out, err = results[2 - winner]  # the other one: refused, one line, before any work
    assert out == "" and err.count("\n") == 1 and err.startswith("train.py: "), err
    assert "is in use by train.py (pid" in err or "already holds files" in err, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["args"]["seed"] == winner  # the winner's record, whole
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        steps = [r["step"] for r in map(json.loads, f) if r["event"] == "train"]
    assert steps == [1, 2]
    assert not (run_dir / rundir.LOCK).exists()


def test_default_named_runs_started_together_get_two_folders(tiny, e2e_data, gpt2_vocab,
                                                            tmp_path):
    procs = [start(tiny, e2e_data, tmp_path) for _ in range(2)]
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(f.name.startswith(f"e2e-lora-{os.path.basename(tiny)}-")
                                     for f in folders)
    assert all((f / "adapter.safetensors").is_file() for f in folders)
