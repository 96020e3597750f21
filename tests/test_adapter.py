"""paper/adapter.py: Adapter^H and Adapter^L, the baselines of Tables 1 and 3.

No reference package implements these two, so placement is checked independently: forward hooks
on the plain base model add the adapter's function where the papers put it, and the result must
equal our adapted model. Parameter counts are checked against the paper's Table 3.
"""

import pytest
import torch
from conftest import VOCAB, assert_close, batch

from model import GPT, GPTConfig
from paper import adapter


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapter.adapters(model).values():
            for p in a.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


# --- the paper's parameter counts (Sec. 5.1, Table 3) ----------------------------------------


@pytest.mark.parametrize("kind, r, table3", [("lin", 6, "0.37M"), ("lin", 224, "11.09M"),
                                             ("houlsby", 8, None)])
def test_counts_for_gpt2_medium(kind, r, table3):
    L, d = 24, 1024
    # Sec. 5.1: |Theta| = L_adpt (2 d r + r + d) + 2 L_LN d. Adapter^L: one adapter and one
    # LayerNorm per block; Adapter^H: two adapters per block and no LayerNorm of its own.
    formula = L * (2 * d * r + r + d) + 2 * L * d if kind == "lin" else 2 * L * (2 * d * r + r + d)
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2-medium"))
    adapter.apply(model, kind, r)
    counted = model.num_params(trainable_only=True)  # the modules themselves
    assert counted == formula == adapter.num_trainable(L, d, r, kind)
    if table3:  # the paper's Table 3 row, as it prints it
        assert f"{counted / 1e6:.2f}M" == table3
    assert f"{counted:,} trainable parameters" in adapter.describe(model)


def test_rank_for_a_parameter_budget():
    # Table 1's Adapter^H columns: 0.5M and 11M trainable parameters on gpt2-medium.
    for budget in (0.5e6, 11e6):
        r = adapter.rank_for(budget, 24, 1024, "houlsby")
        best = adapter.num_trainable(24, 1024, r, "houlsby")
        for other in (r - 1, r + 1):
            assert abs(best - budget) <= abs(adapter.num_trainable(24, 1024, other, "houlsby") - budget)


# --- behaviour -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", adapter.KINDS)
def test_output_at_init_equals_base(base, kind):
    before = base(batch())
    adapter.apply(base, kind, r=4)
    assert torch.equal(base(batch()), before)  # the up-projection starts at zero


def _hooked_reference(hf_dir, ours, kind):
    """The plain base model with the same adapters attached as forward hooks, placed as in
    Houlsby et al. (on attn.o's and the MLP's output layer) and Lin et al. (on each block's
    output, after a LayerNorm), computed from the adapters' raw tensors."""
    ref = GPT.from_pretrained(str(hf_dir)).eval()
    for name, a in adapter.adapters(ours).items():
        place = name.removesuffix(".adapter")

        def hook(module, args, out, a=a):
            h = out
            if a.ln is not None:
                h = torch.nn.functional.layer_norm(h, h.shape[-1:], a.ln.weight, a.ln.bias)
            h = h @ a.down.weight.T + a.down.bias
            h = torch.nn.functional.gelu(h) if kind == "houlsby" else torch.relu(h)
            return out + h @ a.up.weight.T + a.up.bias

        ref.get_submodule(place.replace(".module", "")).register_forward_hook(hook)
    return ref


@pytest.mark.parametrize("kind, places", [
    ("houlsby", ["transformer.h.0.attn.o", "transformer.h.0.mlp.proj"]),
    ("lin", ["transformer.h.0"]),
])
def test_adapters_sit_where_the_papers_put_them(base, hf_dir, kind, places):
    randomize(adapter.apply(base, kind, r=4))
    assert [n.removesuffix(".adapter") for n in adapter.adapters(base)][:len(places)] == places
    ref = _hooked_reference(hf_dir, base, kind)
    assert_close(base(batch()), ref(batch()))
    assert (base(batch()) - GPT.from_pretrained(str(hf_dir))(batch())).abs().max() > 0.1


@pytest.mark.parametrize("kind", adapter.KINDS)
def test_a_training_step_changes_only_the_adapters(base, kind):
    adapter.apply(base, kind, r=4)
    names = {n for n, p in base.named_parameters() if ".adapter." in n}
    assert {n for n, p in base.named_parameters() if p.requires_grad} == names
    if kind == "lin":
        assert any(".adapter.ln." in n for n in names)  # Adapter^L trains its LayerNorm
    frozen = {n: p.detach().clone() for n, p in base.named_parameters() if n not in names}
    base.train()
    optimizer = torch.optim.AdamW(base.parameters(), lr=1e-2)
    for step in range(2):
        idx = batch(step)
        base(idx[:, :-1], idx[:, 1:])[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    for name, p in base.named_parameters():
        if name in frozen:
            assert p.grad is None and torch.equal(p, frozen[name]), name


@pytest.mark.parametrize("kind", adapter.KINDS)
def test_save_load_round_trip(base, hf_dir, tmp_path, kind):
    randomize(adapter.apply(base, kind, r=4))
    adapter.save(base, str(tmp_path / "adapter.safetensors"))
    fresh = GPT.from_pretrained(str(hf_dir)).eval()
    assert adapter.load(fresh, str(tmp_path / "adapter.safetensors")) == {"kind": kind, "r": 4}
    assert torch.equal(fresh(batch()), base(batch()))


# --- bad input -------------------------------------------------------------------------------


def test_bad_settings(base):
    with pytest.raises(ValueError, match="unknown adapter kind 'pfeiffer'"):
        adapter.apply(base, "pfeiffer", 4)
    with pytest.raises(ValueError, match=r"bottleneck r must be an integer in \[1, 32\], got 0"):
        adapter.apply(base, "lin", 0)
    assert not adapter.adapters(base)
    adapter.apply(base, "lin", 4)
    with pytest.raises(ValueError, match="already applied"):
        adapter.apply(base, "lin", 4)


def test_loading_onto_another_base_or_a_lora_file(base, tmp_path):
    import lora
    adapter.save(adapter.apply(base, "houlsby", 4), str(tmp_path / "a.safetensors"))
    other = GPT(GPTConfig(block_size=64, vocab_size=VOCAB, n_layer=3, n_head=4, n_embd=32))
    with pytest.raises(ValueError, match="was trained on base model .*n_layer.: 2"):
        adapter.load(other, str(tmp_path / "a.safetensors"))
    lora.save(lora.apply(other, "q", r=2), str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match="holds a 'lora' adapter, not a 'adapter' one; load it with lora.load"):
        adapter.load(other, str(tmp_path / "lora.safetensors"))


def test_adapters_on_a_lora_model_are_refused(base):
    import lora
    lora.apply(base, "q,v", r=2)
    with pytest.raises(ValueError, match="this model has LoRA layers"):
        adapter.apply(base, "houlsby", r=2)
