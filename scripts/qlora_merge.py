"""What each way of decoding a QLoRA adapter computes, for docs/qlora.md: GPT-2 small's shape with
GPT-2's random init, LoRA r=4 on W_q and W_v whose update is 10% of each W0 (Table 7's
||Delta W|| / ||W|| is 6.91 / 61.95, 11%), trained over W0 in NF4 (paper/qlora.py). Against the
model as it trained (LoRA unmerged over NF4, sample.py --qlora-merge nf4), the logits of:

- the update merged into the dequantized W0 (--qlora-merge dequantized, the default);
- the update merged into the full-precision W0 (--qlora-merge base);
- the merged model quantized to NF4 again (a 4-bit model to ship: NF4(deq(NF4(W0)) + s B A));
- the base alone, full precision against NF4 (what 4 bits cost before any adapter);

each as max and mean |difference| over the logits, in units of their standard deviation, and the
share of positions whose most likely token changes. Random weights are normal, as QLoRA assumes
pretrained ones are; a real checkpoint's outliers are each kept to their block of 64.

    .venv/bin/python scripts/qlora_merge.py
"""

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lora  # noqa: E402
from paper import qlora  # noqa: E402
from scripts.merge_precision import with_lora  # noqa: E402  (GPT-2 small, a 10% update)


def main():
    idx = torch.randint(0, 50257, (4, 64), generator=torch.Generator().manual_seed(1))
    full = with_lora()  # (not yet in NF4)
    trained = qlora.quantize(copy.deepcopy(full))  # QLoRA, unmerged over NF4: what trained
    ways = {
        "merged into the dequantized W0 (--qlora-merge dequantized)":
            lambda: lora.merge(qlora.dequantize(copy.deepcopy(trained))),
        "merged into the full-precision W0 (--qlora-merge base)":
            lambda: lora.merge(copy.deepcopy(full)),
        "merged, then quantized to NF4 again":
            lambda: qlora.quantize(lora.merge(qlora.dequantize(copy.deepcopy(trained)))),
    }
    with torch.no_grad():
        reference = trained(idx)
        rows = {name: (build()(idx), reference) for name, build in ways.items()}
        base = copy.deepcopy(full)
        for layer in lora.lora_layers(base).values():
            layer.B.zero_()
        rows["the base alone: full precision against NF4"] = (
            base(idx), qlora.quantize(copy.deepcopy(base))(idx))
    print("| against the QLoRA model unmerged over NF4 | max | mean | top-1 token changed |\n"
          "|---|---|---|---|")
    for name, (logits, against) in rows.items():
        diff, std = (logits - against).abs(), against.std()
        changed = (logits.argmax(-1) != against.argmax(-1)).float().mean()
        label = name if "base alone" not in name else name + " (against the NF4 base)"
        print(f"| {label} | {diff.max() / std:.2e} | {diff.mean() / std:.2e} | {changed:.1%} |")


if __name__ == "__main__":
    main()
