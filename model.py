"""GPT-2 in one file, with the attention projections W_q, W_k, W_v, W_o as separate layers.

Read it top to bottom: the config, then the modules in the order the forward pass uses them
(attention, MLP, block, the whole model), then loading and saving the official checkpoints.

OpenAI's GPT-2 (and Hugging Face's port of it) fuses W_q, W_k, W_v into one `c_attn` layer stored
as a "Conv1D" whose weight is the transpose of an nn.Linear weight. LoRA (Hu et al. 2021, Sec. 4.2)
adapts W_q and W_v separately, so here they are four plain nn.Linear layers `q`, `k`, `v`, `o`;
`from_pretrained` splits and transposes the official weights and `save_pretrained` fuses them back.
"""

import contextlib
import http.client
import json
import math
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence (number of learned positions, HF: n_positions)
    vocab_size: int = 50257  # GPT-2's BPE vocabulary (tiktoken "gpt2")
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768  # d_model in the paper
    dropout: float = 0.1  # GPT-2 uses 0.1 on embeddings, attention and residual branches
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# The four official GPT-2 sizes: 124M, 355M, 774M and 1.5B parameters.
PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


class KVCache:
    """Keys and values of the positions seen so far, one pair per block, for incremental decoding.

    Without it, generating token t recomputes the keys and values of tokens 0..t-1 in every layer;
    with it each step feeds only the new token. `reorder` follows the surviving beams in beam search.
    """

    def __init__(self, n_layer: int):
        self.keys = [None] * n_layer
        self.values = [None] * n_layer

    def __len__(self) -> int:
        return self.length(0)

    def length(self, layer: int) -> int:
        """Number of positions cached in this layer."""
        return 0 if self.keys[layer] is None else self.keys[layer].size(2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append this step's (B, n_head, T, head_dim) keys and values; return all of them so far."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def reorder(self, index: torch.Tensor):
        """Keep batch rows `index` (in that order), e.g. the parents of the beams that survive."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with W_q, W_k, W_v, W_o as four separate Linear layers."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = config.n_head
        self.q = nn.Linear(config.n_embd, config.n_embd)
        self.k = nn.Linear(config.n_embd, config.n_embd)
        self.v = nn.Linear(config.n_embd, config.n_embd)
        self.o = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        # (B, T, C) -> (B, n_head, T, head_dim): each head attends in its own subspace
        q, k, v = (proj(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        past = 0
        if cache is not None:
            past = cache.length(layer)
            k, v = cache.update(layer, k, v)
        # Causal mask: the query at position past+i sees keys 0..past+i. With no past that is SDPA's
        # is_causal; one new token sees everything; several new tokens need the shifted triangle.
        mask, is_causal = None, False
        if past == 0:
            is_causal = T > 1
        elif T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads
        return self.resid_dropout(self.o(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: d_model -> 4 d_model -> d_model (d_ffn = 4 d_model)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU ("gelu_new"), not the exact erf form.
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token + position embeddings, n_layer blocks, a final LayerNorm, the tied LM head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.name_or_path = None  # set by from_pretrained
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection is the token embedding matrix itself.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def features(self, idx, cache: KVCache | None = None):
        """The final hidden states (B, T, n_embd): everything but the LM head."""
        B, T = idx.shape
        past = len(cache) if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than the model's "
                             f"{self.config.block_size} positions")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, cache: KVCache | None = None):
        """Logits (B, T, vocab_size) for every position of idx (B, T).

        targets: (B, T) next-token ids (targets[:, t] is the token after idx[:, t]); -100 marks
        positions left out of the loss. With targets, returns (logits, mean cross-entropy loss).
        cache: a KVCache; idx then holds only the new tokens, placed after the cached ones.
        """
        logits = self.lm_head(self.features(idx, cache))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, stop_token: int | None = None, generator=None):
        """Continue idx (B, T) by max_new_tokens tokens, feeding one new token per step via the cache.

        temperature 0 is greedy decoding; otherwise sample from softmax(logits / temperature),
        optionally restricted to the top_k tokens and/or the smallest set whose mass reaches top_p.
        Beam search (the paper's decoding) lives in sample.py.
        """
        cache = KVCache(self.config.n_layer)
        logits = self(idx, cache=cache)[:, -1, :]
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if top_p is not None:  # nucleus: keep tokens while the mass before them < top_p
                    probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
                    drop_sorted = probs.cumsum(-1) - probs >= top_p
                    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
                    logits = logits.masked_fill(drop, float("-inf"))
                next_token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            if stop_token is not None:  # rows that already stopped keep emitting the stop token
                next_token = next_token.masked_fill(finished[:, None], stop_token)
                finished |= next_token[:, 0] == stop_token
            idx = torch.cat([idx, next_token], dim=1)
            if bool(finished.all()) or len(cache) + 1 > self.config.block_size:
                break
            logits = self(next_token, cache=cache)[:, -1, :]
        return idx

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (the tied lm_head counts once, as in the GPT-2 paper's sizes)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---------------------------------------------------------------------------------------------
    # Official checkpoints (Hugging Face GPT-2 format) in and out

    @classmethod
    def from_pretrained(cls, name_or_path: str, dropout: float | None = None) -> "GPT":
        """Load official GPT-2 weights: a preset name (downloaded once from the Hugging Face hub),
        a local HF model directory (config.json + model.safetensors or pytorch_model.bin), or a
        single weights file. Loading is strict: every tensor must be there with the right shape."""
        preset = name_or_path.removeprefix("openai-community/")  # the hub's repository names
        if os.path.exists(name_or_path):
            config, weights_file = _resolve_local(name_or_path)
        elif preset in PRESETS:
            config = GPTConfig.from_preset(preset)
            weights_file = download_checkpoint(preset)
        elif os.sep in name_or_path or name_or_path.endswith((".safetensors", ".bin", ".json")):
            raise FileNotFoundError(f"no such file or directory: {name_or_path}")
        else:
            raise ValueError(f"unknown model '{name_or_path}': not a local path and not a preset "
                             f"({', '.join(PRESETS)})")
        hf = load_tensors(weights_file)
        if config is None:
            config = _config_from_weights(hf, weights_file)
        if dropout is not None:
            config.dropout = dropout
        with torch.device("meta"):  # build without allocating; the checkpoint supplies the tensors
            model = cls(config)
        state = _hf_to_ours(_check_hf_state(hf, model, weights_file), config.n_layer)
        state["lm_head.weight"] = state["transformer.wte.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
        model.name_or_path = name_or_path  # recorded in adapter checkpoints as their base model
        return model

    def save_pretrained(self, directory: str):
        """Write config.json + model.safetensors in HF's GPT-2 format (GPT2LMHeadModel loads it)."""
        state = {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}  # tied
        with torch.device("meta"):
            plain = set(GPT(self.config).state_dict())
        if extra := sorted(set(state) - plain):
            raise ValueError(f"cannot save as GPT-2: {_short_list(extra)} are not GPT-2 weights; "
                             "merge LoRA into the weights first (lora.merge) or save the adapter "
                             "on its own")
        hf = {"transformer." + k: v.detach().cpu().contiguous()
              for k, v in _ours_to_hf(state, self.config.n_layer).items()}
        os.makedirs(directory, exist_ok=True)
        save_tensors(os.path.join(directory, "model.safetensors"), hf, {"format": "pt"})
        write_atomic(os.path.join(directory, "config.json"),
                      json.dumps(_hf_config(self.config), indent=2) + "\n")


# -------------------------------------------------------------------------------------------------
# Converting between the official layout and ours.
#   official (HF GPT2LMHeadModel)                 ours
#   h.{i}.attn.c_attn   Conv1D (C, 3C), q|k|v     h.{i}.attn.q / .k / .v   Linear (C, C) each
#   h.{i}.attn.c_proj   Conv1D (C, C)             h.{i}.attn.o             Linear
#   h.{i}.mlp.c_fc      Conv1D (C, 4C)            h.{i}.mlp.fc             Linear (4C, C)
#   h.{i}.mlp.c_proj    Conv1D (4C, C)            h.{i}.mlp.proj           Linear (C, 4C)
# A Conv1D computes x @ W + b with W of shape (in, out): the transpose of nn.Linear's (out, in).
# Everything else (wte, wpe, ln_1, ln_2, ln_f) has the same name and layout in both.

_CONV1D_RENAMES = {"attn.c_proj": "attn.o", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}


def _hf_to_ours(hf: dict, n_layer: int) -> dict:
    """Official GPT-2 tensors (keys without 'transformer.') -> our state dict (without lm_head)."""
    ours = {"transformer." + k: v for k, v in hf.items() if not k.startswith("h.")}
    for i in range(n_layer):
        h, p = f"h.{i}.", f"transformer.h.{i}."
        for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            ours[p + name] = hf[h + name]
        # c_attn's output columns are [q | k | v]: split them into three Linear layers
        weights = hf[h + "attn.c_attn.weight"].t().chunk(3, dim=0)
        biases = hf[h + "attn.c_attn.bias"].chunk(3, dim=0)
        for name, w, b in zip("qkv", weights, biases):
            ours[p + f"attn.{name}.weight"] = w.contiguous()
            ours[p + f"attn.{name}.bias"] = b.contiguous()
        for old, new in _CONV1D_RENAMES.items():
            ours[p + f"{new}.weight"] = hf[h + f"{old}.weight"].t().contiguous()
            ours[p + f"{new}.bias"] = hf[h + f"{old}.bias"]
    return ours


def _ours_to_hf(state: dict, n_layer: int) -> dict:
    """Our state dict (without lm_head) -> official GPT-2 tensors, keys without 'transformer.'."""
    hf = {k.removeprefix("transformer."): v for k, v in state.items()
          if not k.startswith("transformer.h.")}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            hf[f"h.{i}.{name}"] = state[p + name]
        hf[f"h.{i}.attn.c_attn.weight"] = torch.cat(
            [state[p + f"attn.{n}.weight"] for n in "qkv"], dim=0).t()
        hf[f"h.{i}.attn.c_attn.bias"] = torch.cat([state[p + f"attn.{n}.bias"] for n in "qkv"])
        for old, new in _CONV1D_RENAMES.items():
            hf[f"h.{i}.{old}.weight"] = state[p + f"{new}.weight"].t()
            hf[f"h.{i}.{old}.bias"] = state[p + f"{new}.bias"]
    return hf


def _check_hf_state(hf: dict, model: GPT, source: str) -> dict:
    """Normalise an official state dict and check it against the model, listing every problem.

    Accepted variations: the 'transformer.' prefix (present in files saved from GPT2LMHeadModel,
    absent in OpenAI's originals), the causal-mask buffers attn.bias / attn.masked_bias (constants,
    not weights), and an lm_head.weight that equals wte (the tie made explicit).
    """
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    hf = {k: v for k, v in hf.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    lm_head = hf.pop("lm_head.weight", None)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    untied = (["lm_head.weight (differs from wte.weight: GPT-2 ties them)"]
              if lm_head is not None and "wte.weight" in hf
              and not torch.equal(lm_head, hf["wte.weight"]) else [])
    problems = tensor_mismatch(hf, _ours_to_hf(state, model.config.n_layer), untied)
    if problems:
        raise ValueError(f"{source} does not match GPT-2 {_shape_name(model.config)}: {problems}")
    return {k: v.float() for k, v in hf.items()}


def tensor_mismatch(found: dict, expected: dict, also_unexpected: list = ()) -> str:
    """'' when found has exactly expected's names and shapes; else every difference, listed
    ('2 missing: ...; 1 unexpected: ...; 1 wrongly shaped: name (3,) (expected (4,))')."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected)) + list(also_unexpected)
    wrong_shape = [f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})"
                   for k in sorted(set(found) & set(expected))
                   if tuple(found[k].shape) != tuple(expected[k].shape)]
    return "; ".join(f"{len(items)} {what}: {_short_list(items)}" for what, items in
                     (("missing", missing), ("unexpected", unexpected),
                      ("wrongly shaped", wrong_shape)) if items)


def _short_list(items: list, limit: int = 8) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _shape_name(c: GPTConfig) -> str:
    return (f"(n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, "
            f"vocab_size={c.vocab_size}, block_size={c.block_size})")


# -------------------------------------------------------------------------------------------------
# Files: local checkpoints, config.json, and the download from the Hugging Face hub

# HF GPT-2 config fields that would change the computation; we implement only GPT-2's values.
_HF_FIXED = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "n_inner": (None,),
             "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
             "add_cross_attention": (False,), "tie_word_embeddings": (True,)}


def _config_from_hf(path: str) -> GPTConfig:
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{path} describes a '{hf.get('model_type')}' model, not GPT-2")
    required = ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")
    if missing := [k for k in required if k not in hf]:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    if hf.get("n_inner") == 4 * hf["n_embd"]:
        hf["n_inner"] = None
    unsupported = [f"{k}={hf[k]!r}" for k, ok in _HF_FIXED.items() if k in hf and hf[k] not in ok]
    if unsupported:
        raise ValueError(f"{path}: this GPT-2 implementation does not support "
                         f"{', '.join(unsupported)}")
    return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                     dropout=hf.get("resid_pdrop", 0.1),
                     layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def _hf_config(c: GPTConfig) -> dict:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size,
            "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
            "activation_function": "gelu_new", "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout, "layer_norm_epsilon": c.layer_norm_eps,
            "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256,
            "tie_word_embeddings": True}


def _resolve_local(path: str):
    """A directory or a weights file -> (config or None to infer it, weights file)."""
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                weights = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
    else:
        weights = path
    config_file = os.path.join(os.path.dirname(weights), "config.json")
    return (_config_from_hf(config_file) if os.path.isfile(config_file) else None), weights


def load_tensors(path: str) -> dict:
    """Tensors from a .safetensors file or, with torch.load(weights_only=True), a .bin file."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        with _readable_safetensors(path):
            return load_file(path)
    try:  # weights_only: a .bin is a pickle, and a pickle can run code; this refuses anything else
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged or non-tensor file
        raise ValueError(f"{path} is not a readable PyTorch weights file ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def load_metadata(path: str) -> dict:
    """The string-to-string metadata in a .safetensors header ({} when there is none)."""
    from safetensors import safe_open
    with _readable_safetensors(path), safe_open(path, "pt") as f:
        return f.metadata() or {}


@contextlib.contextmanager
def _readable_safetensors(path: str):
    """Turns safetensors' errors on a damaged file into one message that says what to do."""
    from safetensors import SafetensorError
    try:
        yield
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it may be truncated "
                         "or corrupted: delete it and download or save it again") from None


def _config_from_weights(hf: dict, path: str) -> GPTConfig:
    """Infer the config of a bare weights file from its shapes (heads: from the official sizes)."""
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    if "wte.weight" not in hf or "wpe.weight" not in hf:
        raise ValueError(f"{path} is not a GPT-2 checkpoint: it has no wte/wpe embeddings")
    vocab_size, n_embd = hf["wte.weight"].shape
    n_layer = 1 + max((int(k.split(".")[1]) for k in hf if k.startswith("h.")), default=-1)
    heads = {p["n_embd"]: p["n_head"] for p in PRESETS.values()}
    if n_embd not in heads:
        raise ValueError(f"cannot tell the number of heads of {path} (n_embd={n_embd}); "
                         "put its config.json beside it")
    return GPTConfig(block_size=hf["wpe.weight"].shape[0], vocab_size=vocab_size,
                     n_layer=n_layer, n_head=heads[n_embd], n_embd=n_embd)


def save_tensors(path: str, tensors: dict, metadata: dict | None = None):
    """Write a .safetensors file atomically: into path + '.tmp', then renamed over path."""
    from safetensors.torch import save_file

    save_file(tensors, path + ".tmp", metadata=metadata)
    os.replace(path + ".tmp", path)


def write_atomic(path: str, text: str):
    """Write a text file atomically: into path + '.tmp', then renamed over path, so a crash
    never leaves half a file (or destroys the previous one)."""
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def cache_dir() -> str:
    """Where downloaded checkpoints live: $GPT2_CACHE_DIR, else ~/.cache/lora-gpt2."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                           "lora-gpt2")
    return os.environ.get("GPT2_CACHE_DIR", default)


def download_checkpoint(preset: str) -> str:
    """Path of the preset's model.safetensors, downloaded from the hub the first time.

    A copy already in the Hugging Face cache (from transformers) is used as it is.
    $HF_ENDPOINT points at a mirror (default https://huggingface.co), as in Hugging Face's tools.
    """
    path = os.path.join(cache_dir(), preset, "model.safetensors")
    if os.path.isfile(path):
        return path
    hf_home = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
    snapshots = os.path.join(hf_home, "hub", f"models--openai-community--{preset}", "snapshots")
    for snapshot in sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []:
        if os.path.isfile(os.path.join(snapshots, snapshot, "model.safetensors")):
            return os.path.join(snapshots, snapshot, "model.safetensors")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    download(f"{endpoint}/openai-community/{preset}/resolve/main/model.safetensors", path)
    return path


def download(url: str, path: str, chunk_size: int = 1 << 20,
             hint: str = "or download model.safetensors and config.json yourself into a folder "
                         "and pass that folder instead of the preset name"):
    """Fetch url into path with a progress bar. Bytes land in path + '.part' first and the file is
    renamed only when complete; an interrupted download resumes from the partial file. `hint`
    ends the error message: what to do instead."""
    from tqdm import tqdm

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "lora-gpt2"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is not a prefix we can extend: start over
            os.remove(part)
            return download(url, path, chunk_size, hint)
        raise RuntimeError(f"downloading {url} failed: HTTP {e.code} {e.reason}; {hint}") from None
    except OSError as e:  # URLError, timeouts, refused connections
        raise RuntimeError(f"cannot download {url} ({getattr(e, 'reason', e)}): no network? "
                           f"Connect and run again, {hint}") from None
    with response:
        if have and response.status != 206:  # the server ignored the Range header: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        try:
            with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=f"downloading {os.path.basename(os.path.dirname(path))}") as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise RuntimeError(f"download of {url} was interrupted ({e!r}); run again to resume "
                               f"from {part}") from None
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise RuntimeError(f"download of {url} stopped at {size} of {total} bytes; "
                           f"run again to resume from {part}")
    os.replace(part, path)
