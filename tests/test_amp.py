"""Mixed precision, run for real: bf16 and fp16 autocast (fp16 with its GradScaler) on the CPU,
each against the fp32 run of the same steps, on the tiny GPT-2 and the toy task (data/toy). On a
machine with CUDA, every test runs there too (scripts/gpu.sh a runs this file).

What holds: the weights stay fp32 (LoRA's A and B, DoRA's m: the optimizer's master weights,
and the adapter file); a bf16 run's losses track the fp32 run's; fp16's GradScaler skips a step
whose gradients overflow, says so, lowers the scale and goes on; a mixed-precision run stopped
by SIGTERM resumes to the uninterrupted run's losses exactly (the scaler's state in the
checkpoint); merging into a bf16 W0 rounds once (docs/training.md)."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_main, signal_on_line
from safetensors import safe_open

import lora
import sample
import train
from model import GPT

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOY = str(REPO / "data" / "toy")
# bf16 keeps 8 bits of mantissa (a relative rounding of 2^-9 per value): on the tiny model a loss
# of about 11 may move by 0.02 (2e-3 relative) over ten steps (measured: up to 5.4e-4, DoRA's)
BF16_LOSS = 2e-3


def flags(tiny, out, device, *extra):
    return ["--model", tiny, "--data", TOY, "--device", device, "--out", str(out), "--limit",
            "32", "--warmup", "0", "--log-interval", "1", "--lr", "1e-2", "--save-every", "0",
            *extra]


def losses(run_dir) -> dict:
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r["event"] == "train"}


def trained(capsys, *argv):
    code, out, err = run_main(train.main, capsys, *argv)
    assert code == 0, err
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_run_tracks_the_fp32_run_and_keeps_its_weights_fp32(tiny, tmp_path, capsys,
                                                                   device):
    fp32 = tmp_path / "fp32"
    trained(capsys, *flags(tiny, fp32, device, "--max-steps", "10", "--dtype", "fp32"))
    bf16 = tmp_path / "bf16"
    out = trained(capsys, *flags(tiny, bf16, device, "--max-steps", "10", "--dtype", "bf16",
                                 "--dora"))
    assert "; bf16 autocast (weights in fp32)" in out
    config = json.loads((bf16 / "config.json").read_text())
    assert config["precision"] == "bf16 autocast (weights in fp32)" and \
        json.loads((fp32 / "config.json").read_text())["precision"] == "fp32"
    with safe_open(str(bf16 / "adapter.safetensors"), "pt") as f:  # A, B and m, all fp32
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
        assert {k.rsplit(".", 1)[1] for k in f.keys()} == {"A", "B", "m"}
    # (DoRA's: the bf16 run trains m too; the fp32 one is plain LoRA: a second fp32 run below)
    dora32 = tmp_path / "dora32"
    trained(capsys, *flags(tiny, dora32, device, "--max-steps", "10", "--dtype", "fp32",
                           "--dora"))
    a, b = losses(dora32), losses(bf16)
    assert list(a) == list(b) == list(range(1, 11))
    assert max(abs(a[s] - b[s]) / a[s] for s in a) < BF16_LOSS, (a, b)
    assert a[10] < a[1] and b[10] < b[1]


@pytest.mark.parametrize("device", DEVICES)
def test_the_weights_are_fp32_parameters_while_a_bf16_run_trains(tiny, tmp_path, capsys,
                                                                 monkeypatch, device):
    seen, build_model, lr_at = [], train.build_model, train.lr_at

    def keep(*args):
        seen.append(build_model(*args))
        return seen[0]

    def at(step, *args):  # each step: the trainable tensors, the optimizer's master weights
        seen.append({p.dtype for p in seen[0].parameters() if p.requires_grad})
        return lr_at(step, *args)
    monkeypatch.setattr(train, "build_model", keep)
    monkeypatch.setattr(train, "lr_at", at)
    trained(capsys, *flags(tiny, tmp_path / "run", device, "--max-steps", "3", "--dtype", "bf16",
                           "--dora"))
    assert seen[1:] == [{torch.float32}] * 3


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_skips_a_step_that_overflows_lowers_the_scale_and_recovers(tiny, tmp_path, capsys,
                                                                        monkeypatch, device):
    # step 3's loss x 1e8: its gradients, scaled by 65,536, overflow fp16 (max 65,504)
    now, built, token_loss, lr_at = {}, {}, train.token_loss, train.lr_at
    build_model = train.build_model

    def at(step, *args):
        now["step"] = step
        if step in (3, 4):  # the trainable tensors before and after the overflowing step
            built[step] = [p.detach().clone() for p in built["model"].parameters()
                           if p.requires_grad]
        return lr_at(step, *args)

    def loss(*args, **kwargs):
        value = token_loss(*args, **kwargs)
        return value * 1e8 if now["step"] == 3 else value

    def keep(*args):
        built["model"] = build_model(*args)
        return built["model"]
    monkeypatch.setattr(train, "lr_at", at)
    monkeypatch.setattr(train, "token_loss", loss)
    monkeypatch.setattr(train, "build_model", keep)
    out = trained(capsys, *flags(tiny, tmp_path / "run", device, "--max-steps", "8", "--dtype",
                                 "fp16"))
    assert "step 4: fp16 gradients inf or NaN, the step skipped (weights unchanged); loss scale " \
           "65,536 -> 32,768" in out
    assert all(torch.equal(a, b) for a, b in zip(built[3], built[4]))  # the step did nothing
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
        records = list(map(json.loads, f))
    assert [(r["step"], r["scale"], r["was"]) for r in records if r["event"] == "skipped"] == \
        [(4, 32768.0, 65536.0)]  # once: the steps after it train
    logged = losses(tmp_path / "run")  # (step 4's loss is the inflated one; the others train on)
    assert logged[4] > 1e8 and all(v < 20 for s, v in logged.items() if s != 4), logged


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_a_mixed_precision_run_stopped_by_sigterm_resumes_to_the_uninterrupted_losses(
        tiny, tmp_path, capsys, dtype):
    argv = ["--max-steps", "12", "--save-every", "4", "--dtype", dtype, "--lora-dropout", "0.1"]
    whole = tmp_path / "whole"
    trained(capsys, *flags(tiny, whole, "cpu", *argv))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"),
                             *map(str, flags(tiny, run, "cpu", *argv))], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=signal_on_line(tmp_path / "signal", "step 6/", signal.SIGTERM))
    _, err = proc.communicate()
    assert proc.returncode == 143, err
    trained(capsys, "--resume", run)
    assert losses(run) == losses(whole)  # step for step, to the last bit


@pytest.mark.parametrize("variant", [[], ["--rslora"], ["--dora"], ["--init", "pissa"],
                                     ["--lora-plus", "16"]])
def test_every_descendant_trains_in_bf16_close_to_fp32(tiny, tmp_path, capsys, variant):
    runs = {}
    for dtype in ("fp32", "bf16"):
        runs[dtype] = tmp_path / dtype
        trained(capsys, *flags(tiny, runs[dtype], "cpu", "--max-steps", "3", "--dtype", dtype,
                               *variant))
    a, b = losses(runs["fp32"]), losses(runs["bf16"])
    assert all(torch.isfinite(torch.tensor(v)) for v in b.values())
    assert max(abs(a[s] - b[s]) / a[s] for s in a) < BF16_LOSS, (a, b)


def test_merging_into_a_bf16_w0_rounds_once_and_unmerge_is_within_a_rounding(hf_dir):
    # W = bf16(W0 + s B A), the sum in fp32 (lora.merge); a merge in bf16 rounds s B A first,
    # then the sum. Unmerge then gives W0 back within two roundings of bf16: 2^-8 of the larger
    # of |W0| and |W| (docs/training.md measures both ways at GPT-2 small's shape)
    model = lora.apply(GPT.from_pretrained(str(hf_dir)).eval(), "q,v", r=2, alpha=4)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.B.normal_(0, 0.3)
            layer.base.to(torch.bfloat16)  # W0 in bf16, A and B fp32 (train.py's file)
    layers = lora.lora_layers(model)
    W0 = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    expected = {n: (W0[n].float() + layer.delta_weight()).to(torch.bfloat16)
                for n, layer in layers.items()}
    lora.merge(model)
    for n, layer in layers.items():
        assert layer.base.weight.dtype == torch.bfloat16
        assert torch.equal(layer.base.weight, expected[n])
    lora.unmerge(model)
    for n, layer in layers.items():
        bound = 2 ** -8 * torch.maximum(W0[n].float().abs(), expected[n].float().abs())
        assert ((layer.base.weight.float() - W0[n].float()).abs() <= bound).all()


def test_train_and_sample_in_bf16_on_the_cpu_in_a_plain_install(tiny, tmp_path, user_env):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "train.py"),
                           *flags(tiny, run, "cpu", "--max-steps", "2", "--dtype", "bf16")],
                          cwd=REPO, env=user_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / "sample.py"), "--adapter", str(run),
                           "--data", TOY, "--limit", "2", "--beam", "2", "--max-new-tokens", "4",
                           "--dtype", "bf16", "--device", "cpu", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=user_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(next((tmp_path / "out").glob("*.scores.json")).read_text())
    assert report["decoding"]["dtype"] == "bf16" and report["mrs"] == 2


def test_sample_decodes_in_bf16_as_in_fp32_on_a_trained_adapter(tiny, tmp_path, capsys):
    # the tiny model's logits under bf16 autocast against fp32, on the merged adapter
    run = tmp_path / "run"
    trained(capsys, *flags(tiny, run, "cpu", "--max-steps", "4"))
    args = sample.parse_args(["--adapter", str(run / "adapter.safetensors")])
    model, _ = sample.load_model(args, torch.device("cpu"))
    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp32 = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(idx).float()
    # bf16's 2^-9 per value, through two blocks and the head: measured 0.061 of the logits' spread
    assert ((bf16 - fp32).abs().max() / fp32.std()).item() < 0.1
