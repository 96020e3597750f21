"""paper/peft_interop.py: our LoRA adapters in PEFT's format and back. The reference is `peft`
itself: it loads our export with our logits, and what it writes, we import with its outputs."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_grads_equal_peft, batch, max_diff, trained
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import GPT2LMHeadModel

import lora
import train
from data.task import collate, loss_positions
from model import GPT
from paper.peft_interop import export_peft, import_peft


@pytest.mark.parametrize("targets", ["q,v", "q,k,v,o,fc,proj", "v,o", "fc,proj"])
@pytest.mark.fast
def test_peft_loads_our_export_with_equal_logits(base, hf_dir, tmp_path, targets):
    trained(lora.apply(base, targets, r=3, alpha=6, dropout=0.1))
    export_peft(base, str(tmp_path / "peft"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    ref = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(str(hf_dir)),
                                    str(tmp_path / "peft")).eval()
    with torch.no_grad():
        for seed in range(2):
            assert_close(ref(batch(seed)).logits, base(batch(seed)))


def test_export_of_q_v_is_rank_2r_block_diagonal(base, tmp_path):
    trained(lora.apply(base, "q,v", r=2, alpha=4))
    export_peft(base, str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 8, ["c_attn"])
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        B = f.get_tensor("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight")
        A = f.get_tensor("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight")
    q, v = base.transformer.h[0].attn.q, base.transformer.h[0].attn.v
    assert torch.equal(A, torch.cat([q.A, v.A]).detach())
    assert torch.equal(B[32:64], torch.zeros(32, 4))  # k rows
    assert torch.equal(B[:32, :2], q.B.detach()) and torch.equal(B[64:, 2:], v.B.detach())


@pytest.mark.parametrize("options", [
    dict(target_modules=["c_attn"]),
    dict(target_modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
    dict(target_modules=["c_attn", "mlp.c_fc"], rank_pattern={"c_attn": 5},
         alpha_pattern={"mlp.c_fc": 3}),
    dict(target_modules=["c_attn", "mlp.c_proj"], use_rslora=True),
    dict(target_modules=["c_attn"], layers_to_transform=[1]),
])
@pytest.mark.fast
def test_import_of_a_peft_adapter_equals_peft_forward(base, hf_dir, tmp_path, options):
    torch.manual_seed(0)
    ref = get_peft_model(GPT2LMHeadModel.from_pretrained(str(hf_dir)),
                         LoraConfig(r=2, lora_alpha=7, fan_in_fan_out=True, **options)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)  # PEFT starts B at zero too; give it something to carry
    ref.save_pretrained(str(tmp_path))
    import_peft(base, str(tmp_path))
    with torch.no_grad():
        assert_close(base(batch()), ref(batch()).logits)
        with ref.disable_adapter():
            assert max_diff(ref(batch()).logits, base(batch())) > 0.1  # the adapter matters


@pytest.mark.fast
def test_export_then_import_round_trip(base, hf_dir, tmp_path):
    trained(lora.apply(base, "q,v,o", r=2, alpha=4))
    export_peft(base, str(tmp_path))
    back = import_peft(GPT.from_pretrained(str(hf_dir)).eval(), str(tmp_path))
    assert_close(back(batch()), base(batch()))


def test_import_refuses_what_lora_here_does_not_cover(base, tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "lora_bias": True, "target_modules": ["c_attn"]}))
    with pytest.raises(ValueError, match="uses lora_bias"):
        import_peft(base, str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "init_lora_weights": "pissa", "target_modules": ["c_attn"]}))
    with pytest.raises(ValueError, match="a pissa adapter saved as it trained, on its residual "
                                         "base; save it with PEFT's conversion"):
        import_peft(base, str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="peft_type 'IA3'"):
        import_peft(base, str(tmp_path))


def test_our_mixed_task_batch_equals_peft_mixed_adapter_batch(base, hf_dir, tmp_path):
    """multitask.py against PEFT's own mixed-adapter batches (forward(adapter_names=...)): two
    adapters of other targets and ranks on one base, each row its own adapter, equal logits."""
    from model import GPT
    from paper import multitask
    shapes = {"task0": ("q,v", 2, 4), "task1": ("v,o,fc", 3, 9)}
    paths = []
    for seed, (name, (targets, r, alpha)) in enumerate(shapes.items()):
        model = trained(lora.apply(GPT.from_pretrained(str(hf_dir)).eval(), targets, r=r,
                                   alpha=alpha), seed=seed)
        lora.save(model, str(tmp_path / f"{name}.safetensors"))
        export_peft(model, str(tmp_path / name))
        paths.append(str(tmp_path / f"{name}.safetensors"))
    ref = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(str(hf_dir)),
                                    str(tmp_path / "task0"), adapter_name="task0")
    ref.load_adapter(str(tmp_path / "task1"), adapter_name="task1")
    ref.eval()
    multitask.Adapters(base, paths).mix()
    rows = ["task1", "task0", "task0", "task1"]
    idx = batch(7, shape=(4, 11))
    multitask.route(base, torch.tensor([int(name[-1]) for name in rows]))
    with torch.no_grad():
        assert_close(base(idx), ref(idx, adapter_names=rows).logits)


@pytest.mark.parametrize("targets", ["q,v", "o,fc,proj"])  # (inside c_attn; a module each)
@pytest.mark.fast
def test_the_training_loss_and_gradients_of_a_and_b_equal_peft(base, hf_dir, tmp_path,
                                                               targets):
    # train.py's loss (label-smoothed, at the reference tokens only) on our model and on PEFT's
    # with the same adapter: the same loss, and every A's and B's gradient PEFT's
    trained(lora.apply(base, targets, r=3, alpha=6))
    export_peft(base, str(tmp_path))
    ref = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(str(hf_dir)), str(tmp_path),
                                    is_trainable=True)
    examples = [(batch(seed, (1, n))[0].numpy(), p) for seed, n, p in [(0, 12, 5), (1, 9, 4)]]
    inputs, targets_ = collate(examples)
    positions, labels = loss_positions(targets_)
    ours = train.token_loss(base.eval(), inputs, positions, labels, 0.1)  # (eval: no dropout
    logits = ref.eval()(inputs).logits.flatten(0, 1).index_select(0, positions)  # to draw)
    theirs = F.cross_entropy(logits.float(), labels, label_smoothing=0.1, reduction="sum")
    assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    assert_grads_equal_peft(base, ref, r=3)


@pytest.mark.parametrize("variant", [{"rslora": True}, {"dora": True}, {"init": "pissa"},
                                     {"dora": True, "rslora": True, "init": "pissa"}])
def test_the_descendants_export_to_peft_and_back_with_equal_logits(hf_dir, tmp_path, variant):
    # on q,v (inside the fused c_attn) and the MLP: PEFT loads what we write with our logits
    # (PiSSA: its conversion to a LoRA on the pretrained W0), and we import it back. In float64,
    # its every draw seeded: the two sides order their sums differently (PiSSA's residual, DoRA's
    # norms), which fp32 rounds to within 1e-5 of each other or just past it, as the draw falls
    # (5e-6 to 5e-5 over 30 draws); float64 rounds that to 1e-14, so 1e-12 leaves no room for a
    # wrong term and none for luck.
    torch.manual_seed(0)  # (A's init)
    g = torch.Generator().manual_seed(1)
    base = lora.apply(GPT.from_pretrained(str(hf_dir)).double().eval(), "q,v,fc", r=2, alpha=5,
                      **variant)
    with torch.no_grad():
        for layer in lora.lora_layers(base).values():
            layer.B.add_(torch.randn(layer.B.shape, generator=g, dtype=torch.double) * 0.3)
            if isinstance(layer, lora.DoRALinear):
                layer.m.mul_(1 + 0.2 * torch.rand(layer.m.shape, generator=g, dtype=torch.double))
    export_peft(base, str(tmp_path))  # (float64 tensors from a float64 model)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["use_dora"] == bool(variant.get("dora"))
    assert config["r"] == 2 * 2 * (2 if variant.get("init") == "pissa" else 1)  # (q, v: 2r)
    ref = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(str(hf_dir)).double(),
                                    str(tmp_path)).eval()
    back = import_peft(GPT.from_pretrained(str(hf_dir)).double().eval(), str(tmp_path))
    with torch.no_grad():
        for seed in range(2):
            expected = base(batch(seed))
            for got in (ref(batch(seed)).logits, back(batch(seed))):
                assert got.dtype == torch.float64
                torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
