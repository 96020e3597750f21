"""train.py on CPU: a tiny random GPT-2 (HF format, made here) fine-tuned on real E2E examples."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO, random_gpt2
from safetensors import safe_open

import checkpoint
import lora
import train
import training
from model import GPT



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GPT-2 whose 256 positions fit every E2E example (random weights at std 0.3, so
    its LM head can express peaked distributions and the loss has room to fall)."""
    path = tmp_path_factory.mktemp("tiny")
    random_gpt2(n_positions=256).save_pretrained(path)
    return str(path)


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
    """train.py's own setup and loop, keeping the model object to look at afterwards."""
    args, device, amp, model, train_set, dev_set, run_dir, _ = train.setup(train.parse_args(argv))
    os.makedirs(run_dir)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    rc = train.Trainer(args, device, amp, model, train_set, dev_set, run_dir).run()
    return rc, model, frozen


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


def test_gradient_accumulation_gives_the_same_steps(tiny, data, tmp_path):
    args = ["--max-steps", "3", "--dropout", "0", "--lora-dropout", "0"]
    run_in_process(quick(tiny, data, tmp_path / "a", *args))
    run_in_process(quick(tiny, data, tmp_path / "b", *args, "--grad-accum", "4"))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-5 for s in a)


def test_a_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, data, tmp_path, monkeypatch,
                                                                    capsys):
    calls = {"n": 0}
    real = training.token_loss

    def nan_after_epoch_1(*args, **kwargs):  # steps 1-8 fine (epoch 1 ends, saved), then NaN
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 8 + 64 // 8 else loss  # 8 steps + dev batches
    monkeypatch.setattr(training, "token_loss", nan_after_epoch_1)
    rc, _, _ = run_in_process(quick(tiny, data, tmp_path / "run", "--max-steps", "20"))
    assert rc == 1
    assert "the loss became nan at step 9; stopped, the last good checkpoint (step 8)" in \
        capsys.readouterr().err
    with safe_open(str(tmp_path / "run" / "state.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["step"] == 8


# --- the real command line -------------------------------------------------------------------


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_ctrl_c_saves_and_resume_equals_an_uninterrupted_run(tiny, data, tmp_path):
    flags = ["--max-steps", "24", "--lr", "1e-2", "--warmup", "4", "--dropout", "0.1"]
    whole = cli(*quick(tiny, data, tmp_path / "whole", *flags))
    whole.communicate()
    assert whole.returncode == 0

    run = cli(*quick(tiny, data, tmp_path / "cut", *flags))
    for line in run.stdout:  # interrupt in the middle of epoch 2
        if line.startswith("step 11/"):
            run.send_signal(signal.SIGINT)
            break
    out, err = run.communicate()
    assert run.returncode == 130, err
    assert "Ctrl-C: saving after this step" in err
    stopped = max(losses(tmp_path / "cut"))
    assert 11 <= stopped < 24 and f"stopped at step {stopped}" in out
    assert f"python train.py --resume {tmp_path / 'cut'}" in out

    resumed = cli("--resume", tmp_path / "cut")
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert f"resuming at step {stopped}" in out
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "cut")
    assert sorted(got) == sorted(expected) == list(range(1, 25))
    assert got == expected  # bit for bit: same batches, same dropout masks, same optimizer state


@pytest.mark.parametrize("flags, message", [
    (["--targets", "q,x"], "unknown LoRA target 'x': choose from q, k, v, o"),
    (["--rank", "0"], "rank r must be an integer >= 1, got 0"),
    (["--model", "/nowhere/gpt2"], "no such file or directory: /nowhere/gpt2"),
    (["--data", "/nowhere"], "/nowhere lacks trainset.csv"),
    (["--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
    (["--dtype", "bf16"], "--dtype bf16 is mixed precision for CUDA; on CPU training runs in fp32"),
    (["--method", "prefix"], "argument --method: invalid choice: 'prefix'"),
    (["--resume", "/nowhere"], "/nowhere holds no resumable run"),
])
def test_user_errors_are_one_line_and_write_nothing(tiny, data, tmp_path, flags, message):
    argv = quick(tiny, data, tmp_path / "run")
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    out, err = cli(*argv).communicate()
    assert err.count("\n") == 1 and err.startswith("train.py: ") and message in err, err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "run").exists()


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


def test_the_readme_command_runs_end_to_end(tiny, data, tmp_path, user_env):
    # The README's quick run: python train.py --rank 4 --targets q,v --model <tiny> --data ...,
    # as `make train` installs it: no transformers, peft or pycocoevalcap
    proc = cli("--rank", "4", "--targets", "q,v", "--model", tiny, "--data", data,
               "--max-steps", "50", "--device", "cpu", "--out", tmp_path / "run", env=user_env)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "LoRA r=4 alpha=32 on q,v" in out and "step 50/50" in out
    assert checkpoint.read_adapter_metadata(str(tmp_path / "run" / "adapter.safetensors"), "lora",
                                      GPT.from_pretrained(tiny))["r"] == 4
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["lr"] == 2e-4 and config["args"]["label_smoothing"] == 0.1
    # the released recipe: its text, no dropout in the backbone, 0.1 on the LoRA path
    assert (config["args"]["format"], config["args"]["dropout"], config["args"]["lora_dropout"]) \
        == ("paper", 0.0, 0.1)
    model = train.build_model(train.parse_args(["--model", tiny]), torch.device("cpu"))
    assert model.transformer.drop.p == model.transformer.h[0].attn.attn_dropout == 0.0  # (the
    assert model.transformer.h[0].mlp.dropout.p == 0.0  # checkpoint's config.json says 0.1)
    assert {layer.dropout.p for layer in lora.lora_layers(model).values()} == {0.1}


def test_the_official_format_trains_on_the_csv_text(tiny, data, tmp_path):
    proc = cli(*quick(tiny, data, tmp_path / "run", "--format", "official", "--max-steps", "2"))
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["format"] == "official" and config["data_format"].startswith("v1:")
