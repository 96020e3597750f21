"""lora.py: the LoRA layer, apply/freeze, merge/unmerge, and adapter files.

References: Eq. 3 computed by hand, and `transformers` (loads the merged model).
"""

import copy
import re

import pytest
import torch
from conftest import VOCAB, assert_close, batch, max_diff, trained
from safetensors import safe_open
from transformers import GPT2LMHeadModel

import lora
from model import GPT, GPTConfig

# --- the layer and apply ---------------------------------------------------------------------


@pytest.mark.fast
def test_layer_computes_eq3():
    torch.manual_seed(0)
    W0 = torch.nn.Linear(6, 5)
    layer = lora.LoRALinear(copy.deepcopy(W0), r=2, alpha=3.0)
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(4, 6)
    expected = x @ W0.weight.T + W0.bias + (3.0 / 2) * x @ (layer.B @ layer.A).T
    assert_close(layer(x), expected)


@pytest.mark.fast
def test_output_at_init_equals_base(base):
    before = base(batch())
    lora.apply(base, "q,k,v,o,fc,proj", r=4, alpha=32, dropout=0.1)
    assert torch.equal(base(batch()), before)  # B = 0: exactly the pretrained function


@pytest.mark.fast
def test_a_training_step_changes_only_A_and_B(base):
    lora.apply(base, "q,v", r=4, alpha=32, dropout=0.1)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters() if not n.endswith((".A", ".B"))}
    lora_before = {n: p.detach().clone() for n, p in base.named_parameters() if n.endswith((".A", ".B"))}
    assert set(n for n, p in base.named_parameters() if p.requires_grad) == set(lora_before)
    base.train()
    optimizer = torch.optim.AdamW(base.parameters(), lr=1e-2, weight_decay=0.01)
    for step in range(2):  # step 1 moves B (A's gradient is B^T ... = 0); step 2 moves A too
        idx = batch(step)
        _, loss = base(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    for name, p in base.named_parameters():
        if name in frozen:
            assert p.grad is None, name
            assert torch.equal(p, frozen[name]), name
        else:
            assert not torch.equal(p, lora_before[name]), name


@pytest.mark.parametrize("targets, expected", [
    ("q,v", 393_216),  # the paper's setting: 24 layers x 2 matrices x 2 x 1024 x 4
    ("q,k,v,o", 2 * 24 * 4 * 1024 * 4),  # |Theta| = 2 L_LoRA d_model r (Sec. 5.1)
    ("fc", 24 * (1024 + 4096) * 4),  # non-square: (d_in + d_out) r
])
def test_trainable_counts_for_gpt2_medium(targets, expected):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2-medium"))
    lora.apply(model, targets, r=4, alpha=32)
    assert model.num_params(trainable_only=True) == expected
    line = lora.describe(model)
    assert f"{expected:,} trainable parameters" in line
    if targets == "q,v":
        assert "0.11% of 355,216,384" in line


# --- merge and unmerge -----------------------------------------------------------------------


@pytest.mark.fast
def test_merge_equals_unmerged_and_leaves_plain_linear_layers(base):
    trained(lora.apply(base, "q,v,o,fc", r=4, alpha=8))
    W0 = {n: m.base.weight.detach().clone() for n, m in lora.lora_layers(base).items()}
    idx = batch()
    unmerged = base(idx)
    assert max_diff(unmerged, GPT.from_pretrained(base.name_or_path).eval()(idx)) > 0.1
    lora.merge(base)
    assert not any(isinstance(m, lora.LoRALinear) for m in base.modules())
    assert all(type(base.get_submodule(n)) is torch.nn.Linear for n in W0)
    assert_close(base(idx), unmerged)
    lora.unmerge(base)
    for name, layer in lora.lora_layers(base).items():
        assert base.get_submodule(name) is layer
        torch.testing.assert_close(layer.base.weight, W0[name], rtol=0, atol=1e-6)
    assert_close(base(idx), unmerged)


@pytest.mark.fast
def test_merging_twice_is_refused_never_added_twice(base):
    trained(lora.apply(base, "q,v", r=2, alpha=4))
    lora.merge(base)
    merged = base(batch())
    with pytest.raises(ValueError, match="already merged.*add B A twice"):
        lora.merge(base)
    assert torch.equal(base(batch()), merged)
    lora.unmerge(base)
    with pytest.raises(ValueError, match="nothing to unmerge"):
        lora.unmerge(base)


def test_task_switching(base, hf_dir, tmp_path):
    # Sec. 4.1: switch tasks by subtracting B A and adding another B'A'.
    for seed in (1, 2):
        model = trained(lora.apply(GPT.from_pretrained(str(hf_dir)), "q,v", r=4, alpha=8), seed)
        lora.save(model, str(tmp_path / f"task{seed}.safetensors"))
    lora.load(base, str(tmp_path / "task1.safetensors"))
    lora.merge(base)
    lora.unmerge(base)
    lora.load(base, str(tmp_path / "task2.safetensors"))
    lora.merge(base)
    fresh = GPT.from_pretrained(str(hf_dir)).eval()
    lora.load(fresh, str(tmp_path / "task2.safetensors"))
    lora.merge(fresh)
    assert_close(base(batch()), fresh(batch()))


@pytest.mark.fast
def test_merged_model_saves_as_plain_gpt2_for_transformers(base, tmp_path):
    trained(lora.apply(base, "q,v,proj", r=4, alpha=8))
    with pytest.raises(ValueError, match="merge LoRA into the weights first"):
        base.save_pretrained(str(tmp_path / "unmerged"))
    expected = base(batch())
    lora.merge(base)
    base.save_pretrained(str(tmp_path / "merged"))
    ref = GPT2LMHeadModel.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        assert_close(ref(batch()).logits, expected)


# --- adapter-only checkpoints ----------------------------------------------------------------


@pytest.mark.fast
def test_save_load_round_trip(base, hf_dir, tmp_path, capsys):
    trained(lora.apply(base, "q,v", r=4, alpha=32, dropout=0.1))
    path = tmp_path / "run" / "adapter.safetensors"
    lora.save(base, str(path))
    # the one line printed: the file's real size and count, next to the full model's size
    m = re.fullmatch(r"saved (.+): ([\d.]+) kB \(([\d,]+) parameters\) instead of ([\d.]+) MB "
                     r"for the full model\n", capsys.readouterr().out)
    assert m and m[1] == str(path)
    assert float(m[2]) == round(path.stat().st_size / 1e3, 1)
    n = 2 * 2 * base.config.n_layer * base.config.n_embd * 4  # A and B, q and v, every layer
    assert int(m[3].replace(",", "")) == n
    assert float(m[4]) == round(4 * (base.num_params() - n) / 1e6, 1)  # fp32, tied head once
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert sorted(f.keys())[:2] == ["transformer.h.0.attn.q.A", "transformer.h.0.attn.q.B"]
        assert len(f.keys()) == 2 * 2 * base.config.n_layer
    assert (meta["method"], meta["targets"], meta["r"], meta["alpha"], meta["dropout"]) == (
        "lora", '["q", "v"]', "4", "32", "0.1")
    assert meta["base_model"] == str(hf_dir) and meta["format_version"] == "1"
    fresh = GPT.from_pretrained(str(hf_dir)).eval()
    assert lora.load(fresh, str(path))["targets"] == ["q", "v"]
    for (name, a), (_, b) in zip(lora._lora_params(base).items(), lora._lora_params(fresh).items()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh(batch()), base(batch()))
    assert not list(path.parent.glob("*.tmp"))


def test_adapter_for_gpt2_medium_is_about_1_6_mb(tmp_path, capsys):
    with torch.device("meta"):  # the 1.4 GB base stays unallocated; only A and B become real
        model = GPT(GPTConfig.from_preset("gpt2-medium"))
    lora.apply(model, "q,v", r=4, alpha=32)
    for layer in lora.lora_layers(model).values():
        layer.A = torch.nn.Parameter(torch.zeros(layer.A.shape))
        layer.B = torch.nn.Parameter(torch.zeros(layer.B.shape))
    lora.save(model, str(tmp_path / "adapter.safetensors"))
    size = (tmp_path / "adapter.safetensors").stat().st_size
    assert 1.57e6 < size < 1.65e6  # 393,216 fp32 numbers + the header
    assert "1.6 MB (393,216 parameters) instead of 1.42 GB for the full model" in capsys.readouterr().out


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(targets="q,x"), r"unknown LoRA target 'x': choose from q, k, v, o .* and fc, proj"),
    (dict(targets=""), r"unknown LoRA target \(none given\)"),
    (dict(r=0), r"rank r must be an integer >= 1, got 0"),
    (dict(r=2.5), r"rank r must be an integer >= 1, got 2.5"),
    (dict(r=33), r"rank r=33 is larger than q \(32 x 32\) allows: at most 32"),
    (dict(alpha=0), r"alpha must be > 0, got 0"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
])
def test_bad_settings_are_refused_before_anything_changes(base, kwargs, message):
    before = copy.deepcopy(base.state_dict())
    with pytest.raises(ValueError, match=message):
        lora.apply(base, **{"targets": "q,v", **kwargs})
    assert not lora.lora_layers(base)
    assert all(p.requires_grad for p in base.parameters())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_applying_twice_is_refused(base):
    lora.apply(base, "q,v", r=2)
    with pytest.raises(ValueError, match="already applied"):
        lora.apply(base, "q,v", r=2)


def test_loading_onto_another_base_is_refused(base, tmp_path):
    lora.save(lora.apply(base, "q,v", r=2), str(tmp_path / "a.safetensors"))
    other = GPT(GPTConfig(block_size=64, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=48))
    with pytest.raises(ValueError, match="was trained on base model .*n_embd.: 32.*this model is "
                                         ".*n_embd.: 48.*load the adapter onto its own base model"):
        lora.load(other, str(tmp_path / "a.safetensors"))
    assert not lora.lora_layers(other)


def test_loading_into_lora_layers_of_other_targets_is_refused(base, hf_dir, tmp_path):
    lora.save(lora.apply(base, "q,v", r=2), str(tmp_path / "a.safetensors"))
    other = lora.apply(GPT.from_pretrained(str(hf_dir)), "q,k", r=2)
    with pytest.raises(ValueError, match="adapts q,v with r=2.*LoRA layers are on q,k"):
        lora.load(other, str(tmp_path / "a.safetensors"))


def test_an_adapter_file_missing_a_tensor_lists_it(base, hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    lora.save(lora.apply(base, "q,v", r=2), str(tmp_path / "a.safetensors"))
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(tmp_path / "a.safetensors"))
    del tensors["transformer.h.1.attn.v.B"]
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match=r"a.safetensors does not fit this model: 1 missing: "
                                         r"transformer\.h\.1\.attn\.v\.B$"):
        lora.load(GPT.from_pretrained(str(hf_dir)), str(tmp_path / "a.safetensors"))


def test_loading_while_merged_or_a_foreign_file_is_refused(base, hf_dir, tmp_path):
    lora.save(lora.apply(base, "q,v", r=2), str(tmp_path / "a.safetensors"))
    lora.merge(base)
    with pytest.raises(ValueError, match="unmerge it before loading"):
        lora.load(base, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="is not an adapter file saved by this project"):
        lora.load(base, str(hf_dir / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no such adapter file"):
        lora.load(base, str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("kind, message", [("lin", "blocks are wrapped"),
                                           ("houlsby", "o is a WithAdapter here")])
def test_lora_on_a_model_with_adapters_is_refused(base, kind, message):
    from paper import adapter
    adapter.apply(base, kind, r=2)
    with pytest.raises(ValueError, match=message):
        lora.apply(base, "q,v,o", r=2)


def test_loading_onto_another_base_of_the_same_shape_is_refused_unless_asked(base, tmp_path):
    from conftest import random_gpt2
    lora.save(trained(lora.apply(base, "q,v", r=2)), str(tmp_path / "a.safetensors"))
    random_gpt2(seed=1).save_pretrained(tmp_path / "other")  # the same shape, other weights
    other = GPT.from_pretrained(str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"was trained on base model .* \(weights fingerprint "
                                         r"\w+\), but this model .* has fingerprint \w+"):
        lora.load(other, str(tmp_path / "a.safetensors"))
    assert not lora.lora_layers(other)  # refused before anything changed
    lora.load(other, str(tmp_path / "a.safetensors"), check_base=False)  # on purpose


def test_an_adapter_with_nan_is_refused(base, tmp_path):
    model = trained(lora.apply(base, "q,v", r=2))
    with torch.no_grad():
        model.transformer.h[0].attn.q.B[0, 0] = float("inf")
    lora.save(model, str(tmp_path / "a.safetensors"))
    fresh = GPT.from_pretrained(base.name_or_path)
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        lora.load(fresh, str(tmp_path / "a.safetensors"))
