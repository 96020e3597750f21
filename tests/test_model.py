"""model.py against the reference: transformers' GPT2LMHeadModel.

Every claim that model.py "is GPT-2" is checked by loading a checkpoint transformers wrote and
comparing logits and greedy generations, and by loading what we write back into transformers.
"""

import os
import shutil

import pytest
import torch
from conftest import VOCAB, assert_close, max_diff, random_gpt2
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, PRESETS, GPTConfig, KVCache


def random_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, shape, generator=g) for shape in [(1, 1), (2, 17), (4, 64)]]


# --- reference parity ------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["hf_dir", "hf_bin_dir", "official_layout_dir"])
@pytest.mark.fast
def test_logits_equal_transformers(checkpoint, hf_model, request):
    ours = GPT.from_pretrained(str(request.getfixturevalue(checkpoint))).eval()
    with torch.no_grad():
        for idx in random_batches():
            assert max_diff(ours(idx), hf_model(idx).logits) < 1e-5


def test_loads_a_single_weights_file_with_config_beside_it(hf_dir, hf_model):
    ours = GPT.from_pretrained(str(hf_dir / "model.safetensors")).eval()
    idx = random_batches()[1]
    with torch.no_grad():
        assert max_diff(ours(idx), hf_model(idx).logits) < 1e-5


def test_bare_weights_file_infers_the_shape_of_an_official_size(tmp_path):
    # n_embd=768 is GPT-2 small's width, so its 12 heads can be inferred without a config.json.
    ref = random_gpt2(n_layer=1, n_embd=768, n_head=12, n_positions=32, vocab_size=100)
    ref.save_pretrained(tmp_path / "src")
    shutil.copy(tmp_path / "src" / "model.safetensors", tmp_path / "bare.safetensors")
    ours = GPT.from_pretrained(str(tmp_path / "bare.safetensors")).eval()
    assert (ours.config.n_layer, ours.config.n_head, ours.config.n_embd) == (1, 12, 768)
    assert (ours.config.vocab_size, ours.config.block_size) == (100, 32)
    idx = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        assert max_diff(ours(idx), ref(idx).logits) < 1e-5


@pytest.mark.fast
def test_greedy_generation_equals_transformers(hf_dir, hf_model):
    ours = GPT.from_pretrained(str(hf_dir)).eval()
    hello = [15496, 11, 616, 1438, 318]  # tiktoken "gpt2": "Hello, my name is"
    prompts = [torch.tensor([hello]),
               torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))]
    for idx in prompts:
        expected = hf_model.generate(idx, max_new_tokens=20, do_sample=False, eos_token_id=None,
                                     pad_token_id=50256)
        got = ours.generate(idx, max_new_tokens=20)
        assert got.shape == (idx.size(0), idx.size(1) + 20)
        assert torch.equal(got, expected)
        assert len(set(got[0, idx.size(1):].tolist())) > 3  # a real continuation, not one token


def test_save_pretrained_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(block_size=64, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32)).eval()
    with torch.no_grad():  # move every tensor away from its init so nothing matches by accident
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    ref = GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        for idx in random_batches():
            assert max_diff(ref(idx).logits, ours(idx)) < 1e-5
    # And back into our layout, bit for bit.
    reloaded = GPT.from_pretrained(str(tmp_path)).state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(reloaded[name], tensor), name


def test_save_pretrained_leaves_no_temporary_files(tmp_path):
    GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8)).save_pretrained(
        str(tmp_path / "out"))
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]


# --- architecture ----------------------------------------------------------------------------


def test_attention_has_four_linear_projections_and_tied_head():
    model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8))
    attn = model.transformer.h[0].attn
    for name in "qkvo":
        layer = getattr(attn, name)
        assert type(layer) is torch.nn.Linear and layer.bias is not None
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_counts_equal_transformers(preset):
    c = GPTConfig.from_preset(preset)
    with torch.device("meta"):
        ours = GPT(c)
        ref = GPT2LMHeadModel(GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd))
    assert ours.num_params() == ref.num_parameters()
    if preset == "gpt2-medium":
        assert ours.num_params() == 354_823_168


def test_loss_is_cross_entropy_of_the_next_token(hf_dir, hf_model):
    ours = GPT.from_pretrained(str(hf_dir)).eval()
    idx = random_batches()[1]
    targets = idx[:, 1:].clone()
    targets[0, :5] = -100  # positions left out of the loss
    with torch.no_grad():
        logits, loss = ours(idx[:, :-1], targets)
        labels = idx.clone()
        labels[0, 1:6] = -100
        expected = hf_model(idx, labels=labels).loss  # transformers shifts the labels itself
    assert logits.shape == (2, 16, VOCAB)
    assert abs(loss.item() - expected.item()) < 1e-5


def test_longer_than_block_size_is_refused(hf_dir):
    ours = GPT.from_pretrained(str(hf_dir))
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):
        ours(torch.zeros(1, 65, dtype=torch.long))


# --- KV cache --------------------------------------------------------------------------------


@pytest.mark.fast
def test_kv_cache_one_token_at_a_time_equals_full_forward(hf_dir):
    ours = GPT.from_pretrained(str(hf_dir)).eval()
    idx = random_batches()[1]
    with torch.no_grad():
        full = ours(idx)
        cache = KVCache(ours.config.n_layer)
        steps = torch.cat([ours(idx[:, t:t + 1], cache=cache) for t in range(idx.size(1))], dim=1)
    assert len(cache) == idx.size(1)
    assert_close(steps, full)


def test_kv_cache_in_chunks_equals_full_forward(hf_dir):
    # Several new tokens after a cached prefix need the shifted causal mask.
    ours = GPT.from_pretrained(str(hf_dir)).eval()
    idx = random_batches()[1]
    with torch.no_grad():
        full = ours(idx)
        cache = KVCache(ours.config.n_layer)
        chunks = [ours(idx[:, a:b], cache=cache) for a, b in [(0, 5), (5, 8), (8, 9), (9, 17)]]
    assert_close(torch.cat(chunks, dim=1), full)


def test_kv_cache_reorder_follows_the_chosen_rows(hf_dir):
    ours = GPT.from_pretrained(str(hf_dir)).eval()
    idx = random_batches()[1]  # two rows
    with torch.no_grad():
        cache = KVCache(ours.config.n_layer)
        ours(idx[:, :-1], cache=cache)
        cache.reorder(torch.tensor([1, 1, 0]))  # e.g. beams: two children of row 1, one of row 0
        step = ours(idx[[1, 1, 0], -1:], cache=cache)
        full = ours(idx[[1, 1, 0]])
    assert_close(step[:, -1], full[:, -1])


# --- bad input: each error names the problem -------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory: .*nowhere"):
        GPT.from_pretrained(str(tmp_path / "nowhere"))


def test_directory_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        GPT.from_pretrained(str(tmp_path))


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown model 'gpt3'.*gpt2, gpt2-medium"):
        GPT.from_pretrained("gpt3")


@pytest.mark.parametrize("damage", ["truncate", "corrupt_header"])
def test_damaged_safetensors(hf_dir, tmp_path, damage):
    shutil.copytree(hf_dir, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ValueError, match="not a readable safetensors file.*truncated or corrupted"):
        GPT.from_pretrained(str(tmp_path / "ckpt"))


def test_damaged_bin(hf_bin_dir, tmp_path):
    shutil.copytree(hf_bin_dir, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        GPT.from_pretrained(str(tmp_path / "ckpt"))


class _RunsCode:
    def __reduce__(self):  # unpickling this would create a file
        return (open, (os.environ["PWNED_PATH"], "w"))


def test_bin_is_loaded_with_weights_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PWNED_PATH", str(tmp_path / "pwned"))
    torch.save({"wte.weight": torch.zeros(2, 2), "payload": _RunsCode()}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="evil.bin holds pickled code, not only tensors, so "
                                         "it is not loaded") as refused:
        GPT.from_pretrained(str(tmp_path / "evil.bin"))
    assert not (tmp_path / "pwned").exists()
    # one line, which never suggests turning the safety check off (torch's own text does)
    assert "\n" not in str(refused.value) and "weights_only" not in str(refused.value)


def test_checkpoint_of_another_shape_lists_the_bad_keys(hf_dir, tmp_path):
    # The weights are n_embd=32; a config.json claiming n_embd=48 makes every tensor mismatch.
    shutil.copytree(hf_dir, tmp_path / "ckpt")
    config = (tmp_path / "ckpt" / "config.json").read_text()
    (tmp_path / "ckpt" / "config.json").write_text(config.replace('"n_embd": 32', '"n_embd": 48'))
    with pytest.raises(ValueError, match=r"wrongly shaped: h\.0\.attn\.c_attn\.bias \(96,\) "
                                         r"\(expected \(144,\)\)"):
        GPT.from_pretrained(str(tmp_path / "ckpt"))


def test_checkpoint_with_missing_and_foreign_tensors_lists_them(hf_dir, tmp_path):
    shutil.copytree(hf_dir, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(path)
    del state["transformer.h.1.mlp.c_fc.weight"]
    state["transformer.h.0.crossattention.q_attn.weight"] = torch.zeros(32, 32)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        GPT.from_pretrained(str(tmp_path / "ckpt"))
    assert "1 missing: h.1.mlp.c_fc.weight" in str(e.value)
    assert "1 unexpected: h.0.crossattention.q_attn.weight" in str(e.value)


def test_checkpoint_with_more_layers_than_its_config(hf_dir, tmp_path):
    shutil.copytree(hf_dir, tmp_path / "ckpt")
    config = (tmp_path / "ckpt" / "config.json").read_text()
    (tmp_path / "ckpt" / "config.json").write_text(config.replace('"n_layer": 2', '"n_layer": 1'))
    with pytest.raises(ValueError, match="unexpected: h.1."):
        GPT.from_pretrained(str(tmp_path / "ckpt"))


def test_config_of_another_architecture(hf_dir, tmp_path):
    shutil.copytree(hf_dir, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    path.write_text(path.read_text().replace('"model_type": "gpt2"', '"model_type": "gpt_neo"'))
    with pytest.raises(ValueError, match="'gpt_neo' model, not GPT-2"):
        GPT.from_pretrained(str(tmp_path / "ckpt"))


def test_config_with_a_variant_we_do_not_implement(hf_dir, tmp_path):
    shutil.copytree(hf_dir, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    path.write_text(path.read_text().replace('"activation_function": "gelu_new"',
                                             '"activation_function": "relu"'))
    with pytest.raises(ValueError, match="does not support activation_function='relu'"):
        GPT.from_pretrained(str(tmp_path / "ckpt"))


def test_untied_lm_head_is_refused(hf_bin_dir, tmp_path):
    state = torch.load(hf_bin_dir / "pytorch_model.bin", weights_only=True)
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    shutil.copy(hf_bin_dir / "config.json", tmp_path / "config.json")
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="lm_head.weight .differs from wte.weight"):
        GPT.from_pretrained(str(tmp_path))
