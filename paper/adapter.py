"""Adapter baselines of the LoRA paper (Sec. 5.1, Tables 1 and 3): Adapter^H and Adapter^L.

An adapter is a small bottleneck MLP with a residual connection, x + up(act(down(x))), inserted
into each block. Unlike LoRA it sits *in series* with the frozen layers, so it cannot be merged
away: every forward pass runs it, which is the extra latency of Table 1 (Sec. 3).

- Adapter^H (Houlsby et al. 2019): two adapters per block, on the output of the attention
  projection W_o and on the output of the MLP, before each residual addition; GELU inside.
- Adapter^L (Lin et al. 2020): one adapter per block, after the MLP (on the block's output),
  with its own trainable LayerNorm in front; ReLU inside.

Trainable parameters (Sec. 5.1): |Theta| = L_adpt (2 d r + r + d) + 2 L_LN d.
Same shape of API as lora.py: apply, count (describe), save, load.
"""

import torch.nn as nn

import lora
from model import GPT
from plumbing import checkpoint

KINDS = ("houlsby", "lin")  # Adapter^H, Adapter^L


class Adapter(nn.Module):
    """x + up(act(down(x))) with a d -> r -> d bottleneck; Adapter^L adds a LayerNorm in front."""

    def __init__(self, d: int, r: int, activation: str, layer_norm: bool = False):
        super().__init__()
        self.ln = nn.LayerNorm(d) if layer_norm else None
        self.down = nn.Linear(d, r)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.up = nn.Linear(r, d)
        # up starts at zero: the adapter adds nothing and the model starts unchanged.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        h = self.ln(x) if self.ln is not None else x
        return x + self.up(self.act(self.down(h)))


class WithAdapter(nn.Module):
    """A frozen module followed by an adapter on its output: adapter(module(...))."""

    def __init__(self, module: nn.Module, adapter: Adapter):
        super().__init__()
        self.module, self.adapter = module, adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.module(*args, **kwargs))


def _places(kind: str, n_layer: int) -> list[str]:
    """The modules whose output each adapter transforms."""
    if kind == "houlsby":  # attention's W_o and the MLP's output layer, inside the residual branch
        return [f"transformer.h.{i}.{m}" for i in range(n_layer) for m in ("attn.o", "mlp.proj")]
    return [f"transformer.h.{i}" for i in range(n_layer)]  # lin: on each block's output


def apply(model: GPT, kind: str = "houlsby", r: int = 8) -> GPT:
    """Insert adapters of bottleneck r into every block and freeze everything but them."""
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}: choose houlsby (Adapter^H) or lin "
                         "(Adapter^L)")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= model.config.n_embd:
        raise ValueError(f"adapter bottleneck r must be an integer in [1, {model.config.n_embd}], "
                         f"got {r!r}")
    if adapters(model):
        raise ValueError("adapters are already applied to this model; apply them once")
    if any(isinstance(m, lora.LoRALinear) for m in model.modules()):
        raise ValueError("this model has LoRA layers: the adapter baselines start from the plain "
                         "GPT-2 (or lora.merge it first)")
    model.requires_grad_(False)
    device = model.transformer.wte.weight.device
    for name in _places(kind, model.config.n_layer):
        adapter = Adapter(model.config.n_embd, r, "gelu" if kind == "houlsby" else "relu",
                          layer_norm=kind == "lin").to(device)
        wrapped = WithAdapter(model.get_submodule(name), adapter).train(model.training)
        model.set_submodule(name, wrapped)
    return model


def adapters(model: GPT) -> dict[str, Adapter]:
    return {name: m for name, m in model.named_modules() if isinstance(m, Adapter)}


def settings(model: GPT) -> dict:
    found = adapters(model)
    if not found:
        raise ValueError("this model has no adapters: call adapter.apply (or adapter.load) first")
    first = next(iter(found.values()))
    return dict(kind="houlsby" if first.ln is None else "lin", r=first.down.out_features)


def num_trainable(n_layer: int, d: int, r: int, kind: str) -> int:
    """The paper's count (Sec. 5.1): L_adpt (2 d r + r + d) + 2 L_LN d."""
    L_adpt, L_LN = (2 * n_layer, 0) if kind == "houlsby" else (n_layer, n_layer)
    return L_adpt * (2 * d * r + r + d) + 2 * L_LN * d


def rank_for(n_params: float, n_layer: int, d: int, kind: str) -> int:
    """The bottleneck r whose adapter count (above) comes closest to n_params."""
    return min(range(1, d + 1), key=lambda r: abs(num_trainable(n_layer, d, r, kind) - n_params))


def describe(model: GPT) -> str:
    s = settings(model)
    trainable = sum(p.numel() for a in adapters(model).values() for p in a.parameters())
    total = model.num_params()
    name = "Adapter^H" if s["kind"] == "houlsby" else "Adapter^L"
    return (f"{name} r={s['r']} ({len(adapters(model))} adapters): {trainable:,} trainable "
            f"parameters, {100 * trainable / total:.2f}% of {total:,}")


def _params(model: GPT) -> dict:
    return {f"{name}.{k}": p for name, a in adapters(model).items()
            for k, p in a.named_parameters()}


def base_weights(model: GPT) -> list:
    """The weights right before each adapter (its fingerprint's input): W_o and the MLP's output
    layer for Adapter^H, each block's MLP output layer for Adapter^L."""
    places = [m for m in model.modules() if isinstance(m, WithAdapter)]
    return [p.module.weight if isinstance(p.module, nn.Linear) else p.module.mlp.proj.weight
            for p in places] if places else [
        model.get_submodule(f"transformer.h.{i}.mlp.proj").weight
        for i in range(model.config.n_layer)]


def save(model: GPT, path: str):
    """Save only the adapters' tensors, with kind and r, and the base's fingerprint."""
    metadata = checkpoint.adapter_metadata(model, "adapter", base_weights(model), **settings(model))
    checkpoint.save_adapter_file(model, path, _params(model), metadata)


def load(model: GPT, path: str, check_base: bool = True) -> dict:
    """Load adapters saved by save(), inserting them first if the model has none; refused on a
    base with other weights than the one they were trained on, unless check_base=False."""
    s = checkpoint.read_adapter_metadata(path, "adapter", model)
    if not adapters(model):
        try:  # a hand-edited file may record anything
            apply(model, s.get("kind"), s.get("r"))
        except ValueError as e:
            raise checkpoint.invalid_settings(path, e) from None
    if settings(model) != s:
        raise checkpoint.CheckpointError(f"{path} holds {s}, but this model has {settings(model)}")
    if check_base:
        checkpoint.check_base(path, model, base_weights(model))
    checkpoint.copy_tensors(path, _params(model))
    return s
