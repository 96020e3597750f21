"""LoRA adapters in Hugging Face PEFT's format, both ways, with the same outputs. Not a section
of the paper: its Sec. 4.1 promise that a task is a small file (A and B) is kept here in the format
the ecosystem reads, so an adapter trained here loads in PEFT, and one of PEFT's loads here.

PEFT adapts GPT-2's own modules: q, k, v share one fused c_attn (C -> 3C), and every module is a
Conv1D (fan_in_fan_out). On disk: adapter_config.json + adapter_model.safetensors, with keys like
base_model.model.transformer.h.0.attn.c_attn.lora_A.weight in nn.Linear's (out, in) layout.

    peft_interop.export_peft(model, "peft_adapter/")   # for peft.PeftModel.from_pretrained
    peft_interop.import_peft(GPT.from_pretrained("gpt2-medium"), "peft_adapter/")

(Not named peft.py: that would shadow the peft package itself.)
"""

import json
import math
import os
import re

import torch
import torch.nn.functional as F

import lora
from model import GPT, PRESETS
from plumbing import checkpoint

_MODULES = {"o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"}  # q,k,v: attn.c_attn
_KEY = re.compile(r"base_model\.model\.transformer\.h\.(\d+)\."
                  r"(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\."
                  r"(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)")
_PART = {"lora_A.weight": "A", "lora_B.weight": "B", "lora_magnitude_vector": "m"}


def export_peft(model: GPT, directory: str):
    """Write adapter_config.json + adapter_model.safetensors that peft.PeftModel loads onto
    transformers' GPT2LMHeadModel with the same outputs as ours.

    Adapting q and v inside the fused c_attn is exact with rank 2r: A = [A_q; A_v] stacked, and
    B = [[B_q, 0], [0, 0], [0, B_v]] block-diagonal (the k rows are zero), so B A = [B_q A_q; 0;
    B_v A_v]. lora_alpha is the layers' scaling times that rank (rsLoRA's too). Other modules are
    padded to the same rank with zeros (which add nothing to B A), so one r and lora_alpha
    describe the whole file. The descendants: DoRA's m goes along (use_dora; on c_attn the rows
    of a matrix without LoRA keep ||W0||, which leaves them as they are); a PiSSA adapter goes
    as PEFT's own conversion writes it, a LoRA of rank 2r on the pretrained W0 (A = [A; A0],
    B = [B, -B0]: s (B A - B0 A0) is all it changed). That is what ours computes, not what PEFT's
    PiSSA on c_attn would: PEFT splits the fused 3d x d matrix by one SVD, we each d x d matrix
    by its own (docs/variants.md). QLoRA's (W0 in NF4) is the same file, for PEFT over
    bitsandbytes' 4-bit GPT-2 (load_in_4bit, nf4); not QPiSSA's, whose NF4 W0 is a residual
    that no PEFT file can name.
    """
    s, layers = lora.settings(model), lora.lora_layers(model)
    if s["quantize"] and s["init"] == "pissa":
        raise ValueError("a PiSSA adapter trained over NF4 (QPiSSA) adapts the NF4 of W0's "
                         "residual, not of the pretrained W0 PEFT would quantize: no PEFT file "
                         "holds it; decode it here (sample.py)")
    C = model.config.n_embd
    factors = {name: _factors(layer) for name, layer in layers.items()}
    r = next(iter(factors.values()))[0].shape[0]  # (PiSSA: 2r)
    fused = [t for t in "qkv" if t in s["targets"]]
    R = max(1, len(fused)) * r
    tensors = {}
    for i in range(model.config.n_layer):
        prefix = f"base_model.model.transformer.h.{i}."
        if fused:
            names = [f"transformer.h.{i}.{lora.TARGETS[t]}" for t in fused]
            B = torch.zeros(3 * C, R, dtype=factors[names[0]][1].dtype)
            for j, (t, name) in enumerate(zip(fused, names)):
                row = "qkv".index(t) * C
                B[row:row + C, j * r:(j + 1) * r] = factors[name][1]
            tensors[prefix + "attn.c_attn.lora_A.weight"] = torch.cat([factors[n][0]
                                                                       for n in names])
            tensors[prefix + "attn.c_attn.lora_B.weight"] = B
            if s["dora"]:  # each row's magnitude: m where DoRA adapts it, else ||W0||
                tensors[prefix + "attn.c_attn.lora_magnitude_vector"] = torch.cat([
                    _magnitude(model, i, t) for t in "qkv"])
        for t in [t for t in s["targets"] if t in _MODULES]:
            name = f"transformer.h.{i}.{lora.TARGETS[t]}"
            A, B = factors[name]
            tensors[prefix + f"{_MODULES[t]}.lora_A.weight"] = F.pad(A, (0, 0, 0, R - r))
            tensors[prefix + f"{_MODULES[t]}.lora_B.weight"] = F.pad(B, (0, R - r))
            if s["dora"]:
                tensors[prefix + f"{_MODULES[t]}.lora_magnitude_vector"] = _magnitude(model, i, t)
    alpha = next(iter(layers.values())).scaling * R
    base = model.name_or_path or ""
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": f"openai-community/{base}" if base in PRESETS else base,
        "r": R, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": s["dropout"], "fan_in_fan_out": True, "bias": "none",
        "target_modules": (["c_attn"] if fused else []) + [_MODULES[t] for t in s["targets"]
                                                            if t in _MODULES],
        "use_dora": s["dora"], "inference_mode": True,
    }
    os.makedirs(directory, exist_ok=True)
    checkpoint.save_tensors(os.path.join(directory, "adapter_model.safetensors"),
                            {k: _stored(v).cpu().contiguous() for k, v in tensors.items()},
                            {"format": "pt"})
    checkpoint.write_atomic(os.path.join(directory, "adapter_config.json"),
                            json.dumps(config, indent=2))


def _stored(t: torch.Tensor) -> torch.Tensor:
    """A tensor as the file holds it: fp32 (A, B and m train in fp32 whatever the compute dtype),
    or float64 from a float64 model, whose numbers fp32 would round."""
    return t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _factors(layer: lora.LoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of all a layer changes in the pretrained W0, on the CPU: its own, or PiSSA's in the
    rank-2r form of PEFT's conversion."""
    A, B = layer.A.detach().cpu(), layer.B.detach().cpu()
    if lora.variant(layer)["init"] == "pissa":
        A, B = torch.cat([A, layer.A0.cpu()]), torch.cat([B, -layer.B0.cpu()], dim=1)
    return A, B


def _magnitude(model: GPT, i: int, t: str) -> torch.Tensor:
    """DoRA's m of a matrix, or ||W0|| of each row where it has no DoRA layer."""
    module = model.get_submodule(f"transformer.h.{i}.{lora.TARGETS[t]}")
    if isinstance(module, lora.DoRALinear):
        return module.m.detach().cpu()
    return module.weight.detach().norm(dim=1).cpu()


# PEFT options that change what the adapter computes beyond W0 + scaling B A; refused on import.
_UNSUPPORTED = ("lora_bias", "modules_to_save", "layer_replication",
                "trainable_token_indices", "alora_invocation_tokens", "target_parameters")


def _read(directory: str, n_layer: int) -> tuple[dict, dict]:
    """(adapter_config.json, factors): (layer, module) -> {"A": ..., "B": ...}, checked."""
    config_file = os.path.join(directory, "adapter_config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{directory} holds no adapter_config.json (not a PEFT adapter)")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("peft_type") != "LORA":
        raise checkpoint.CheckpointError(f"{config_file}: peft_type {config.get('peft_type')!r}, "
                                         "expected 'LORA'")
    bad = [k for k in _UNSUPPORTED if config.get(k)]
    bad += [f"bias={config['bias']!r}"] if config.get("bias", "none") != "none" else []
    if bad:
        raise checkpoint.CheckpointError(f"{config_file} uses {', '.join(bad)}, which LoRA here "
                                         "does not cover")
    if str(config.get("init_lora_weights", True)).startswith(("pissa", "olora", "corda")):
        raise checkpoint.CheckpointError(
            f"{config_file}: a {config['init_lora_weights']} adapter saved as it trained, on its "
            "residual base; save it with PEFT's conversion to a LoRA on the pretrained model "
            "(save_pretrained(..., path_initial_model_for_weight_conversion=...)), then import")
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if os.path.isfile(os.path.join(directory, name)):
            tensors = checkpoint.load_tensors(os.path.join(directory, name))
            break
    else:
        raise FileNotFoundError(f"{directory} holds no adapter_model.safetensors or .bin")
    factors, unknown = {}, []
    for key, t in tensors.items():
        m = _KEY.fullmatch(key)
        if m is None or int(m[1]) >= n_layer:
            unknown.append(key)
        else:
            factors.setdefault((int(m[1]), m[2]), {})[_PART[m[3]]] = _stored(t)
    if unknown or not factors:
        raise checkpoint.CheckpointError(f"{directory}: cannot map {unknown[:4] or 'no tensors'} "
                                         "onto GPT-2's c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj")
    return config, factors


def _scaling(config: dict, module: str, r: int) -> float:
    """A module's alpha / r as PEFT computes it (alpha_pattern, rsLoRA's alpha / sqrt(r))."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return alpha / (math.sqrt(r) if config.get("use_rslora") else r)


def import_peft(model: GPT, directory: str) -> GPT:
    """Load a PEFT LoRA adapter for GPT-2 (on c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) into our
    model with the same outputs: c_attn's update B A splits by rows into q, k, v, each keeping the
    whole A. Per-module ranks and scalings (rank_pattern, alpha_pattern, use_rslora) are brought to
    one r by zero padding and one alpha by folding each module's scaling into its B."""
    config, factors = _read(directory, model.config.n_layer)
    R = max(f["A"].shape[0] for f in factors.values())
    first = next(iter(factors))
    s = _scaling(config, f"transformer.h.{first[0]}.{first[1]}", factors[first]["A"].shape[0])
    targets = set()
    for (_, module) in factors:
        targets |= set("qkv") if module == "attn.c_attn" else {
            t for t, m in _MODULES.items() if m == module}
    lora.apply(model, sorted(targets), r=R, alpha=s * R, dropout=config.get("lora_dropout", 0.0),
               dora=bool(config.get("use_dora")))
    C = model.config.n_embd
    with torch.no_grad():
        for (i, module), f in factors.items():
            A, B, r = f["A"], f["B"], f["A"].shape[0]
            B = B * (_scaling(config, f"transformer.h.{i}.{module}", r) / s)  # its own scaling
            A, B = F.pad(A, (0, 0, 0, R - r)), F.pad(B, (0, R - r))
            rows = {t: slice(j * C, (j + 1) * C) for j, t in enumerate("qkv")} if \
                module == "attn.c_attn" else {t: slice(None) for t, m in _MODULES.items()
                                              if m == module}
            for t, part in rows.items():
                layer = model.get_submodule(f"transformer.h.{i}.{lora.TARGETS[t]}")
                layer.A.copy_(A)
                layer.B.copy_(B[part])
                if "m" in f:  # DoRA's magnitude, by rows as B
                    layer.m.copy_(f["m"][part])
    return model
