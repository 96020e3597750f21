"""bench.py runs, and what it prints is what it measured (its figures live in BENCHMARKS.md;
nothing here is timed, so nothing here depends on this machine's speed)."""

import json
import math
import re

import torch

import bench
from data.e2e import prepare as e2e


def test_training_section_reports_what_it_measured(e2e_data, gpt2_vocab, tmp_path, capsys):
    argv = ["train", "--small", "--device", "cpu", "--steps", "2", "--warmup", "1",
            "--data", e2e_data, "--json", str(tmp_path / "bench.json")]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "bench.json").read_text())["train"]["rows"]
    assert list(rows) == ["ours, LoRA r=4 q,v", "transformers + peft, LoRA r=4 c_attn",
                          "ours, full fine-tuning"]
    # both sides step through the same timed batches: tokens per step is theirs, exactly
    examples = e2e.load_examples("train", e2e_data)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    timed = [order[b * 8:(b + 1) * 8] for b in range(1, 3)]
    tokens_per_step = sum(len(examples[i][0]) for batch in timed for i in batch) / 2
    reference = rows["transformers + peft, LoRA r=4 c_attn"]["tokens_per_s"]
    for name, r in rows.items():
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
        assert math.isclose(r["tokens_per_s"] / r["steps_per_s"], tokens_per_step)
        printed = re.search(rf"\| {re.escape(name)} \| ([\d,]+) \| ([\d.]+) \| ([\d.]+)x \|", out)
        assert printed, name
        assert int(printed[1].replace(",", "")) == round(r["tokens_per_s"])
        assert float(printed[3]) == round(r["tokens_per_s"] / reference, 2)
    minutes = re.search(r"The paper's recipe \(26,290 steps\) at ours' LoRA step rate: ([\d,.]+) "
                        r"minutes", out)
    assert float(minutes[1].replace(",", "")) == round(
        26_290 / rows["ours, LoRA r=4 q,v"]["steps_per_s"] / 60, 1)
