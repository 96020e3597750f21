"""What merging LoRA into a bf16 or fp16 W0 loses, for docs/training.md: GPT-2 small's shape
with GPT-2's random init, LoRA r=4 on W_q and W_v whose update is 10% of each W0 (Table 7's
||Delta W|| / ||W|| is 6.91 / 61.95, 11%), the factors fp32 as train.py saves them. For W0 in
each dtype, two ways to merge:

- in W's dtype: W += (s B A).to(W.dtype), the product rounded, then the sum (what a merge that
  takes W's dtype for granted does);
- in fp32, rounded once: W = (W.float() + s B A).to(W.dtype), lora.merge's way;

and for each: the logits of the merged model against the same model unmerged in the same dtype
and against fp32, beside the unmerged model's against fp32 (max |difference| over the logits, in
units of their standard deviation: what the dtype costs before any merge), and what unmerge
gives back (max |W0' - W0| over the max |W0|).

    .venv/bin/python scripts/merge_precision.py
"""

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lora  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def with_lora(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = lora.apply(GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768)).eval(), "q,v", r=4,
                       alpha=32)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.B.normal_()
            layer.B.mul_(0.1 * layer.base.weight.norm() / layer.delta_weight().norm())
    return model


def merge_in_own_dtype(model):
    """W += (s B A) in W's dtype, then the plain layers back (as lora.merge puts them)."""
    with torch.no_grad():
        for name, layer in lora.lora_layers(model).items():
            layer.base.weight += layer.delta_weight().to(layer.base.weight)
            model.set_submodule(name, layer.base)


def spread(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().std()).item()


def main():
    idx = torch.randint(0, 50257, (4, 64), generator=torch.Generator().manual_seed(1))
    fp32 = with_lora()
    with torch.no_grad():
        reference = fp32(idx)
    print("| W0 | merge | merged vs unmerged, same dtype | merged vs fp32 | unmerged vs fp32 | "
          "unmerge: max |W0' - W0| / max |W0| |\n|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        base = copy.deepcopy(fp32)
        for layer in lora.lora_layers(base).values():
            layer.base.to(dtype)  # W0 in dtype; A and B stay fp32 (train.py's file)
        for name, module in base.named_modules():
            if isinstance(module, torch.nn.Linear) and module.weight.dtype != dtype \
                    and not isinstance(module, lora.LoRALinear) and name != "lm_head":
                module.to(dtype)
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            unmerged = base(idx)
        W0 = {n: layer.base.weight.detach().clone() for n, layer in lora.lora_layers(base).items()}
        for how in ("in W's dtype", "in fp32, rounded once"):
            model = copy.deepcopy(base)
            layers = lora.lora_layers(model)
            if how == "in W's dtype":
                merge_in_own_dtype(model)
            else:
                lora.merge(model)
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype,
                                                 enabled=dtype != torch.float32):
                merged = model(idx)
            if how == "in W's dtype":  # unmerge the same way
                with torch.no_grad():
                    for layer in layers.values():
                        layer.base.weight -= layer.delta_weight().to(layer.base.weight)
            else:
                lora.unmerge(model)
            back = max(((layers[n].base.weight.float() - w.float()).abs().max()
                        / w.float().abs().max()).item() for n, w in W0.items())
            name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
            print(f"| {name} | {how} | {spread(merged, unmerged):.2e} | "
                  f"{spread(merged, reference):.2e} | {spread(unmerged, reference):.2e} | "
                  f"{back:.2e} |")


if __name__ == "__main__":
    main()
