"""LoRA: Low-Rank Adaptation (Hu et al. 2021) for the GPT-2 in model.py.

A pretrained weight W0 (d x k) stays frozen; its update is a product of two thin matrices
(Sec. 4.1, Eq. 3):

    h = W0 x + (alpha / r) * B A x        A: r x k (random),  B: d x r (zero),  r << min(d, k)

Only A and B train: (d + k) r numbers per adapted matrix instead of d k. After training,
W0 + (alpha / r) B A is again one d x k matrix (`merge`), so inference costs what the base model
costs, and subtracting B A restores W0 for the next task (`unmerge`).

    model = GPT.from_pretrained("gpt2-medium")
    lora.apply(model, targets="q,v", r=4, alpha=32, dropout=0.1)  # wrap W_q, W_v; freeze the rest
    ...train...
    lora.save(model, "adapter.safetensors")                        # A and B only: 1.6 MB
    lora.merge(model)                                              # W <- W0 + (alpha/r) B A
"""

import json
import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import (GPT, PRESETS, load_metadata, load_tensors, save_tensors, tensor_mismatch,
                   write_atomic)

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

    def delta_weight(self) -> torch.Tensor:
        """Delta W = (alpha/r) B A: the d x k matrix this layer adds to W0."""
        return self.scaling * (self.B @ self.A)


def parse_targets(targets) -> list[str]:
    """'q,v' or ['q', 'v'] -> ['q', 'v'] in TARGETS order; unknown names raise with the choices."""
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    names = [t.strip() for t in names if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise ValueError(f"unknown LoRA target {', '.join(map(repr, unknown)) or '(none given)'}: "
                         "choose from q, k, v, o (attention W_q, W_k, W_v, W_o) and fc, proj "
                         "(MLP d->4d, 4d->d), e.g. q,v")
    return [t for t in TARGETS if t in names]


def apply(model: GPT, targets="q,v", r: int = 4, alpha: float = 32, dropout: float = 0.0) -> GPT:
    """Wrap the chosen matrices of every block in LoRALinear, then freeze all but A and B."""
    targets = parse_targets(targets)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"rank r must be an integer >= 1, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if lora_layers(model):
        raise ValueError("LoRA is already applied to this model; apply it once (lora.load "
                         "fills existing LoRA layers)")
    for t in targets:  # check every target before changing anything
        W0 = model.transformer.h[0].get_submodule(TARGETS[t])
        if r > min(W0.in_features, W0.out_features):
            raise ValueError(f"rank r={r} is larger than {t} ({W0.out_features} x "
                             f"{W0.in_features}) allows: at most {min(W0.weight.shape)}")
    model.requires_grad_(False)  # W0 and everything else stay as pretrained
    for i in range(model.config.n_layer):
        for t in targets:
            name = f"transformer.h.{i}.{TARGETS[t]}"
            layer = LoRALinear(model.get_submodule(name), r, alpha, dropout)
            model.set_submodule(name, layer.train(model.training))  # new modules start in train()
    return model


def lora_layers(model: GPT) -> dict[str, LoRALinear]:
    """The model's LoRA layers by module name (e.g. 'transformer.h.0.attn.q'), merged or not."""
    return getattr(model, "lora_merged", None) or {
        name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def settings(model: GPT) -> dict:
    """targets, r, alpha and dropout of the model's LoRA layers."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers: call lora.apply (or lora.load) first")
    first = next(iter(layers.values()))
    adapted = {name.split(".", 3)[3] for name in layers}  # 'attn.q', ...
    return dict(targets=[t for t, path in TARGETS.items() if path in adapted], r=first.r,
                alpha=first.alpha, dropout=first.dropout.p)


def describe(model: GPT) -> str:
    """One line: the LoRA settings and the trainable share, e.g. 393,216 (0.11%) for the paper's
    gpt2-medium r=4 on q,v: 2 x (24 layers x 2 matrices) x 1024 x 4 (Sec. 5.1)."""
    s, layers = settings(model), lora_layers(model)
    trainable = sum(layer.A.numel() + layer.B.numel() for layer in layers.values())
    total = model.num_params() + (trainable if getattr(model, "lora_merged", None) else 0)
    return (f"LoRA r={s['r']} alpha={s['alpha']:g} on {','.join(s['targets'])} "
            f"({len(layers)} matrices): {trainable:,} trainable parameters, "
            f"{100 * trainable / total:.2f}% of {total:,}")


# --- merge and unmerge (Sec. 4.1, "No Additional Inference Latency") ---------------------------

@torch.no_grad()
def merge(model: GPT) -> GPT:
    """W <- W0 + (alpha/r) B A in every LoRA layer, and the plain nn.Linear goes back in its place,
    so the forward pass is exactly the base model's. The LoRA layers wait in model.lora_merged."""
    if getattr(model, "lora_merged", None):
        raise ValueError("LoRA is already merged into this model; merging again would add B A twice")
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers to merge")
    for name, layer in layers.items():
        layer.base.weight += layer.delta_weight().to(layer.base.weight)
        model.set_submodule(name, layer.base)
    model.lora_merged = layers
    return model


@torch.no_grad()
def unmerge(model: GPT) -> GPT:
    """Undo merge: W0 <- W - (alpha/r) B A, and the LoRA layers go back in. To switch tasks,
    unmerge, load the next adapter, merge again (Sec. 4.1)."""
    layers = getattr(model, "lora_merged", None)
    if not layers:
        raise ValueError("nothing to unmerge: LoRA is not merged into this model")
    for name, layer in layers.items():
        layer.to(layer.base.weight.device)  # follow the model if it moved since merge
        layer.base.weight -= layer.delta_weight().to(layer.base.weight)
        layer.train(model.training)
        model.set_submodule(name, layer)
    model.lora_merged = None
    return model


# --- adapter-only checkpoints: A and B, a few MB instead of the whole model --------------------

FORMAT, FORMAT_VERSION = "lora-gpt2", 1


def _base_shape(model: GPT) -> dict:
    c = model.config
    return dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
                block_size=c.block_size)


def adapter_metadata(model: GPT, method: str, **settings) -> dict:
    """What an adapter file records besides its tensors (safetensors metadata: strings only)."""
    return {"format": FORMAT, "format_version": str(FORMAT_VERSION), "method": method,
            "base_model": model.name_or_path or "", "base_shape": json.dumps(_base_shape(model)),
            **{k: json.dumps(v) for k, v in settings.items()}}


def read_adapter_metadata(path: str, method: str, model: GPT) -> dict:
    """The settings stored by save(), after checking the file is a `method` adapter for model."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such adapter file: {path}")
    meta = load_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an adapter file saved by this project (lora.save or "
                         "adapter.save)")
    if meta.get("method") != method:
        raise ValueError(f"{path} holds a {meta.get('method')!r} adapter, not a {method!r} one; "
                         f"load it with {meta.get('method')}.load")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {meta['format_version']}; this code reads "
                         f"up to {FORMAT_VERSION}: update the code")
    if json.loads(meta["base_shape"]) != _base_shape(model):
        raise ValueError(f"{path} was trained on base model '{meta['base_model']}' "
                         f"{meta['base_shape']}, but this model is {json.dumps(_base_shape(model))}"
                         f"; load the adapter onto its own base model")
    known = {"format", "format_version", "method", "base_model", "base_shape"}
    return {k: json.loads(v) for k, v in meta.items() if k not in known}


def copy_tensors(path: str, params: dict):
    """Copy a file's tensors into params (name -> tensor), strictly: same names, same shapes."""
    tensors = load_tensors(path)
    problems = tensor_mismatch(tensors, params)
    if problems:
        raise ValueError(f"{path} does not fit this model: {problems}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])


def save_adapter_file(model: GPT, path: str, tensors: dict, metadata: dict):
    """Write the adapter atomically and print its size next to the full model's."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_tensors(path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
    n = sum(t.numel() for t in tensors.values())
    ours = {id(t) for t in tensors.values()}
    full = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in ours)
    print(f"saved {path}: {_size(os.path.getsize(path))} ({n:,} parameters) "
          f"instead of {_size(full)} for the full model")


def _size(n_bytes: float) -> str:
    for unit, scale, digits in (("GB", 1e9, 2), ("MB", 1e6, 1), ("kB", 1e3, 1)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.{digits}f} {unit}"
    return f"{n_bytes:.0f} B"


def _lora_params(model: GPT) -> dict:
    return {f"{name}.{p}": getattr(layer, p) for name, layer in lora_layers(model).items()
            for p in "AB"}


def save(model: GPT, path: str):
    """Save only A and B (e.g. 'transformer.h.0.attn.q.A') with the settings in the metadata."""
    metadata = adapter_metadata(model, "lora", **settings(model))
    save_adapter_file(model, path, _lora_params(model), metadata)


def load(model: GPT, path: str) -> dict:
    """Load an adapter saved by save(): applies LoRA with the file's settings if the model has
    none yet, checks the file against the model, copies A and B in. Returns the settings."""
    s = read_adapter_metadata(path, "lora", model)
    if getattr(model, "lora_merged", None):
        raise ValueError("LoRA is merged into this model: lora.unmerge it before loading another "
                         "adapter")
    if not lora_layers(model):
        apply(model, s["targets"], s["r"], s["alpha"], s["dropout"])
    have = settings(model)
    if [have[k] for k in ("targets", "r", "alpha")] != [s[k] for k in ("targets", "r", "alpha")]:
        raise ValueError(f"{path} adapts {','.join(s['targets'])} with r={s['r']}, "
                         f"alpha={s['alpha']}, but this model's LoRA layers are on "
                         f"{','.join(have['targets'])} with r={have['r']}, alpha={have['alpha']}")
    copy_tensors(path, _lora_params(model))
    return s


# --- PEFT interop: the adapter format of Hugging Face's ecosystem ------------------------------
# PEFT adapts GPT-2's own modules: q, k, v share one fused c_attn (C -> 3C), and every module is
# a Conv1D (fan_in_fan_out). lora_A / lora_B weights have nn.Linear's (out, in) layout.

_PEFT_MODULES = {"o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"}  # q,k,v: attn.c_attn
_PEFT_KEY = re.compile(r"base_model\.model\.transformer\.h\.(\d+)\."
                       r"(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])\.weight")


def export_peft(model: GPT, directory: str):
    """Write adapter_config.json + adapter_model.safetensors that peft.PeftModel loads onto
    transformers' GPT2LMHeadModel with the same outputs as ours.

    Adapting q and v inside the fused c_attn is exact with rank 2r: A = [A_q; A_v] stacked, and
    B = [[B_q, 0], [0, 0], [0, B_v]] block-diagonal (the k rows are zero), so B A = [B_q A_q; 0;
    B_v A_v]. alpha doubles with the rank to keep alpha/r. Other modules are padded to the same
    rank with zeros (which add nothing to B A), so one r and lora_alpha describe the whole file.
    """
    s, layers = settings(model), lora_layers(model)
    C, r = model.config.n_embd, s["r"]
    fused = [t for t in "qkv" if t in s["targets"]]
    R = max(1, len(fused)) * r
    tensors = {}
    for i in range(model.config.n_layer):
        prefix = f"base_model.model.transformer.h.{i}."
        if fused:
            parts = [layers[f"transformer.h.{i}.{TARGETS[t]}"] for t in fused]
            B = torch.zeros(3 * C, R, dtype=parts[0].B.dtype)
            for j, (t, layer) in enumerate(zip(fused, parts)):
                row = "qkv".index(t) * C
                B[row:row + C, j * r:(j + 1) * r] = layer.B.detach().cpu()
            tensors[prefix + "attn.c_attn.lora_A.weight"] = torch.cat([p.A.detach().cpu()
                                                                       for p in parts])
            tensors[prefix + "attn.c_attn.lora_B.weight"] = B
        for t in [t for t in s["targets"] if t in _PEFT_MODULES]:
            layer = layers[f"transformer.h.{i}.{TARGETS[t]}"]
            tensors[prefix + f"{_PEFT_MODULES[t]}.lora_A.weight"] = F.pad(layer.A.detach().cpu(),
                                                                          (0, 0, 0, R - r))
            tensors[prefix + f"{_PEFT_MODULES[t]}.lora_B.weight"] = F.pad(layer.B.detach().cpu(),
                                                                          (0, R - r))
    alpha = s["alpha"] * R / r
    base = model.name_or_path or ""
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": f"openai-community/{base}" if base in PRESETS else base,
        "r": R, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": s["dropout"], "fan_in_fan_out": True, "bias": "none",
        "target_modules": (["c_attn"] if fused else []) + [_PEFT_MODULES[t] for t in s["targets"]
                                                            if t in _PEFT_MODULES],
        "inference_mode": True,
    }
    os.makedirs(directory, exist_ok=True)
    save_tensors(os.path.join(directory, "adapter_model.safetensors"), tensors, {"format": "pt"})
    write_atomic(os.path.join(directory, "adapter_config.json"), json.dumps(config, indent=2))


# PEFT options that change what the adapter computes beyond W0 + scaling B A; refused on import.
_PEFT_UNSUPPORTED = ("use_dora", "lora_bias", "modules_to_save", "layer_replication",
                     "trainable_token_indices", "alora_invocation_tokens", "target_parameters")


def import_peft(model: GPT, directory: str) -> GPT:
    """Load a PEFT LoRA adapter for GPT-2 (on c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) into our
    model with the same outputs: c_attn's update B A splits by rows into q, k, v, each keeping the
    whole A. Per-module ranks and scalings (rank_pattern, alpha_pattern, use_rslora) are brought to
    one r by zero padding and one alpha by folding each module's scaling into its B."""
    config_file = os.path.join(directory, "adapter_config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{directory} holds no adapter_config.json (not a PEFT adapter)")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_file}: peft_type {config.get('peft_type')!r}, expected 'LORA'")
    bad = [k for k in _PEFT_UNSUPPORTED if config.get(k)]
    bad += [f"bias={config['bias']!r}"] if config.get("bias", "none") != "none" else []
    if bad:
        raise ValueError(f"{config_file} uses {', '.join(bad)}, which plain LoRA does not cover")
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if os.path.isfile(os.path.join(directory, name)):
            tensors = load_tensors(os.path.join(directory, name))
            break
    else:
        raise FileNotFoundError(f"{directory} holds no adapter_model.safetensors or .bin")

    factors, unknown = {}, []  # (layer, module) -> {"A": ..., "B": ...}
    for key, t in tensors.items():
        m = _PEFT_KEY.fullmatch(key)
        if m is None or int(m[1]) >= model.config.n_layer:
            unknown.append(key)
        else:
            factors.setdefault((int(m[1]), m[2]), {})[m[3]] = t.float()
    if unknown or not factors:
        raise ValueError(f"{directory}: cannot map {unknown[:4] or 'no tensors'} onto GPT-2's "
                         "c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj")

    def scaling(module: str, r: int) -> float:  # as PEFT computes it, per module
        alpha = config.get("lora_alpha", 8)
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        return alpha / (math.sqrt(r) if config.get("use_rslora") else r)

    R = max(f["A"].shape[0] for f in factors.values())
    first = next(iter(factors))
    s = scaling(f"transformer.h.{first[0]}.{first[1]}", factors[first]["A"].shape[0])
    targets = set()
    for (_, module) in factors:
        targets |= set("qkv") if module == "attn.c_attn" else {
            t for t, m in _PEFT_MODULES.items() if m == module}
    apply(model, sorted(targets), r=R, alpha=s * R, dropout=config.get("lora_dropout", 0.0))
    C = model.config.n_embd
    with torch.no_grad():
        for (i, module), f in factors.items():
            A, B, r = f["A"], f["B"], f["A"].shape[0]
            B = B * (scaling(f"transformer.h.{i}.{module}", r) / s)  # this module's own scaling
            A, B = F.pad(A, (0, 0, 0, R - r)), F.pad(B, (0, R - r))
            if module == "attn.c_attn":
                pieces = {t: B[j * C:(j + 1) * C] for j, t in enumerate("qkv")}
            else:
                pieces = {t: B for t, m in _PEFT_MODULES.items() if m == module}
            for t, B_t in pieces.items():
                layer = model.get_submodule(f"transformer.h.{i}.{TARGETS[t]}")
                layer.A.copy_(A)
                layer.B.copy_(B_t)
    return model
