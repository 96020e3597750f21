"""scripts/bench.py runs, and what it prints is what it measured (its figures live in BENCHMARKS.md;
nothing here is timed, so nothing here depends on this machine's speed)."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO

import lora
import train
from data.e2e import prepare as e2e
from model import GPT, GPTConfig
from paper import mfu
from scripts import bench


def test_training_section_reports_what_it_measured(e2e_data, gpt2_vocab, tmp_path, capsys):
    argv = ["train", "--small", "--device", "cpu", "--steps", "2", "--warmup", "1", "--rounds",
            "2", "--data", e2e_data, "--json", str(tmp_path / "bench.json")]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "bench.json").read_text())["train"]
    rows = result["rows"]
    assert list(rows) == ["ours, LoRA r=4 q,v", "transformers + peft, LoRA r=4 c_attn",
                          "ours, LoRA, LM head at every position", "ours, DoRA r=4 q,v",
                          "ours, QLoRA r=4 q,v (W0 in NF4)", "ours, full fine-tuning"]
    assert result["failed"] == {}
    # every variant steps through the same timed batches, train.py's first ones: tokens per
    # step is theirs, exactly
    examples = e2e.load_examples("train", e2e_data)
    batches = train.epoch_batches(examples, 0, 8, seed=110)[1:3]
    tokens_per_step = sum(len(examples[i][0]) for batch in batches for i in batch) / 2
    reference = rows["transformers + peft, LoRA r=4 c_attn"]["tokens_per_s"]
    setup_config = GPTConfig(**{**GPTConfig().__dict__, **bench.SMALL, "dropout": 0.0})
    for name, r in rows.items():
        low, high = r["tokens_per_s_range"]
        assert 0 < low <= r["tokens_per_s"] <= high and math.isfinite(high)
        assert math.isclose(r["tokens_per_s"] / r["steps_per_s"], tokens_per_step)
        printed = re.search(rf"\| {re.escape(name)} \| ([\d,]+) \| ([\d,]+)-([\d,]+) \| "
                            rf"([\d.]+) \| ([\d.]+)% \| ([\d.]+)x \|", out)
        assert printed, name
        assert int(printed[1].replace(",", "")) == round(r["tokens_per_s"])
        assert float(printed[6]) == round(r["tokens_per_s"] / reference, 2)
        # MFU: the FLOPs of those batches (paper/mfu.py) at that step rate, over the CPU's peak
        with torch.device("meta"):
            model = GPT(setup_config)
            model = model if "full" in name else lora.apply(model, "q,v", r=4, alpha=32,
                                                            dora="DoRA" in name)
        flops = sum(mfu.batch_flops(model, [examples[i] for i in batch]) for batch in batches)
        assert math.isclose(r["mfu"], flops / 2 * r["steps_per_s"] / mfu.measured_peak("cpu"),
                            rel_tol=1e-9)
        assert float(printed[5]) == round(100 * r["mfu"], 1)
    minutes = re.search(r"The paper's recipe \(26,290 steps\) at the step rate of 'ours, LoRA "
                        r"r=4 q,v': ([\d,.]+) minutes", out)
    assert float(minutes[1].replace(",", "")) == round(
        26_290 / rows["ours, LoRA r=4 q,v"]["steps_per_s"] / 60, 1)


def test_both_sides_compute_the_same_loss(e2e_data, gpt2_vocab):
    # the referee is fair only if every variant does the same work: on the same batch, with the
    # same weights (B = 0, so LoRA adds nothing yet) and no dropout, the same loss
    with bench.Setup(bench.parse_args(["train", "--small", "--device", "cpu", "--steps", "1",
                                       "--warmup", "1", "--data", e2e_data])) as setup:
        batch = setup.batches[0]
        ours = bench.ours_trainer(setup, "lora", lora_dropout=0.0)(batch)
        everywhere = bench.ours_trainer(setup, "lora", every_position=True,
                                        lora_dropout=0.0)(batch)
        theirs = bench.hf_peft_trainer(setup, lora_dropout=0.0)(batch)
        full = bench.ours_trainer(setup, "full")(batch)
    assert not os.path.exists(setup.folder)  # the random weights are gone
    assert 5 < ours < 20  # a random model's loss: about ln(50,257) = 10.8
    for other in (everywhere, theirs, full):
        assert torch.isclose(ours, other, rtol=1e-5), (ours, other)


def test_an_unwritable_json_is_refused_before_any_measurement(capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["train", "--small", "--device", "cpu", "--json", "/proc/lora-gpt2/b.json"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith("bench.py: cannot write to /proc/lora-gpt2"), err


@pytest.mark.parametrize("flags, message", [
    (["--grid", "1x0"], "--grid '1x0': give cells like 1x128,16x256"),
    (["--decode-batch", "0"], "--rounds and --decode-batch must be at least 1"),
    (["--mrs", "-3"], "--mrs must not be negative (0: the default)"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--steps", "-1"],
     "sees no CUDA GPU; use --device cpu" if not torch.cuda.is_available()
     else "--steps must not be negative"),
])
def test_bad_flags_are_one_line_before_anything_runs(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["all", "--small", *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("bench.py: ") and message in err, err


def test_a_plain_install_runs_what_needs_no_reference_and_says_what_does(e2e_data, gpt2_vocab,
                                                                          user_env):
    # make train's environment: no transformers, no peft
    env = {**user_env, "E2E_DATA_DIR": e2e_data}
    run = lambda *argv: subprocess.run([sys.executable, "-m", "scripts.bench", *argv, "--small",
                                        "--device", "cpu"], cwd=REPO, env=env,
                                       capture_output=True, text=True)
    result = run("latency", "--grid", "1x8", "--trials", "1")
    assert result.returncode == 0, result.stderr
    assert "| 1 x 8 |" in result.stdout and "transformers" not in result.stdout
    result = run("train")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("bench.py: train compares with transformers + peft, and "
                             "transformers and peft are not installed (pip install -r "
                             "requirements-dev.txt brings them)\n")


def test_all_sections_in_a_plain_install_skip_the_comparisons_with_one_line_each(
        e2e_data, gpt2_vocab, tmp_path, capsys, monkeypatch):
    def compares(setup):
        raise AssertionError("a comparison ran without its reference packages")
    monkeypatch.setattr(bench, "missing_references", lambda: ["peft"])
    monkeypatch.setattr(bench, "SECTIONS", {"train": compares, "cache": lambda setup: {"ok": 1}})
    code = bench.main(["all", "--small", "--device", "cpu", "--data", e2e_data, "--json",
                       str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert ("train: skipped: train compares with transformers + peft, and peft is not installed "
            "(pip install -r requirements-dev.txt brings them)") in out
    assert json.loads((tmp_path / "b.json").read_text()) == {
        "train": {"skipped": "needs peft"}, "cache": {"ok": 1}}


def test_tasks_section_reports_what_it_measured(e2e_data, gpt2_vocab, tmp_path, capsys,
                                                monkeypatch):
    monkeypatch.setattr(bench, "TASK_COUNTS", (2, 4))  # (a smaller grid than the real one)
    monkeypatch.setattr(bench, "TASK_BATCHES", (1, 4))
    monkeypatch.setattr(bench, "SWITCHES", 40)
    monkeypatch.setattr(bench, "TASK_NEW_TOKENS", 4)
    argv = ["tasks", "--small", "--device", "cpu", "--steps", "1", "--warmup", "1", "--data",
            e2e_data, "--json", str(tmp_path / "bench.json")]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "bench.json").read_text())["tasks"]
    # one adapter is A and B of r=4 on q,v in every layer: 2 L (d + k) r floats (Sec. 5.1)
    c = bench.SMALL
    assert r["adapter_bytes"] == 4 * 2 * c["n_layer"] * (2 * c["n_embd"]) * 4
    assert f"| {r['switch_ms']:.1f} ms | {r['adapter_bytes'] / 1e6:.2f} MB per adapter |" in out
    assert f"{4 * r['model_bytes'] / 1e9:.2f} GB vs " \
           f"{(r['model_bytes'] + 4 * r['adapter_bytes']) / 1e9:.2f} GB" in out
    assert 0 < r["drift_after_switches"] < 1e-4  # rounding, not a lost update
    rows = r["throughput"]
    assert [(row["batch"], row["variant"]) for row in rows] == [
        (b, v) for b in (1, 4) for v in ("one task, merged", "one task, unmerged",
                                         "2 tasks, mixed", "4 tasks, mixed")]
    for b in (1, 4):
        cells = {row["variant"]: row for row in rows if row["batch"] == b}
        merged = cells["one task, merged"]["tokens_per_s"]
        for v, row in cells.items():
            assert math.isclose(row["vs_merged"], row["tokens_per_s"] / merged)
        assert re.search(rf"\| {b} \| " + " \\| ".join(
            f"{cells[v]['tokens_per_s']:,.0f} \\({cells[v]['vs_merged']:.2f}x\\)" for v in cells),
            out)
