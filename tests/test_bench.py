"""bench.py runs (its figures live in BENCHMARKS.md; nothing here is timed)."""

import bench


def test_training_section_runs_on_both_implementations(e2e_data, gpt2_vocab, capsys):
    assert bench.main(["train", "--small", "--device", "cpu", "--steps", "1", "--warmup", "1",
                       "--data", e2e_data]) == 0
    out = capsys.readouterr().out
    for row in ("| ours, LoRA r=4 q,v |", "| transformers + peft, LoRA r=4 c_attn |",
                "| ours, full fine-tuning |", "The paper's recipe (26,290 steps)"):
        assert row in out
