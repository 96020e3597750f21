"""paper/qlora.py: NF4, blockwise absmax and double quantization against bitsandbytes (its CPU
quantize_4bit / dequantize_4bit, the reference), a QLoRA GPT-2 against PEFT over transformers'
bitsandbytes 4-bit GPT-2, and --quantize nf4 through train.py and sample.py.

bitsandbytes is a test-only reference (requirements-dev.txt); qlora.py never imports it."""

import json
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import (REPO, assert_close, assert_grads_equal_peft, batch, max_diff, run_main,
                      signal_on_line, trained)

import lora
import sample
import train
from data.task import collate, loss_positions
from model import GPT
from paper import qlora
from paper.peft_interop import export_peft
from plumbing.checkpoint import CheckpointError

bnb = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is the NF4 reference")
TOY = str(REPO / "data" / "toy")
# a weight's shape: square, GPT-2 medium's MLP, and sizes that are no multiple of the block (64)
# or of two codes a byte
SHAPES = [(64, 64), (256, 1024), (30, 7), (3, 5), (50, 33)]


def reference(W: torch.Tensor, double: bool):
    """bitsandbytes' NF4 of W: (packed bytes, its quant state)."""
    packed, state = bnb.quantize_4bit(W, blocksize=64, quant_type="nf4",
                                      compress_statistics=double)
    return packed.reshape(-1), state


def weights(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(shape, generator=g) * 0.02
    W.view(-1)[:: 97] *= 30  # outliers, as pretrained weights have: each coarsens its own block
    return W


@pytest.mark.fast
def test_the_nf4_and_8_bit_tables_are_bitsandbytes(capsys):
    assert torch.equal(qlora.NF4, bnb.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(qlora.DYNAMIC, bnb.create_dynamic_map())
    # the QLoRA paper's Appendix E lists the 16 values to 8 decimals
    assert qlora.NF4[qlora.ZERO] == 0 and qlora.NF4[0] == -1 and qlora.NF4[-1] == 1
    assert abs(qlora.NF4[8] - 0.07958029955625534) < 1e-7
    assert abs(qlora.NF4[6] + 0.09105003625154495) < 1e-7


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.fast
def test_packed_codes_and_fp32_absmax_equal_bitsandbytes_bit_for_bit(shape):
    W = weights(shape)
    packed, state = reference(W, double=False)
    ours = qlora.quantize_nf4(W, double=False)
    assert torch.equal(ours["packed"], packed)  # the codes, and which nibble holds which
    assert torch.equal(ours["absmax"], state.absmax)
    deq = qlora.dequantize_nf4(ours, shape)
    assert torch.equal(deq, bnb.dequantize_4bit(packed.reshape(-1, 1), state))
    assert (deq - W).abs().max() <= W.abs().max() * (1 - qlora.NF4[-2]) / 2 + 1e-7


@pytest.mark.parametrize("shape", [pytest.param(shape, marks=pytest.mark.fast)
                                   for shape in SHAPES] + [(1024, 4096)])
def test_double_quantization_equals_bitsandbytes(shape):
    # The packed codes, the offset and the second-level absmaxes are bit for bit bitsandbytes'.
    # The 8-bit codes of the absmaxes too, but for a few: bitsandbytes' CPU code rounds each
    # through a 65,536-entry lookup table (csrc/cpu_ops.cpp, build_quantize_lut), not to the
    # nearest of the 256 values as the paper's Eq. 1 (and the CUDA kernel) does. Where the two
    # differ ours is the nearer, and bitsandbytes' is off by less than the table's step, 2/65535.
    W = weights(shape, seed=1)
    packed, state = reference(W, double=True)
    ours = qlora.quantize_nf4(W, double=True)
    assert torch.equal(ours["packed"], packed)
    assert torch.equal(ours["absmax_offset"], state.offset)
    assert torch.equal(ours["absmax_absmax"], state.state2.absmax)
    absmax = qlora.quantize_blocks(W, qlora.NF4, 64)[1]  # (fp32: equal, the test above)
    scale = state.state2.absmax.repeat_interleave(256)[:absmax.numel()]
    ours_err = (qlora.DYNAMIC[ours["absmax"].long()] * scale + state.offset - absmax).abs()
    theirs_err = (qlora.DYNAMIC[state.absmax.long()] * scale + state.offset - absmax).abs()
    assert (ours_err <= theirs_err).all()
    assert ((theirs_err - ours_err) <= 2 / 65535 * scale).all()
    # (a group of one block centres it to 0: its code is any, each dequantizes to 0)
    assert ((ours["absmax"] != state.absmax) & (scale > 0)).sum() <= 0.01 * absmax.numel()
    # our dequantization of bitsandbytes' own state is its dequantization, bit for bit
    theirs = {"packed": packed, "absmax": state.absmax, "absmax_absmax": state.state2.absmax,
              "absmax_offset": state.offset}
    assert torch.equal(qlora.dequantize_nf4(theirs, shape),
                       bnb.dequantize_4bit(packed.reshape(-1, 1), state))


@pytest.mark.fast
def test_a_weight_costs_4_127_bits_as_the_paper_counts():
    # Sec. 3: 4 bits a weight, plus 8 / 64 for its block's absmax code, plus 32 / (64 x 256)
    layer = qlora.NF4Linear(torch.nn.Linear(4096, 1024, bias=False))
    bits = 8 * sum(b.numel() * b.element_size() for b in layer.buffers()) / (1024 * 4096)
    assert abs(bits - (4 + 8 / 64 + 32 / (64 * 256))) < 1e-5  # (plus the one fp32 offset)
    assert abs(bits - 4.127) < 1e-3


def qlora_model(hf_dir, targets="q,v", double=True, **variant):
    model = lora.apply(GPT.from_pretrained(str(hf_dir)).eval(), targets, r=3, alpha=6, **variant)
    return qlora.quantize(trained(model), double=double)


def bnb_gpt2(hf_dir, double: bool):
    from transformers import BitsAndBytesConfig, GPT2LMHeadModel
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_use_double_quant=double,
                                bnb_4bit_compute_dtype=torch.float32)
    return GPT2LMHeadModel.from_pretrained(str(hf_dir), quantization_config=config,
                                           device_map="cpu")


@pytest.mark.parametrize("targets", ["q,v", "o,fc,proj"])
@pytest.mark.fast
def test_qlora_logits_loss_and_gradients_equal_peft_over_bitsandbytes(hf_dir, tmp_path,
                                                                      targets):
    # transformers' 4-bit GPT-2 (bitsandbytes' Linear4bit in place of every Conv1D of the blocks,
    # the LM head kept) with PEFT's LoRA, our adapter exported to it. Without double
    # quantization: bitsandbytes quantizes the fused c_attn as one matrix, and its blocks of 64
    # are ours of W_q, W_k, W_v (n_embd a multiple of 64 / n_embd); the absmaxes' mean that
    # double quantization centres them on is not (the next test)
    from peft import PeftModel
    ours = qlora_model(hf_dir, targets, double=False)
    export_peft(ours, str(tmp_path))
    ref = PeftModel.from_pretrained(bnb_gpt2(hf_dir, double=False), str(tmp_path),
                                    is_trainable=True).eval()
    examples = [(batch(seed, (1, n))[0].numpy(), p) for seed, n, p in [(0, 12, 5), (1, 9, 4)]]
    inputs, targets_ = collate(examples)
    positions, labels = loss_positions(targets_)
    loss = train.token_loss(ours, inputs, positions, labels, 0.1)
    logits = ref(inputs).logits
    assert_close(ours(inputs), logits)
    theirs = F.cross_entropy(logits.flatten(0, 1).index_select(0, positions), labels,
                             label_smoothing=0.1, reduction="sum")
    assert_close(loss, theirs)
    loss.backward()
    theirs.backward()
    assert_grads_equal_peft(ours, ref, r=3)
    with torch.no_grad():  # and 4 bits matter: the full-precision model is another function
        full = lora.apply(GPT.from_pretrained(str(hf_dir)).eval(), targets, r=3, alpha=6)
        assert max_diff(trained(full)(inputs), logits) > 1e-3


@pytest.mark.parametrize("variant", [{}, {"dora": True}])
def test_double_quantized_qlora_equals_gpt2_over_bitsandbytes_dequantized_weights(
        hf_dir, tmp_path, variant):
    # transformers' fp32 GPT-2 whose every Linear weight of the blocks is bitsandbytes'
    # dequantize_4bit(quantize_4bit(W)), double quantized, W_q, W_k, W_v each on its own (as
    # ours), and PEFT's LoRA (DoRA) on it: the reference our NF4 GPT-2 is built to equal
    from peft import PeftModel
    from transformers import GPT2LMHeadModel
    ours = qlora_model(hf_dir, "q,v,fc", **variant)
    export_peft(ours, str(tmp_path))
    ref = GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()

    def roundtrip(W):
        packed, state = bnb.quantize_4bit(W.contiguous(), blocksize=64, quant_type="nf4",
                                          compress_statistics=True)
        return bnb.dequantize_4bit(packed, state)

    with torch.no_grad():
        for block in ref.transformer.h:
            for conv in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                W = conv.weight.T  # (Conv1D keeps W transposed)
                parts = W.split(W.shape[1], dim=0) if conv is block.attn.c_attn else [W]
                conv.weight.copy_(torch.cat([roundtrip(p) for p in parts]).T)
    ref = PeftModel.from_pretrained(ref, str(tmp_path)).eval()
    with torch.no_grad():
        assert_close(ours(batch()), ref(batch()).logits)


def test_qpissa_quantizes_the_residual_and_qdora_starts_from_the_dequantized_norm(hf_dir):
    # PiSSA's SVD is of the full-precision W0; what NF4 then holds is W0 minus its top r
    # directions (QPiSSA). DoRA's m starts at ||dequant(W0)|| (PEFT's QDoRA): the model starts
    # as the 4-bit base does
    W0 = GPT.from_pretrained(str(hf_dir)).transformer.h[0].attn.q.weight.detach()
    model = lora.apply(GPT.from_pretrained(str(hf_dir)).eval(), "q", r=2, alpha=4, init="pissa")
    qlora.quantize(model)
    layer = model.transformer.h[0].attn.q
    residual = W0 - layer.delta_weight().detach()
    assert torch.equal(layer.base.weight, qlora.dequantize_nf4(qlora.quantize_nf4(residual),
                                                               W0.shape))
    plain = qlora.quantize(GPT.from_pretrained(str(hf_dir)).eval())
    dora = qlora.quantize(lora.apply(GPT.from_pretrained(str(hf_dir)).eval(), "q,v", r=2,
                                     alpha=4, dora=True))
    with torch.no_grad():
        assert_close(dora(batch()), plain(batch()))


def test_merge_ways_against_the_unmerged_qlora_model(hf_dir):
    # what each of sample.py's --qlora-merge ways computes, against QLoRA unmerged over NF4 (what
    # trained): merged into the dequantized W0, the same function up to float rounding; into the
    # full-precision W0, another (its gap is the quantization error); and quantizing the merged
    # model again to NF4 loses more than B A was worth (docs/qlora.md measures GPT-2 small)
    unmerged = qlora_model(hf_dir, "q,v")
    idx = batch()
    with torch.no_grad():
        expected = unmerged(idx)
        dequantized = lora.merge(qlora.dequantize(unmerged))(idx)
        assert_close(dequantized, expected)
        full = lora.merge(trained(lora.apply(GPT.from_pretrained(str(hf_dir)).eval(), "q,v", r=3,
                                             alpha=6)))
        again = qlora.quantize(full)(idx)
        full_gap = max_diff(full(idx), expected)
    assert full_gap > 1e-3 and max_diff(again, expected) > 1e-3


@pytest.mark.fast
def test_merge_refuses_nf4_and_lora_load_refuses_an_nf4_adapter_on_a_full_base(hf_dir, tmp_path):
    model = qlora_model(hf_dir)
    with pytest.raises(ValueError, match="cannot fold into QLoRA's 4-bit codes; qlora.dequantize"):
        lora.merge(model)
    lora.save(model, str(tmp_path / "a.safetensors"))
    with pytest.raises(CheckpointError, match="trained over W0 in NF4 .*paper/qlora.py's load"):
        lora.load(GPT.from_pretrained(str(hf_dir)), str(tmp_path / "a.safetensors"))
    for way in qlora.WAYS:  # each way loads and checks the base the adapter trained over
        loaded = GPT.from_pretrained(str(hf_dir)).eval()
        assert qlora.load(loaded, str(tmp_path / "a.safetensors"), way)["quantize"] == "nf4"
        if way != "nf4":
            lora.merge(loaded)
    with pytest.raises(ValueError, match="trained over NF4 .QPiSSA. adapts the NF4 of W0's "
                                         "residual"):
        export_peft(qlora_model(hf_dir, init="pissa"), str(tmp_path / "peft"))
    other = GPT.from_pretrained(str(hf_dir)).eval()
    with torch.no_grad():
        other.transformer.h[0].attn.q.weight.mul_(1.5)
    with pytest.raises(CheckpointError, match="another checkpoint of the same shape"):
        qlora.load(other, str(tmp_path / "a.safetensors"))


def flags(tiny, out, *extra, quantize=True):
    return ["--model", tiny, "--data", TOY, "--device", "cpu", "--out", str(out), "--limit", "32",
            "--warmup", "0", "--log-interval", "1", "--lr", "1e-2", "--save-every", "0",
            *(["--quantize", "nf4"] if quantize else []), *extra]


def losses(run_dir) -> dict:
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r["event"] == "train"}


def test_a_qlora_run_stopped_by_sigterm_resumes_to_the_uninterrupted_losses(tiny, tmp_path,
                                                                            capsys, user_env):
    # in a plain install (no bitsandbytes, transformers or peft: qlora.py is plain torch)
    argv = ["--max-steps", "8", "--save-every", "4", "--lora-dropout", "0.1"]
    whole = tmp_path / "whole"
    code, out, err = run_main(train.main, capsys, *flags(tiny, whole, *argv))
    assert code == 0, err
    assert "W0 in NF4" in out
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"),
                             *map(str, flags(tiny, run, *argv))], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=signal_on_line(tmp_path / "signal", "step 5/", signal.SIGTERM,
                                               env=user_env))
    _, err = proc.communicate()
    assert proc.returncode == 143, err
    code, _, err = run_main(train.main, capsys, "--resume", run)
    assert code == 0, err
    assert losses(run) == losses(whole)  # step for step, to the last bit
    assert losses(whole)[8] < losses(whole)[1]
    for way, suffix in [("dequantized", ""), ("nf4", "-nf4"), ("base", "-base")]:
        code, out, err = run_main(sample.main, capsys, "--adapter", whole, "--limit", "2",
                                  "--beam", "2", "--max-new-tokens", "4", "--no-meteor",
                                  "--qlora-merge", way)
        assert code == 0, err
        assert qlora.WAYS[way] in out and (whole / f"predictions-first2{suffix}.tsv").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--method", "full"], "--quantize nf4 is QLoRA, LoRA over a frozen W0 kept in 4 bits; "
                           "--method full trains every weight"),
    (["--method", "adapter_h"], "--method adapter_h is not built over a quantized W0 here"),
    (["--compile"], "--compile is untested with --quantize nf4"),
    (["--quantize", "nf8"], "invalid choice: 'nf8'"),
])
@pytest.mark.fast
def test_train_refuses_what_qlora_does_not_compose_with(tiny, tmp_path, capsys, argv, message):
    code, _, err = run_main(train.main, capsys, *flags(tiny, tmp_path / "run", *argv))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_sample_refuses_qlora_merge_where_it_does_nothing(tiny, tmp_path, capsys):
    plain, quantized = tmp_path / "plain", tmp_path / "quantized"
    for run, quantize in [(plain, False), (quantized, True)]:
        code, _, err = run_main(train.main, capsys, *flags(tiny, run, "--max-steps", "1",
                                                           quantize=quantize))
        assert code == 0, err
    for argv, message in [
            ([plain, "--qlora-merge", "nf4"], "--qlora-merge is for an adapter trained with "
                                              "--quantize nf4 (QLoRA)"),
            ([plain, "--adapter", quantized], "trained over W0 in NF4 (QLoRA): it is decoded "
                                              "alone"),
            ([quantized, "--mix", "--qlora-merge", "nf4"], "decoded alone: give that one")]:
        code, _, err = run_main(sample.main, capsys, "--adapter", *argv, "--limit", "1",
                                "--no-meteor")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
