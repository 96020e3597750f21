"""LoRA: Low-Rank Adaptation (Hu et al. 2021) for the GPT-2 in model.py.

A pretrained weight W0 (d x k) stays frozen; its update is a product of two thin matrices
(Sec. 4.1, Eq. 3), a second path beside W0 whose output is added (Figure 1):

                 h = W0 x + (alpha / r) B A x
                              ^
              +---------------+---------------+
              |                               |
      +---------------+                 B = 0 (d x r)   trainable
      |  W0 (d x k)   |                       ^
      |    frozen     |                 A ~ random (r x k)   trainable
      +---------------+                       ^
              ^                               |
              +---------------+---------------+
                              x  (k numbers in)

Only A and B train: (d + k) r numbers per adapted matrix instead of d k. After training,
W0 + (alpha / r) B A is again one d x k matrix (`merge`), so inference costs what the base model
costs, and subtracting B A restores W0 for the next task (`unmerge`).

    model = GPT.from_pretrained("gpt2-medium")
    lora.apply(model, targets="q,v", r=4, alpha=32, dropout=0.1)  # wrap W_q, W_v; freeze the rest
    ...train...
    lora.save(model, "adapter.safetensors")                        # A and B only: 1.6 MB
    lora.merge(model)                                              # W <- W0 + (alpha/r) B A

Read in order: the layer, apply, merge and unmerge (Sec. 4.1), LoRA's descendants (the next lesson:
one idea of the layer changed each), then the adapter-only checkpoints. The adapter file format
lives in plumbing/checkpoint.py, PEFT's format in paper/peft_interop.py.
"""

import math
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT, Block
from plumbing import checkpoint

# Which matrices of each block LoRA can adapt, by the names used on the command line.
TARGETS = {
    "q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",  # W_q, W_k, W_v, W_o (Sec. 4.2)
    "fc": "mlp.fc", "proj": "mlp.proj",  # the MLP's d -> 4d and 4d -> d (future work in Sec. 4.2)
}


class LoRALinear(nn.Module):
    """A frozen nn.Linear W0 plus a trainable rank-r update: h = W0 x + (alpha/r) B A x (Eq. 3)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base  # W0 and its bias, frozen by apply()
        self.r, self.alpha = r, alpha
        # Sec. 4.1: scaling by alpha/r keeps the update's size steady when r changes, so the same
        # learning rate works for every r ("we simply set alpha to the first r we try").
        self.scaling = alpha / r
        like = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.A = nn.Parameter(torch.empty(r, base.in_features, **like))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, **like))
        # A random and B zero make B A = 0: training starts from exactly the pretrained model.
        # (The paper says "random Gaussian" for A; its released code, like PEFT, uses this init.)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)  # on the input of the LoRA path only

    def forward(self, x):
        # Both paths read the same x and their outputs add (Figure 1): x -> A (down to r) -> B.
        return self.base(x) + self.scaling * F.linear(F.linear(self.dropout(x), self.A), self.B)

    def delta_weight(self, dtype=None) -> torch.Tensor:
        """Delta W = (alpha/r) B A: the d x k matrix this layer adds to W0 (in dtype, if given)."""
        return self.scaling * (self.B.to(dtype or self.B.dtype) @ self.A.to(dtype or self.A.dtype))

    @torch.no_grad()
    def fold(self):
        """W <- W0 + (alpha/r) B A: the update folded into the weight (merge), in fp32 then
        rounded once to W's dtype (a bf16 W0 would round B A and the sum: docs/training.md)."""
        self.base.weight.copy_(self.base.weight.float() + self.delta_weight(torch.float32))

    @torch.no_grad()
    def unfold(self):
        """W0 <- W - (alpha/r) B A: the pretrained weight again, up to float rounding (unmerge)."""
        self.base.weight.copy_(self.base.weight.float() - self.delta_weight(torch.float32))


def check_settings(targets, r, alpha: float, dropout: float, init: str = "lora") -> list[str]:
    """The targets as a list (TARGETS order), after checking r, alpha, dropout and init; a bad
    value raises ValueError naming it. apply() calls this; train.py calls it before loading
    anything."""
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets)]
    if "" in names and any(names):  # q,,v is a typo, not q,v
        raise ValueError(f"targets {','.join(names)!r} have an empty entry: give them as e.g. q,v")
    unknown = [t for t in names if t and t not in TARGETS]
    if unknown or not any(names):
        raise ValueError(f"unknown LoRA target {', '.join(map(repr, unknown)) or '(none given)'}: "
                         "choose from q, k, v, o (attention W_q, W_k, W_v, W_o) and fc, proj "
                         "(MLP d->4d, 4d->d), e.g. q,v")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"rank r must be an integer >= 1, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if init not in INITS:
        raise ValueError(f"init {init!r}: choose from {', '.join(INITS)}")
    return [t for t in TARGETS if t in names]


def apply(model: GPT, targets="q,v", r: int = 4, alpha: float = 32, dropout: float = 0.0, *,
          rslora: bool = False, dora: bool = False, init: str = "lora") -> GPT:
    """Wrap the chosen matrices of every block in LoRALinear, then freeze all but A and B.
    rslora, dora, init: LoRA's descendants (the section after the merge)."""
    targets = check_settings(targets, r, alpha, dropout, init)
    if lora_layers(model):
        raise ValueError("LoRA is already applied to this model; apply it once (lora.load "
                         "fills existing LoRA layers)")
    if not all(type(block) is Block for block in model.transformer.h):
        raise ValueError("this model's blocks are wrapped (Adapter^L?): LoRA adapts the plain "
                         "GPT-2's Linear layers; start from a model without adapters")
    for t in targets:  # check every target before changing anything
        W0 = model.transformer.h[0].get_submodule(TARGETS[t])
        if type(W0) is not nn.Linear:
            raise ValueError(f"{t} is a {type(W0).__name__} here, not a plain Linear layer "
                             "(Adapter^H?): start from a model without adapters")
        if r > min(W0.in_features, W0.out_features):
            raise ValueError(f"rank r={r} is larger than {t} ({W0.out_features} x "
                             f"{W0.in_features}) allows: at most {min(W0.weight.shape)}")
    model.requires_grad_(False)  # W0 and everything else stay as pretrained
    Layer = DoRALinear if dora else LoRALinear  # (DoRA: the descendants' section, after merge)
    for i in range(model.config.n_layer):
        for t in targets:
            name = f"transformer.h.{i}.{TARGETS[t]}"
            layer = Layer(model.get_submodule(name), r, alpha, dropout)
            if rslora:
                rank_stabilize(layer)
            if init == "pissa":
                init_pissa(layer)
            model.set_submodule(name, layer.train(model.training))  # new modules start in train()
    return model


# merge() puts each merged layer's plain nn.Linear back into the model; the LoRA layers (their A
# and B) wait here, by model, until unmerge() puts them back: being here is what "merged" means.
_MERGED = weakref.WeakKeyDictionary()


def lora_layers(model: GPT) -> dict[str, LoRALinear]:
    """The model's LoRA layers by module name (e.g. 'transformer.h.0.attn.q'), merged or not."""
    return _MERGED.get(model) or {name: m for name, m in model.named_modules()
                                  if isinstance(m, LoRALinear)}


def settings(model: GPT) -> dict:
    """targets, r, alpha and dropout of the model's LoRA layers (and their variant: rslora,
    dora, init)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers: call lora.apply (or lora.load) first")
    first = next(iter(layers.values()))
    adapted = {name.split(".", 3)[3] for name in layers}  # 'attn.q', ...
    return dict(targets=[t for t, path in TARGETS.items() if path in adapted], r=first.r,
                alpha=first.alpha, dropout=first.dropout.p, **variant(first))


def describe(model: GPT) -> str:
    """One line: the LoRA settings and the trainable share, e.g. 393,216 (0.11%) for the paper's
    gpt2-medium r=4 on q,v: 2 x (24 layers x 2 matrices) x 1024 x 4 (Sec. 5.1)."""
    s, layers = settings(model), lora_layers(model)
    trainable = sum(p.numel() for layer in layers.values() for p in layer.parameters(False))
    total = model.num_params() + (trainable if model in _MERGED else 0)
    return (f"LoRA r={s['r']} alpha={s['alpha']:g} on {','.join(s['targets'])} "
            f"({len(layers)} matrices{describe_variant(s)}): {trainable:,} trainable parameters, "
            f"{100 * trainable / total:.2f}% of {total:,}")


# --- merge and unmerge (Sec. 4.1, "No Additional Inference Latency") ---------------------------

def merge(model: GPT) -> GPT:
    """W <- W0 + (alpha/r) B A in every LoRA layer, and the plain nn.Linear goes back in its place,
    so the forward pass is exactly the base model's, module for module. Refused when merged
    already (it would add B A twice)."""
    if model in _MERGED:
        raise ValueError("LoRA is already merged into this model; merging again would add B A "
                         "twice")
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers to merge")
    if quantized := [name for name, layer in layers.items() if type(layer.base) is not nn.Linear]:
        raise ValueError(f"W0 of {quantized[0]} is a {type(layers[quantized[0]].base).__name__}, "
                         "not an nn.Linear: B A cannot fold into QLoRA's 4-bit codes; "
                         "qlora.dequantize the model first, then merge (docs/qlora.md)")
    for name, layer in layers.items():
        layer.fold()  # W <- W0 + (alpha/r) B A
        model.set_submodule(name, layer.base)
    _MERGED[model] = layers
    return model


def unmerge(model: GPT) -> GPT:
    """Undo merge: W0 <- W - (alpha/r) B A (up to float rounding), and the LoRA layers go back
    in. To switch tasks, unmerge, load the next adapter, merge again (Sec. 4.1)."""
    layers = _MERGED.pop(model, None)
    if not layers:
        raise ValueError("nothing to unmerge: LoRA is not merged into this model")
    for name, layer in layers.items():
        layer.to(layer.base.weight.device)  # A and B follow the model if it moved since merge
        layer.unfold()  # W0 <- W - (alpha/r) B A
        model.set_submodule(name, layer.train(model.training))
    return model


# --- LoRA's descendants: one idea of the layer changed each ------------------------------------
#
# Each is PEFT's implementation of its paper, line for line in what it computes (tests/
# test_variants.py: outputs, loss, gradients, merge, an optimizer step), and each merges: the
# merged model is plain GPT-2 again. train.py: --rslora, --dora, --init pissa, and --lora-plus,
# which changes the optimizer, not the layer (train.make_optimizer). docs/variants.md.


def rank_stabilize(layer: LoRALinear):
    """rsLoRA (Kalajdzievski 2023, arXiv 2312.03732): the update scaled by alpha / sqrt(r), not
    alpha / r. With alpha / r the update's gradients shrink as r grows, so a high rank learns no
    more than a low one; alpha / sqrt(r) keeps them steady, and a higher r can pay off."""
    layer.scaling, layer.rslora = layer.alpha / math.sqrt(layer.r), True


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024, arXiv 2402.09353, Eq. 5): W0 split into a magnitude per output row
    and a direction; LoRA moves the direction, m (trainable, from ||W0||) sets its length:

        W' = m (W0 + s B A) / ||W0 + s B A||      (norms of rows; s = alpha / r)

    The norm is a constant for the gradient (Sec. 4.3: it is "detached from the gradient
    graph"), as PEFT computes it."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(base, r, alpha, dropout)
        self.m = nn.Parameter(base.weight.detach().norm(dim=1))  # W' = W0 at the start

    def forward(self, x):
        W0 = self.base.weight  # (read once: QLoRA's NF4 W0 is dequantized at each read)
        scale = self.m / (W0 + self.delta_weight()).norm(dim=1).detach()
        # scale (W0 x + s B A x) + bias, with LoRA's dropout on the input of the change
        # (W0 x computed again on the dropped-out x: PEFT's order of operations)
        h = self.dropout(x)
        return (self.base(x) + (scale - 1) * F.linear(h, W0)
                + scale * self.scaling * F.linear(F.linear(h, self.A), self.B))

    @torch.no_grad()
    def fold(self):  # W <- W' (in fp32, as LoRA's); the norm is kept, to give W0 back
        W = self.base.weight.float() + self.delta_weight(torch.float32)
        self.norm = W.norm(dim=1)
        self.base.weight.copy_((self.m.float() / self.norm)[:, None] * W)

    @torch.no_grad()
    def unfold(self):
        self.base.weight.copy_((self.norm / self.m.float())[:, None] * self.base.weight.float()
                               - self.delta_weight(torch.float32))


INITS = ("lora", "pissa")  # how A and B start: LoRA's (A random, B zero), or PiSSA's


@torch.no_grad()
def init_pissa(layer: LoRALinear):
    """PiSSA (Meng et al. 2024, arXiv 2404.02948): A and B start as W0's principal part, its top
    r singular directions, and W0 becomes the rest; the model starts as it was, and training
    adapts the directions that carry most of W0:

        W0 = U S V^T;  B = U_r (S_r / s)^1/2,  A = (S_r / s)^1/2 V_r^T;  W0 <- W0 - s B A

    The base is then not the pretrained one: the adapter file says so (init "pissa"), and
    loading it splits W0 the same way first (B0 and A0 are kept, to tell the pretrained W0)."""
    U, S, Vh = torch.linalg.svd(layer.base.weight.float(), full_matrices=False)
    root = (S[:layer.r] / layer.scaling).sqrt()
    layer.B.copy_(U[:, :layer.r] * root)
    layer.A.copy_(root[:, None] * Vh[:layer.r])
    layer.register_buffer("B0", layer.B.detach().clone(), persistent=False)
    layer.register_buffer("A0", layer.A.detach().clone(), persistent=False)
    layer.base.weight -= layer.delta_weight().to(layer.base.weight)


def pretrained_weight(layer: LoRALinear) -> torch.Tensor:
    """The W0 the layer adapts: its base's weight, or PiSSA's residual plus the part it took."""
    if hasattr(layer, "B0"):
        return layer.base.weight + layer.scaling * (layer.B0 @ layer.A0)
    return layer.base.weight


def variant(layer: LoRALinear) -> dict:
    """Which of the descendants a layer is: {"rslora", "dora", "init", "quantize"} (quantize:
    QLoRA's "nf4" where W0 is kept in 4 bits, paper/qlora.py; else None)."""
    return dict(rslora=getattr(layer, "rslora", False), dora=isinstance(layer, DoRALinear),
                init="pissa" if hasattr(layer, "B0") else "lora",
                quantize=getattr(layer.base, "quantized", None))


def describe_variant(s: dict) -> str:
    """', rsLoRA, DoRA, PiSSA init, W0 in NF4' for settings that have them."""
    return "".join([", rsLoRA"] * bool(s.get("rslora")) + [", DoRA"] * bool(s.get("dora"))
                   + [", PiSSA init"] * (s.get("init", "lora") == "pissa")
                   + [", W0 in NF4"] * (s.get("quantize") == "nf4"))


# --- adapter-only checkpoints: A and B, a few MB instead of the whole model --------------------


def _lora_params(model: GPT) -> dict:
    """Each layer's trainable tensors: A and B (and DoRA's m), e.g. 'transformer.h.0.attn.q.A'."""
    return {f"{name}.{p}": param for name, layer in lora_layers(model).items()
            for p, param in layer.named_parameters(recurse=False)}


def base_weights(model: GPT, targets: list[str]) -> list[torch.Tensor]:
    """W0 of each adapted matrix (what the adapter file's fingerprint is taken of)."""
    layers = [model.get_submodule(f"transformer.h.{i}.{TARGETS[t]}")
              for i in range(model.config.n_layer) for t in targets]
    return [pretrained_weight(m) if isinstance(m, LoRALinear) else m.weight for m in layers]


def save(model: GPT, path: str):
    """Save only A and B (e.g. 'transformer.h.0.attn.q.A') with the settings, the base model and
    the fingerprint of the W0 they adapt in the metadata."""
    if model in _MERGED:
        raise ValueError("LoRA is merged into this model: lora.unmerge it before saving the adapter")
    s = settings(model)
    metadata = checkpoint.adapter_metadata(model, "lora", base_weights(model, s["targets"]), **s)
    checkpoint.save_adapter_file(model, path, _lora_params(model), metadata)


def read_settings(model: GPT, path: str, check_base: bool = True) -> dict:
    """The settings of an adapter file saved by save(), checked against the model: its shape, and
    the base weights' fingerprint unless check_base=False."""
    s = {**dict(rslora=False, dora=False, init="lora", quantize=None),  # (older files)
         **checkpoint.read_adapter_metadata(path, "lora", model)}
    try:  # a hand-edited file may record anything
        s["targets"] = check_settings(s["targets"], s["r"], s["alpha"], s["dropout"], s["init"])
        if s["quantize"] not in (None, "nf4"):
            raise ValueError(f"quantize {s['quantize']!r}: this code knows nf4 (or none)")
    except (KeyError, TypeError, ValueError) as e:
        raise checkpoint.invalid_settings(path, e) from None
    if check_base:
        checkpoint.check_base(path, model, base_weights(model, s["targets"]))
    return s


def load(model: GPT, path: str, check_base: bool = True) -> dict:
    """Load an adapter saved by save(): read_settings checks it, LoRA is applied with the file's
    settings if the model has none yet, A and B are copied in. Returns the settings."""
    s = read_settings(model, path, check_base=False)
    if model in _MERGED:
        raise ValueError("LoRA is merged into this model: lora.unmerge it before loading another "
                         "adapter")
    if s["quantize"] and not any(getattr(m, "quantized", None) for m in model.modules()):
        raise checkpoint.CheckpointError(
            f"{path} trained over W0 in NF4 (QLoRA, train.py --quantize nf4): load it with "
            "paper/qlora.py's load, which quantizes W0 as training did (sample.py does)")
    if check_base:
        checkpoint.check_base(path, model, base_weights(model, s["targets"]))
    if not lora_layers(model):
        apply(model, s["targets"], s["r"], s["alpha"], s["dropout"], rslora=s["rslora"],
              dora=s["dora"], init=s["init"])  # (PiSSA: W0 split as it was for training)
    have = settings(model)
    keys = ("targets", "r", "alpha", "rslora", "dora", "init", "quantize")
    if [have[k] for k in keys] != [s[k] for k in keys]:
        raise checkpoint.CheckpointError(
            f"{path} adapts {','.join(s['targets'])} with r={s['r']}, alpha={s['alpha']}"
            f"{describe_variant(s)}, but this model's LoRA layers are on "
            f"{','.join(have['targets'])} with r={have['r']}, alpha={have['alpha']}"
            f"{describe_variant(have)}")
    checkpoint.copy_tensors(path, _lora_params(model))
    return s
