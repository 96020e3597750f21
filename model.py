"""GPT-2 in one file, with the attention projections W_q, W_k, W_v, W_o as separate layers.

Read it top to bottom: the config, the KV cache (the keys and values decoding keeps), then the
modules in the order the forward pass uses them (attention, MLP, block, the whole model), then
loading and saving the official checkpoints, and last the conversion of their layout to ours. The
files themselves (formats, strict checks, the download) are plumbing/checkpoint.py's, imported
only inside from_pretrained and save_pretrained: this file alone is the model.

OpenAI's GPT-2 (and Hugging Face's port of it) fuses W_q, W_k, W_v into one `c_attn` layer stored
as a "Conv1D" whose weight is the transpose of an nn.Linear weight. LoRA (Hu et al. 2021, Sec. 4.2)
adapts W_q and W_v separately, so here they are four plain nn.Linear layers `q`, `k`, `v`, `o`;
`from_pretrained` splits and transposes the official weights and `save_pretrained` fuses them back.
"""

import math
from dataclasses import asdict, dataclass

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
    with it each step feeds only the new token. Each layer's storage is allocated for `capacity`
    positions (doubled when a sequence outgrows it) and each step writes its keys and values in
    place, so the past is not copied at every step. `reorder` follows the surviving beams in beam
    search: one copy of the positions filled so far.
    """

    def __init__(self, n_layer: int, capacity: int = 0):
        self.capacity = capacity  # positions to allocate at first (0: what the first step needs)
        self.keys = [None] * n_layer  # (B, n_head, allocated positions, head_dim) per layer
        self.values = [None] * n_layer
        self.lengths = [0] * n_layer  # positions filled

    def __len__(self) -> int:
        return self.length(0)

    def length(self, layer: int) -> int:
        """Number of positions cached in this layer."""
        return self.lengths[layer]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append this step's (B, n_head, T, head_dim) keys and values; return all of them so far."""
        past, end = self.lengths[layer], self.lengths[layer] + k.size(2)
        allocated = 0 if self.keys[layer] is None else self.keys[layer].size(2)
        if end > allocated:
            size = max(end, self.capacity, 2 * allocated)
            self.keys[layer] = self._moved(self.keys[layer], k, past, size)
            self.values[layer] = self._moved(self.values[layer], v, past, size)
        self.keys[layer][:, :, past:end] = k
        self.values[layer][:, :, past:end] = v
        self.lengths[layer] = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    @staticmethod
    def _moved(old, new, past: int, size: int) -> torch.Tensor:
        """Storage for `size` positions shaped like `new`, holding old's first `past` positions."""
        storage = new.new_empty(new.size(0), new.size(1), size, new.size(3))
        if old is not None:
            storage[:, :, :past] = old[:, :, :past]
        return storage

    def reorder(self, index: torch.Tensor):
        """Keep batch rows `index` (in that order), e.g. the parents of the beams that survive."""
        for layer, n in enumerate(self.lengths):
            for store in (self.keys, self.values):
                old = store[layer]
                if old is None:
                    continue
                store[layer] = old.new_empty(len(index), *old.shape[1:])
                torch.index_select(old[:, :, :n], 0, index, out=store[layer][:, :, :n])


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
        Beam search (the paper's decoding) is paper/decoding.py's, which sample.py calls.
        """
        cache = KVCache(self.config.n_layer, capacity=min(idx.size(1) + max_new_tokens,
                                                          self.config.block_size))
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
    # The official checkpoints in and out: their layout is converted to ours below the class;
    # finding, downloading, reading, checking and writing the files is plumbing/checkpoint.py's

    @classmethod
    def from_pretrained(cls, name_or_path: str, dropout: float | None = None) -> "GPT":
        """Load official GPT-2 weights: a preset name (downloaded once from the Hugging Face hub),
        a local HF model directory (config.json + model.safetensors or pytorch_model.bin), or a
        single weights file. Loading is strict: every tensor must be there with the right shape."""
        from plumbing import checkpoint  # the files: found or downloaded, read, checked (plumbing)

        fields, hf, source = checkpoint.read_official(name_or_path, PRESETS)
        config = GPTConfig(**fields)
        if dropout is not None:
            config.dropout = dropout
        with torch.device("meta"):  # build without allocating; the checkpoint supplies the tensors
            model = cls(config)
        # every tensor our layout needs, with its shape, or one error that lists what is not
        expected = ours_to_hf(model.state_dict(), config.n_layer)
        hf = checkpoint.checked_official(hf, expected, asdict(config), source)
        state = hf_to_ours(hf, config.n_layer)
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied: not stored
        model.load_state_dict(state, strict=True, assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
        model.name_or_path = name_or_path  # recorded in adapter checkpoints as their base model
        return model

    def save_pretrained(self, directory: str):
        """Write config.json + model.safetensors in HF's GPT-2 format (GPT2LMHeadModel loads it)."""
        from plumbing import checkpoint

        state = {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}  # tied
        with torch.device("meta"):
            plain = set(GPT(self.config).state_dict())
        if extra := sorted(set(state) - plain):
            raise ValueError(f"cannot save as GPT-2: {checkpoint.short_list(extra)} are not GPT-2 "
                             "weights; merge LoRA into the weights first (lora.merge) or save the "
                             "adapter on its own")
        checkpoint.save_official(directory, ours_to_hf(state, self.config.n_layer),
                                 asdict(self.config))


# -------------------------------------------------------------------------------------------------
# The official layout (OpenAI's GPT-2, as Hugging Face's GPT2LMHeadModel stores it) and ours:
#   official                                      ours
#   h.{i}.attn.c_attn   Conv1D (C, 3C), q|k|v     h.{i}.attn.q / .k / .v   Linear (C, C) each
#   h.{i}.attn.c_proj   Conv1D (C, C)             h.{i}.attn.o             Linear
#   h.{i}.mlp.c_fc      Conv1D (C, 4C)            h.{i}.mlp.fc             Linear (4C, C)
#   h.{i}.mlp.c_proj    Conv1D (4C, C)            h.{i}.mlp.proj           Linear (C, 4C)
# A Conv1D computes x @ W + b with W of shape (in, out): the transpose of nn.Linear's (out, in).
# Everything else (wte, wpe, ln_1, ln_2, ln_f) has the same name and layout in both; lm_head is
# wte itself (tied), so it is not stored.

_CONV1D_RENAMES = {"attn.c_proj": "attn.o", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
_LAYER_NORMS = ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias")


def hf_to_ours(hf: dict, n_layer: int) -> dict:
    """Official GPT-2 tensors (keys without 'transformer.') -> our state dict (without lm_head)."""
    ours = {"transformer." + k: v for k, v in hf.items() if not k.startswith("h.")}
    for i in range(n_layer):
        h, p = f"h.{i}.", f"transformer.h.{i}."
        for name in _LAYER_NORMS:
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


def ours_to_hf(state: dict, n_layer: int) -> dict:
    """Our state dict -> official GPT-2 tensors, keys without 'transformer.' (lm_head left out:
    it is wte). The exact inverse of hf_to_ours."""
    hf = {k.removeprefix("transformer."): v for k, v in state.items()
          if not k.startswith("transformer.h.") and k != "lm_head.weight"}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for name in _LAYER_NORMS:
            hf[f"h.{i}.{name}"] = state[p + name]
        hf[f"h.{i}.attn.c_attn.weight"] = torch.cat(
            [state[p + f"attn.{n}.weight"] for n in "qkv"], dim=0).t()
        hf[f"h.{i}.attn.c_attn.bias"] = torch.cat([state[p + f"attn.{n}.bias"] for n in "qkv"])
        for old, new in _CONV1D_RENAMES.items():
            hf[f"h.{i}.{old}.weight"] = state[p + f"{new}.weight"].t()
            hf[f"h.{i}.{old}.bias"] = state[p + f"{new}.bias"]
    return hf
