"""train.py and harness/bookkeeping.py (its run's plumbing) on CPU: a tiny random GPT-2 (HF format,
made here) fine-tuned on real E2E examples."""

import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, random_gpt2, run_main, signal_on_line
from safetensors import safe_open

import lora
import train
from harness import bookkeeping
from model import GPT
from plumbing import checkpoint, hardware, rundir


@pytest.fixture(scope="module")
def data(e2e_data, gpt2_vocab):
    """The E2E folder, with the vocabulary known to load (else the module's tests skip)."""
    return e2e_data


def quick(tiny, data, out, *extra):
    """Flags for a quick run: 64 examples (8 steps per epoch), no warmup, a log line per step."""
    return ["--model", tiny, "--data", data, "--device", "cpu", "--out", str(out), "--limit", "64",
            "--warmup", "0", "--log-interval", "1", *extra]


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r["event"] == "train"}


def run_in_process(argv):
    """train.py's own run (train.train) in this process, keeping the model it built (and its
    frozen weights as built) to look at afterwards."""
    built, build_model = {}, train.build_model

    def keep(*args):
        model = built["model"] = build_model(*args)
        built["frozen"] = {n: p.detach().clone() for n, p in model.named_parameters()
                           if not p.requires_grad}
        return model
    train.build_model = keep
    try:
        cfg, given = train.parse_args(argv)
        code = train.train(cfg, given=given)
    finally:
        train.build_model = build_model
    return code, built["model"], built["frozen"]


def on_step(monkeypatch, hook):
    """hook(step) at the start of each optimizer step of train.py's loop (step: the steps done
    before it), through lr_at, which the loop calls once per step."""
    lr_at = train.lr_at

    def wrapped(step, *args):
        hook(step)
        return lr_at(step, *args)
    monkeypatch.setattr(train, "lr_at", wrapped)


def assert_loss_falls(run_dir):
    values = list(losses(run_dir).values())
    assert len(values) == 30
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < first - 0.5, (first, last)


@pytest.mark.parametrize("method, lr", [("lora", "2e-2"), ("adapter_h", "2e-2")])
def test_lora_and_adapter_training_moves_only_their_tensors(tiny, data, tmp_path, method, lr):
    rc, model, frozen = run_in_process(quick(tiny, data, tmp_path / "run", "--method", method,
                                             "--max-steps", "30", "--lr", lr,
                                             "--label-smoothing", "0", "--rank", "4"))
    assert rc == 0
    assert_loss_falls(tmp_path / "run")
    for name, p in model.named_parameters():  # the base is bit-identical after training
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    with safe_open(str(tmp_path / "run" / "adapter.safetensors"), "pt") as f:
        keys = list(f.keys())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(keys) == trainable
    if method == "lora":
        assert all(k.endswith((".A", ".B")) for k in keys) and len(keys) == 2 * 2 * 2


def test_full_fine_tuning_saves_a_gpt2_checkpoint(tiny, data, tmp_path):
    rc, model, frozen = run_in_process(quick(tiny, data, tmp_path / "run", "--method", "full",
                                             "--max-steps", "30", "--lr", "2e-3",
                                             "--label-smoothing", "0"))
    assert rc == 0 and frozen == {}
    assert_loss_falls(tmp_path / "run")
    saved = GPT.from_pretrained(str(tmp_path / "run" / "model")).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(saved["transformer.h.0.attn.q.weight"],
                           GPT.from_pretrained(tiny).state_dict()["transformer.h.0.attn.q.weight"])


def test_random_init_trains_the_shape_from_scratch(tiny, data, tmp_path):
    argv = quick(tiny, data, tmp_path / "run", "--method", "full", "--random-init",
                 "--max-steps", "30", "--lr", "2e-3", "--label-smoothing", "0")
    model = train.build_model(train.parse_args(argv)[0], torch.device("cpu"))
    pretrained = GPT.from_pretrained(tiny)
    torch.manual_seed(110)  # --seed's default: GPT-2's init of the checkpoint's shape
    fresh = GPT(pretrained.config)
    for name, p in model.state_dict().items():
        assert torch.equal(p, fresh.state_dict()[name]), name
        if name.endswith("weight") and "ln_" not in name:  # LayerNorm weights start at 1
            assert not torch.equal(p, pretrained.state_dict()[name]), name
    proc = cli(*argv)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "parameters trainable, from random init (--random-init)" in out
    assert_loss_falls(tmp_path / "run")
    GPT.from_pretrained(str(tmp_path / "run" / "model"))  # a GPT-2 checkpoint sample.py loads
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["random_init"] is True  # so a --resume starts the same way


def test_random_init_of_a_preset_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))  # empty, and no network here
    args, _ = train.parse_args(["--model", "gpt2", "--random-init", "--method", "full"])
    model = train.build_model(args, torch.device("cpu"))
    assert model.num_params() == 124_439_808  # GPT-2 small, as transformers counts it
    assert not (tmp_path / "cache").exists()


def test_gradient_accumulation_gives_the_same_steps(tiny, data, tmp_path):
    args = ["--max-steps", "3", "--dropout", "0", "--lora-dropout", "0"]
    run_in_process(quick(tiny, data, tmp_path / "a", *args))
    run_in_process(quick(tiny, data, tmp_path / "b", *args, "--grad-accum", "4"))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-5 for s in a)


def test_a_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, data, tmp_path, monkeypatch,
                                                                    capsys):
    calls = {"n": 0}
    real = train.token_loss

    def nan_after_epoch_1(*args, **kwargs):  # steps 1-8 fine (epoch 1 ends, saved), then NaN
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 8 + 64 // 8 else loss  # 8 steps + dev batches
    monkeypatch.setattr(train, "token_loss", nan_after_epoch_1)
    rc, _, _ = run_in_process(quick(tiny, data, tmp_path / "run", "--max-steps", "20"))
    assert rc == 1
    assert "the loss became nan at step 9; stopped, the last good checkpoint (step 8)" in \
        capsys.readouterr().err
    with safe_open(str(tmp_path / "run" / "state.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["step"] == 8


def test_weights_that_are_no_longer_finite_are_never_saved(tiny, data, tmp_path, monkeypatch,
                                                           capsys):
    make_optimizer, steps = train.make_optimizer, []

    def optimizer_leaving_nan(*args, **kwargs):  # the 4th step's loss is finite, but it leaves
        optimizer = make_optimizer(*args, **kwargs)  # NaN in B
        step = optimizer.step

        def nan_at_step_4(*args, **kwargs):
            result = step(*args, **kwargs)
            steps.append(len(steps) + 1)
            if len(steps) == 4:
                with torch.no_grad():
                    optimizer.param_groups[0]["params"][0].fill_(float("nan"))
            return result
        optimizer.step = nan_at_step_4
        return optimizer
    monkeypatch.setattr(train, "make_optimizer", optimizer_leaving_nan)
    rc, _, _ = run_in_process(quick(tiny, data, tmp_path / "run", "--max-steps", "6",
                                    "--save-every", "2", "--log-interval", "100"))
    assert rc == 1
    assert ("the weights became nan at step 4; stopped, the last good checkpoint (step 2)"
            in capsys.readouterr().err)
    with safe_open(str(tmp_path / "run" / "state.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["step"] == 2


# --- the real command line -------------------------------------------------------------------


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def main(capsys, *argv):
    """The same command line, in this process (seconds quicker): (exit code, stdout, stderr)."""
    return run_main(train.main, capsys, *argv)


@pytest.mark.parametrize("flags, message", [
    (["--targets", "q,x"], "unknown LoRA target 'x': choose from q, k, v, o"),
    (["--targets", "q,,v"], "targets 'q,,v' have an empty entry: give them as e.g. q,v"),
    (["--rank", "0"], "rank r must be an integer >= 1, got 0"),
    (["--model", "/nowhere/gpt2"], "no such file or directory: /nowhere/gpt2"),
    (["--data", "/nowhere"], "/nowhere: no such folder"),
    (["--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
    (["--method", "prefix"], "argument --method: invalid choice: 'prefix'"),
    (["--resume", "/nowhere"], "/nowhere holds no run to resume (no config.json)"),
    (["--random-init", None, "--method", "lora"], "--method lora adapts pretrained weights that it "
                                            "would lack"),
    (["--random-init", None, "--method", "full", "--model", "/nowhere/gpt2"],
     "--random-init needs the shape of --model /nowhere/gpt2: a preset"),
])
def test_user_errors_are_one_line_and_write_nothing(tiny, data, tmp_path, capsys, flags, message):
    argv = quick(tiny, data, tmp_path / "run")
    for flag, value in zip(flags[::2], flags[1::2]):  # value None: a switch
        if value is None:
            argv.append(flag)
        elif flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    code, out, err = main(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("train.py: ") and message in err, err
    assert out == ""
    assert not (tmp_path / "run").exists()


def test_the_command_line_imports_no_subsystem_it_does_not_use():
    # every subsystem's error subclasses plumbing/errors.py's UserError, so train.py's one-line
    # errors need no import of them: training loads neither the metrics nor METEOR
    code = ("import sys; import train; "
            "print([m for m in sys.modules if 'meteor' in m or 'metrics' in m])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "[]\n", proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tiny, data, tmp_path):
    argv = quick(tiny, data, tmp_path / "run")
    argv[argv.index("--device") + 1] = "cuda"
    proc = cli(*argv)
    out, err = proc.communicate()
    assert proc.returncode == 2 and "sees no CUDA GPU; use --device cpu" in err
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_never_overwritten(tiny, data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep me")
    proc = cli(*quick(tiny, data, tmp_path / "run"))
    _, err = proc.communicate()
    assert proc.returncode == 2 and "already holds files" in err
    assert (tmp_path / "run" / "mine.txt").read_text() == "keep me"


@pytest.mark.fast
def test_the_readme_command_runs_end_to_end(tiny, data, tmp_path, user_env):
    # The README's quick run: python train.py --rank 4 --targets q,v --model <tiny> --data ...,
    # as `make train` installs it: no transformers, peft or pycocoevalcap
    proc = cli("--rank", "4", "--targets", "q,v", "--model", tiny, "--data", data,
               "--max-steps", "20", "--device", "cpu", "--out", tmp_path / "run", env=user_env)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "LoRA r=4 alpha=32 on q,v" in out and "step 20/20" in out
    assert checkpoint.read_adapter_metadata(str(tmp_path / "run" / "adapter.safetensors"), "lora",
                                      GPT.from_pretrained(tiny))["r"] == 4
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["lr"] == 2e-4 and config["args"]["label_smoothing"] == 0.1
    # the released recipe: its text, no dropout in the backbone, 0.1 on the LoRA path
    assert (config["args"]["format"], config["args"]["dropout"], config["args"]["lora_dropout"]) \
        == ("paper", 0.0, 0.1)
    model = train.build_model(train.parse_args(["--model", tiny])[0], torch.device("cpu"))
    assert model.transformer.drop.p == model.transformer.h[0].attn.attn_dropout == 0.0  # (the
    assert model.transformer.h[0].mlp.dropout.p == 0.0  # checkpoint's config.json says 0.1)
    assert {layer.dropout.p for layer in lora.lora_layers(model).values()} == {0.1}


def test_the_official_format_trains_on_the_csv_text(tiny, data, tmp_path):
    proc = cli(*quick(tiny, data, tmp_path / "run", "--format", "official", "--max-steps", "2"))
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["format"] == "official" and config["data_format"].startswith("v1:")


# --- long runs: periodic checkpoints, signals, kills, resume ---------------------------------


def train_records(run_dir):
    """Every 'train' record of metrics.jsonl, in order, duplicates kept: [(step, loss)]."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if r["event"] == "train"]


LONG = ["--epochs", "10", "--max-steps", "40", "--save-every", "10", "--lr", "1e-2",
        "--dropout", "0.1"]


# the tests that compare with the run below run in one worker of pytest-xdist, which runs it once
with_the_uninterrupted_run = pytest.mark.xdist_group("train-uninterrupted")


@pytest.fixture(scope="module")
def uninterrupted(tiny, data, tmp_path_factory):
    """The losses of the 40-step run that the interrupted ones must reproduce."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    proc = cli(*quick(tiny, data, run_dir, *LONG))
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    return train_records(run_dir)


def interrupted(argv, step, sig, tmp_path):
    """train.py with argv, sent sig by itself as it prints step's log line (conftest's
    signal_on_line: the run stops after the next step, however loaded the machine): the process,
    its output and errors."""
    proc = cli(*argv, env=signal_on_line(tmp_path / "signal", f"step {step}/", sig))
    return proc, *proc.communicate()


@with_the_uninterrupted_run
@pytest.mark.parametrize("sig, code, stop_at", [(signal.SIGINT, 130, 11),
                                                (signal.SIGTERM, 143, 30)])
def test_a_signal_saves_and_resume_equals_an_uninterrupted_run(tiny, data, tmp_path,
                                                               uninterrupted, sig, code, stop_at):
    run_dir = tmp_path / "run"
    proc, out, err = interrupted(quick(tiny, data, run_dir, *LONG), stop_at, sig, tmp_path)
    assert proc.returncode == code, err
    name = "Ctrl-C" if sig == signal.SIGINT else sig.name
    assert f"{name}: saving after this step" in out and err == ""
    stopped = max(step for step, _ in train_records(run_dir))
    assert stopped == stop_at + 1 and f"stopped at step {stopped}" in out  # (the step under way)
    assert f"python train.py --resume {run_dir}" in out
    resumed = cli("--resume", run_dir)
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert f"resuming at step {stopped}" in out
    # the same batches, dropout masks and optimizer state: the same losses, each step once
    assert train_records(run_dir) == uninterrupted
    assert [step for step, _ in uninterrupted] == list(range(1, 41))


def test_sighup_saves_after_the_step_as_sigterm_does(tiny, data, tmp_path):
    # a closed terminal, a dropped ssh connection: the same stop as SIGTERM's (whose resume the
    # test above compares with an uninterrupted run), exit 128 + 1
    run_dir = tmp_path / "run"
    proc, out, err = interrupted(quick(tiny, data, run_dir, *LONG), 5, signal.SIGHUP, tmp_path)
    assert proc.returncode == 129 and err == "", err
    stopped = max(step for step, _ in train_records(run_dir))
    assert "SIGHUP: saving after this step" in out and f"stopped at step {stopped}" in out
    assert f"saved {run_dir} (interrupted, step {stopped})" in out
    assert f"python train.py --resume {run_dir}" in out


@with_the_uninterrupted_run
def test_kill_9_loses_only_the_steps_since_the_last_periodic_checkpoint(tiny, data, tmp_path,
                                                                        uninterrupted):
    run_dir = tmp_path / "run"
    proc, _, _ = interrupted(quick(tiny, data, run_dir, *LONG), 21, signal.SIGKILL, tmp_path)
    assert proc.returncode == -signal.SIGKILL
    assert max(step for step, _ in train_records(run_dir)) == 21
    with safe_open(str(run_dir / "state.safetensors"), "pt") as f:  # (epochs end at 8, 16, 24)
        assert json.loads(f.metadata()["state"])["step"] == 20  # the --save-every 10 checkpoint
    resumed = cli("--resume", run_dir)
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert "resuming at step 20" in out
    assert train_records(run_dir) == uninterrupted  # steps 21 on ran again, logged once


@pytest.fixture(scope="module")
def finished(tiny, data, tmp_path_factory):
    """A finished 4-step LoRA run; tests take a copy (finished_copy)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = cli(*quick(tiny, data, run_dir, "--max-steps", "4"))
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    return run_dir


def finished_copy(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def test_resume_takes_safe_flags_and_refuses_the_others(finished, tmp_path, capsys):
    run_dir = finished_copy(finished, tmp_path)
    code, out, err = main(capsys, "--resume", run_dir, "--max-steps", "8", "--lr", "1",
                          "--rank", "2")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--lr, --rank cannot change when a run resumes" in err, err
    code, out, err = main(capsys, "--resume", run_dir, "--max-steps", "8", "--log-interval", "2")
    assert code == 0, err
    assert [step for step, _ in train_records(run_dir)] == [1, 2, 3, 4, 6, 8]
    config = json.loads((run_dir / "config.json").read_text())
    # the new length is the run's now (a plain --resume keeps it); the change is listed
    assert config["args"]["max_steps"] == 8 and config["args"]["log_interval"] == 2
    assert [r["changed"] for r in config["resumed"]] == [{"log_interval": 2, "max_steps": 8}]
    code, out, err = main(capsys, "--resume", run_dir)
    assert code == 0 and err == "", err
    assert "has run all its 8 steps already: nothing to do" in out
    assert [step for step, _ in train_records(run_dir)] == [1, 2, 3, 4, 6, 8]


def folder_bytes(folder) -> dict:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(Path(folder).rglob("*"))
            if f.is_file()}


@pytest.mark.parametrize("method", [(), ("--init", "pissa"), ("--dora",),
                                    ("--method", "adapter_h")])
def test_a_resume_refuses_a_base_replaced_since_and_goes_on_over_the_original(
        data, tmp_path, capsys, method):
    base = tmp_path / "base"
    random_gpt2(n_positions=256).save_pretrained(base)
    original = folder_bytes(base)
    run_dir = finished_run(str(base), data, tmp_path / "run", *method)
    before = folder_bytes(run_dir)
    random_gpt2(seed=1, n_positions=256).save_pretrained(base)  # the same shape, other weights
    code, out, err = main(capsys, "--resume", run_dir, "--max-steps", "4")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"{run_dir} was trained on other weights than {base} holds now" in err
    assert "put back the checkpoint it started from" in err
    assert folder_bytes(run_dir) == before  # nothing written
    for name, content in original.items():  # the original put back: the run goes on
        (base / name).write_bytes(content)
    code, out, err = main(capsys, "--resume", run_dir, "--max-steps", "4")
    assert code == 0, err
    assert max(losses(run_dir)) == 4


@pytest.mark.parametrize("saved, resumed", [(False, None), (True, "default")])
def test_a_run_saved_when_compile_was_a_switch_resumes(finished, tmp_path, saved, resumed):
    run_dir = finished_copy(finished, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["args"]["compile"] is None  # today's runs record the mode
    config["args"]["compile"] = saved
    (run_dir / "config.json").write_text(json.dumps(config))
    assert bookkeeping.resumed(*train.parse_args(["--resume", str(run_dir)])).compile == resumed


def test_relative_paths_are_recorded_absolute_so_a_resume_works_from_anywhere(tiny, data,
                                                                             tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    shutil.copytree(tiny, work / "tiny")
    argv = [str(REPO / "train.py"), "--model", "tiny", "--data", data, "--out", "run",
            "--device", "cpu", "--limit", "64", "--warmup", "0", "--max-steps", "2"]
    first = subprocess.run([sys.executable, *argv], cwd=work, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    config = json.loads((work / "run" / "config.json").read_text())["args"]
    assert config["model"] == str(work / "tiny") and config["out"] == str(work / "run")
    again = subprocess.run([sys.executable, str(REPO / "train.py"), "--resume", "../work/run",
                            "--max-steps", "4"], cwd=elsewhere, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    meta = checkpoint.load_metadata(str(work / "run" / "adapter.safetensors"))
    assert meta["base_model"] == str(work / "tiny")


def test_stale_temporary_files_are_removed(finished, tmp_path):
    run_dir = finished_copy(finished, tmp_path)
    (run_dir / "state.safetensors.tmp").write_bytes(b"half a file")
    (run_dir / "model").mkdir()  # what a kill -9 inside safetensors' own write leaves, at depth
    (run_dir / "model" / ".tmpX7kQ2p").write_bytes(b"half of 1.4 GB")
    out, err = cli("--resume", run_dir, "--max-steps", "5").communicate()
    assert "removed state.safetensors.tmp" in out, err
    assert f"removed {os.path.join('model', '.tmpX7kQ2p')}" in out
    assert not (run_dir / "state.safetensors.tmp").exists()
    assert not (run_dir / "model" / ".tmpX7kQ2p").exists()


def test_saved_files_get_the_umasks_permissions(finished):
    # safetensors writes 0600 whatever the umask; a shared run folder must be readable
    umask = os.umask(0)
    os.umask(umask)
    for name in ("adapter.safetensors", "state.safetensors", "config.json"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_run_without_a_checkpoint_can_start_again_or_resume_from_step_0(tiny, data, finished,
                                                                         tmp_path):
    run_dir = finished_copy(finished, tmp_path)
    (run_dir / "state.safetensors").unlink()  # as if killed before its first checkpoint
    (run_dir / "adapter.safetensors").unlink()
    out, err = cli("--resume", run_dir, "--max-steps", "2").communicate()
    assert "has no checkpoint yet: resuming it from step 0" in out, err
    assert [step for step, _ in train_records(run_dir)] == [1, 2]
    (run_dir / "state.safetensors").unlink()
    (run_dir / "adapter.safetensors").unlink()
    proc = cli(*quick(tiny, data, run_dir, "--max-steps", "3"))
    out, err = proc.communicate()
    assert proc.returncode == 0 and "never saved a checkpoint: starting it again" in out, err
    assert [step for step, _ in train_records(run_dir)] == [1, 2, 3]


def test_a_cuda_run_resumes_on_cpu(finished, tmp_path):
    run_dir = finished_copy(finished, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    config["args"].update(device="cuda", dtype="bf16")  # what a GPU run records
    (run_dir / "config.json").write_text(json.dumps(config))
    if not torch.cuda.is_available():
        out, err = cli("--resume", run_dir, "--max-steps", "5").communicate()
        assert "sees no CUDA GPU; use --device cpu" in err
    proc = cli("--resume", run_dir, "--max-steps", "5", "--device", "cpu", "--dtype", "auto")
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "resuming at step 4" in out


def test_a_second_signal_during_a_save_waits_for_it(tiny, data, tmp_path, monkeypatch):
    # in this process, so the signals land exactly where they must
    calls = {"n": 0}
    real_save = train.save_result

    def step(_):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # stop after this step

    def save_result(model, args, run_dir):
        os.kill(os.getpid(), signal.SIGINT)  # again, while the checkpoint is written
        real_save(model, args, run_dir)

    on_step(monkeypatch, step)
    monkeypatch.setattr(train, "save_result", save_result)
    rc, _, _ = run_in_process(quick(tiny, data, tmp_path / "run", "--max-steps", "20"))
    assert rc == 130
    with safe_open(str(tmp_path / "run" / "state.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["step"] == 3
    assert (tmp_path / "run" / "adapter.safetensors").exists()


def test_two_signals_before_a_checkpoint_quit_with_one_line(tiny, data, tmp_path, monkeypatch,
                                                            capsys):
    def step(done):
        if done == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    on_step(monkeypatch, step)
    rc, _, _ = run_in_process(quick(tiny, data, tmp_path / "run", "--max-steps", "20"))
    err = capsys.readouterr().err
    assert rc == 130  # as for one Ctrl-C (2 is a usage error)
    assert err == "train.py: Ctrl-C again: quit without saving; no checkpoint was saved\n"
    assert not (tmp_path / "run" / "state.safetensors").exists()


# --- bad input: one line, exit 2, nothing written ----------------------------------------------


def finished_run(tiny, data, run_dir, *extra):
    proc = cli(*quick(tiny, data, run_dir, "--max-steps", "2", *extra))
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    return run_dir


def csv_folder(data, tmp_path, edit):
    """A copy of the E2E folder with edit(name, text) -> text applied to each CSV."""
    folder = tmp_path / "csvs"
    folder.mkdir()
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        text = (Path(data) / name).read_text(encoding="utf-8")
        (folder / name).write_text(edit(name, text), encoding="utf-8")
    return folder


def header_only(name, text):
    return text.split("\n", 1)[0] + "\n"


def with_end_of_text(name, text):
    return text.replace("Alimentum is not a family-friendly place, located in city centre.",
                        "Alimentum is a place<|endoftext|>.", 1) if name == "devset.csv" else text


@pytest.mark.parametrize("case, message", [
    ("truncated state", "state.safetensors is damaged and cannot be resumed"),
    ("random state", "state.safetensors is damaged and cannot be resumed"),
    ("config without args", "is not a run's config.json written by train.py"),
    ("state of another method", "holds the state of another run"),
    ("out is a file", "is a file, not a folder; pick another --out"),
    ("out cannot be written", "cannot write to /proc/lora-gpt2-run"),
    ("header-only trainset", "trainset.csv holds no examples, only a header"),
    ("header-only CSVs", "holds no examples, only a header"),
    ("lr inf", "--lr must be a finite number, got inf"),
    ("weight decay nan", "--weight-decay must be a finite number, not negative: got nan"),
    ("end of text in a reference", "devset.csv, row 4: holds '<|endoftext|>'"),
])
def test_bad_input_is_one_line_with_exit_2(tiny, data, finished, tmp_path, capsys, case, message):
    run_dir, argv = tmp_path / "run", None
    if case in ("truncated state", "random state", "config without args",
                "state of another method"):
        finished_copy(finished, tmp_path)
        state = run_dir / "state.safetensors"
        if case == "truncated state":
            state.write_bytes(state.read_bytes()[:1000])
        elif case == "random state":
            state.write_bytes(os.urandom(5000))
        elif case == "config without args":
            (run_dir / "config.json").write_text("{}")
        else:
            other = finished_run(tiny, data, tmp_path / "full", "--method", "full")
            shutil.copy(other / "state.safetensors", state)
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        argv = ["--resume", run_dir]
    elif case == "out is a file":
        run_dir.write_text("mine")
    elif case == "out cannot be written":
        run_dir = Path("/proc/lora-gpt2-run")  # nobody, root included, can create this
    elif case.startswith("header-only"):
        data = csv_folder(data, tmp_path, header_only if case == "header-only CSVs" else
                          lambda name, text: header_only(name, text) if name == "trainset.csv"
                          else text)
    elif case == "end of text in a reference":
        data = csv_folder(data, tmp_path, with_end_of_text)
    if argv is None:
        flag = {"lr inf": ["--lr", "inf"], "weight decay nan": ["--weight-decay", "nan"]}
        argv = quick(tiny, data, run_dir, *flag.get(case, []))
    code, out, err = main(capsys, *argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("train.py: ") and message in err, err
    if case.startswith("header-only"):  # --data DIR is the user's: deleting it downloads nothing
        assert "delete the file" not in err
    if argv[0] == "--resume":  # nothing written half-way
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    elif case == "out is a file":
        assert run_dir.read_text() == "mine"
    else:
        assert not run_dir.exists()


# --- one owner per run, and a line for every user error (train.main, the command line's path) --


@pytest.mark.parametrize("flags, message", [
    (["--rank", "64"], "rank r=64 is larger than q (32 x 32) allows: at most 32 (--rank)"),
    (["--method", "adapter_h", "--rank", "64"],
     "adapter bottleneck r must be an integer in [1, 32], got 64 (--rank)"),
    (["--method", "full", "--rank", "8"], "--method full does not use --rank; drop it"),
    (["--method", "full", "--targets", "q,k", "--alpha", "4"],
     "--method full does not use --targets, --alpha; drop them"),
    (["--method", "adapter_l", "--lora-dropout", "0.2"],
     "--method adapter_l does not use --lora-dropout"),
    (["--model", "{adapter}"], "adapter.safetensors is an adapter (train.py's), not a GPT-2 "
                               "checkpoint: pass its base model as --model"),
])
def test_more_user_errors_are_one_line_and_write_nothing(tiny, data, finished, tmp_path, capsys,
                                                         flags, message):
    flags = [f.format(adapter=finished / "adapter.safetensors") for f in flags]
    argv = quick(tiny, data, tmp_path / "run")
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    code, out, err = main(capsys, *argv)
    assert code == 2 and out == "", out
    assert err.count("\n") == 1 and err.startswith("train.py: ") and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_run_folder_in_use_is_refused_before_any_work(tiny, data, finished, tmp_path, capsys):
    run_dir = finished_copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with rundir.claim(str(run_dir), "sample.py", "wait"):  # another process decoding there
        code, out, err = main(capsys, "--resume", run_dir, "--max-steps", "6")
        assert code == 2 and out == ""
        assert err == (f"train.py: {run_dir} is in use by sample.py (pid {os.getpid()}); wait "
                       "for it to end, or pick another --out\n")
        code, _, err = main(capsys, *quick(tiny, data, run_dir))
        assert code == 2 and "is in use by sample.py" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_a_state_file_with_nan_is_refused_not_called_good(finished, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    run_dir = finished_copy(finished, tmp_path)
    path = str(run_dir / "state.safetensors")
    meta, tensors = checkpoint.load_metadata(path), load_file(path)
    tensors[next(k for k in tensors if k.startswith("param."))][0, 0] = float("nan")
    save_file(tensors, path, metadata=meta)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, out, err = main(capsys, "--resume", run_dir, "--max-steps", "6")
    assert code == 2 and err.count("\n") == 1, err
    assert "state.safetensors holds NaN or infinite values (param.transformer.h.0" in err
    assert "the run had diverged when it was saved" in err and "last good" not in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


@pytest.mark.parametrize("resume", [False, True])
def test_ctrl_c_before_training_is_one_line_and_writes_nothing(tiny, data, finished, tmp_path,
                                                               capsys, monkeypatch, resume):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "build_model", interrupted)  # Ctrl-C while the model loads
    if resume:
        run_dir = finished_copy(finished, tmp_path)
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        code, out, err = main(capsys, "--resume", run_dir)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    else:
        code, out, err = main(capsys, *quick(tiny, data, tmp_path / "new" / "run"))
        assert not (tmp_path / "new").exists()  # the folders made for it are gone again
    assert code == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("train.py: Ctrl-C: stopped before training began; nothing was "
                          "written"), err
    assert (f"continue with: python train.py --resume {tmp_path / 'run'}" in err) == resume


def test_what_a_run_shows_evaluations_projection_and_training_speed(tiny, data, tmp_path,
                                                                    capsys, monkeypatch):
    # a clock that moves 1 s per step and 100 s per dev evaluation: tokens/s counts steps only
    now = [1000.0]
    fake = type("FakeTime", (), {"time": staticmethod(lambda: now[0]),
                                 "strftime": staticmethod(time.strftime),
                                 "gmtime": staticmethod(time.gmtime)})
    real_dev_loss = train.dev_loss

    def step(_):
        now[0] += 1

    def dev_loss(*args, **kwargs):
        now[0] += 100
        return real_dev_loss(*args, **kwargs)
    monkeypatch.setattr(bookkeeping, "time", fake)
    on_step(monkeypatch, step)
    monkeypatch.setattr(train, "dev_loss", dev_loss)
    argv = quick(tiny, data, tmp_path / "run", "--max-steps", "4", "--eval-interval", "2")
    argv[argv.index("--device") + 1] = "auto"  # what make train does on a machine without a GPU
    code, out, err = main(capsys, *argv)
    assert code == 0, err
    assert "step 2: dev loss " in out  # --eval-interval's dev loss, on the console too
    assert re.search(r"s per step so far: the 3 steps left take about \d\d:\d\d:\d\d", out)
    if not torch.cuda.is_available():
        assert "no CUDA GPU here, so this trains on the CPU" in out.split("step 1/4")[0]
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
        speeds = {r["step"]: r["tokens_per_s"] for r in map(json.loads, f) if r["event"] == "train"}
    # 8 examples of 20+ tokens per (fake) second; with the evaluation's 100 s, step 3 would
    # have read under 10
    assert list(speeds) == [1, 2, 3, 4] and min(speeds.values()) > 100, speeds


def test_device_auto_picks_cuda_then_mps_then_cpu_and_mps_runs_fp32(monkeypatch, tiny, data,
                                                                     tmp_path, capsys):
    """Apple GPUs: auto takes MPS where there is no CUDA, and there no autocast and no
    GradScaler is used (nothing here runs on MPS: this machine has none)."""
    from plumbing import cli
    for cuda, mps, picked in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        assert hardware.pick_device("auto").type == picked
    mps = torch.device("mps")
    assert hardware.amp_dtype(mps, "auto", "training") is None
    with pytest.raises(cli.UserError, match="--dtype bf16: on MPS training runs in fp32, where "
                                            "it is tested"):
        hardware.amp_dtype(mps, "bf16", "training")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    argv = quick(tiny, data, tmp_path / "run")
    argv[argv.index("--device") + 1] = "mps"
    code, out, err = main(capsys, *argv)
    assert code == 2 and err == (f"train.py: --device mps, but this torch ({torch.__version__}) "
                                 "sees no Apple GPU (MPS); use --device cpu\n")


# --- the run folder train.py printed, as sample.py's --adapter ---------------------------------


def sample_main(capsys, *argv):
    import sample
    return run_main(sample.main, capsys, *argv)


DECODE_ONE = ("--limit", "1", "--beam", "1", "--max-new-tokens", "4", "--no-meteor",
              "--device", "cpu")


def test_sample_takes_a_run_folder_as_adapter(tiny, data, finished, tmp_path, capsys):
    run_dir = finished_copy(finished, tmp_path)
    assert (run_dir / "state.safetensors").exists()  # (a checkpoint: not the adapter to decode)
    code, out, err = sample_main(capsys, "--adapter", run_dir, *DECODE_ONE)
    assert code == 0 and "merged LoRA" in out, err
    assert (run_dir / "predictions-first1.tsv").exists()
    full = finished_run(tiny, data, tmp_path / "full", "--method", "full")
    code, out, err = sample_main(capsys, "--adapter", full, *DECODE_ONE)
    assert code == 0, err
    assert (full / "predictions-first1.tsv").exists()


@pytest.mark.parametrize("given, fragment", [
    ("config.json", "config.json is not an adapter: pass train.py's adapter.safetensors or its "
                    "run folder"),
    ("state.safetensors", "state.safetensors is not an adapter saved by train.py"),
    ("unfinished", "is a run folder without a result yet (train.py writes adapter.safetensors "
                   "when the run ends; continue it with: python train.py --resume"),
])
def test_a_run_folders_other_files_as_adapter_are_one_line_without_bad_advice(
        finished, tmp_path, capsys, given, fragment):
    run_dir = finished_copy(finished, tmp_path)
    if given == "unfinished":
        (run_dir / "adapter.safetensors").unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    where = run_dir if given == "unfinished" else run_dir / given
    code, out, err = sample_main(capsys, "--adapter", where, *DECODE_ONE)
    assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, err
    assert "delete" not in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


# --- a disk that fills up, a folder that turns read-only ----------------------------------------


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(tiny, data, tmp_path,
                                                                         capsys, monkeypatch):
    # the writer fails as safetensors fails on a full disk (half a .tmp file written, then its
    # error), at the checkpoint of step 4; the one of step 2 must stay as it was
    import safetensors.torch
    from safetensors import SafetensorError
    real, calls, before = safetensors.torch.save_file, [], {}
    run_dir = tmp_path / "run"

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) < 3:  # step 2: adapter.safetensors, state.safetensors
            return real(tensors, filename, metadata=metadata)
        before.update({p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()})
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    code, out, err = main(capsys, *quick(tiny, data, run_dir, "--max-steps", "8",
                                         "--save-every", "2"))
    assert code == 1 and err == (
        f"train.py: cannot write {run_dir / 'adapter.safetensors'} (No space left on device); "
        f"stopped, the last checkpoint (step 2) is in {run_dir}; make room (or make the folder "
        f"writable again), then continue with: python train.py --resume {run_dir}\n")
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert not [name for name in after if rundir.is_stale(name)]  # no .tmp left behind
    for name in ("adapter.safetensors", "state.safetensors", "config.json"):
        assert after[name] == before[name]
    monkeypatch.setattr(safetensors.torch, "save_file", real)  # room again: the run goes on
    code, out, err = main(capsys, "--resume", run_dir)
    assert code == 0 and "resuming at step 2" in out, err


@pytest.mark.parametrize("errno_", [errno.EROFS, errno.EPERM])
def test_a_folder_that_turns_unwritable_is_one_line(finished, tmp_path, capsys, monkeypatch,
                                                    errno_):
    # a read-only remount (EROFS) or chattr +i (EPERM) mid-run: the checkpoint's write and the
    # lock's removal refused with the real OSError
    import safetensors.torch
    run_dir = finished_copy(finished, tmp_path)
    real_unlink = os.unlink

    def refused(path, *args, **kwargs):
        if str(path).startswith(str(run_dir)):
            raise OSError(errno_, os.strerror(errno_), str(path))
        return real_unlink(path, *args, **kwargs)
    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, filename, **k:
                        refused(filename))
    monkeypatch.setattr(os, "unlink", refused)
    code, out, err = main(capsys, "--resume", run_dir, "--max-steps", "6")
    assert code == 1 and err == (
        f"train.py: cannot write {run_dir / 'adapter.safetensors'} ({os.strerror(errno_)}); "
        f"stopped, the last checkpoint (step 4) is in {run_dir}; make room (or make the folder "
        f"writable again), then continue with: python train.py --resume {run_dir}\n")


def test_resuming_in_a_read_only_folder_is_one_line(finished, tmp_path, capsys, monkeypatch):
    # a read-only mount: every file the folder would get is refused with the real OSError
    run_dir = finished_copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(run_dir)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only)
    code, out, err = main(capsys, "--resume", run_dir, "--max-steps", "6")
    assert code == 2 and err == (
        f"train.py: cannot write to {run_dir} (Read-only file system); make it writable, or copy "
        "the folder elsewhere and resume the copy\n")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_the_commands_it_prints_paste_into_a_shell(tiny, data, tmp_path, capsys):
    run_dir = tmp_path / "my run ü"  # (a space, a letter outside ASCII)
    code, out, err = main(capsys, *quick(tiny, data, run_dir, "--max-steps", "2"))
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("done: "))
    command = shlex.split(line.split("decode and score it with: ")[1])
    assert command == ["python", "sample.py", "--adapter", str(run_dir / "adapter.safetensors")]
    code, out, err = main(capsys, *quick(tiny, data, run_dir))  # (a folder with a run in it)
    assert code == 2 and shlex.split(err.split("continue that run with ")[1]) == [
        "--resume", str(run_dir)], err


def test_a_cpu_run_says_how_long_it_takes_before_its_first_step(tiny, data, tmp_path, capsys,
                                                                monkeypatch):
    # projected from the FLOPs its steps need (paper/mfu.py) at this CPU's measured speed
    argv = quick(tiny, data, tmp_path / "run", "--max-steps", "2")
    argv[argv.index("--device") + 1] = "auto"
    code, out, err = main(capsys, *argv)
    assert code == 0, err
    first = out.split("step 1/2")[0]
    assert re.search(r"no CUDA GPU here, so this trains on the CPU: its 2 steps take about \d+ "
                     r"seconds \(projected from the FLOPs they need", first), first
    assert "docs/no-gpu.md" not in out
    # a run of hours (here: a CPU 10^9 times slower) says so, with the route that ends in minutes
    monkeypatch.setattr(bookkeeping, "CPU_MFU", bookkeeping.CPU_MFU * 1e-9)
    argv[argv.index("--out") + 1] = str(tmp_path / "slow")
    code, out, err = main(capsys, *argv)
    assert code == 0, err
    line = next(line for line in out.split("step 1/2")[0].splitlines() if "its 2 steps" in line)
    assert re.search(r"take about [\d.]+ days", line) and line.endswith(
        f". A route that ends in minutes without a GPU: {bookkeeping.QUICK_ROUTE} "
        "(docs/no-gpu.md)")
    assert bookkeeping.QUICK_ROUTE in (REPO / "docs" / "no-gpu.md").read_text()  # (its command)
    # the log line shows MFU, and metrics.jsonl keeps it
    assert re.search(r"step 2/2 \| .* tok/s \| MFU \d+\.\d% \| ETA", out)
    records = [json.loads(r) for r in (tmp_path / "slow" / "metrics.jsonl").open()]
    assert all(0 < r["mfu"] < 1 for r in records if r["event"] == "train")
