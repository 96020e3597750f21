"""The fast tier (make test-fast) against the mistakes it exists to catch: each mutation below is
applied to the code in turn, the tier is run, and the code is put back. Every line should read
"caught". Run it after changing the tier, or to see which of its tests guard what:

    .venv/bin/python scripts/fast_tier_mutations.py
"""

import os
import subprocess
import sys

os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MUTATIONS = [  # (file, a line of it, the line mutated, what that breaks)
    ("lora.py",
     "return self.base(x) + self.scaling * F.linear(F.linear(self.dropout(x), self.A), self.B)",
     "return self.base(x) + F.linear(F.linear(self.dropout(x), self.A), self.B)",
     "LoRA's update without alpha/r"),
    ("lora.py", "        self.scaling = alpha / r\n", "        self.scaling = alpha\n",
     "the scaling alpha instead of alpha/r"),
    ("lora.py",
     "        self.base.weight.copy_(self.base.weight.float() + self.delta_weight(torch.float32))",
     "        self.base.weight.copy_(self.base.weight.float() - self.delta_weight(torch.float32))",
     "the merge subtracts B A"),
    ("lora.py", "        return self.scaling * (self.B.to(dtype or self.B.dtype) @ self.A",
     "        return (self.B.to(dtype or self.B.dtype) @ self.A", "the merge forgets alpha/r"),
    ("data/task.py",
     "        targets[i, prompt_length - 1:len(tokens) - 1] = tokens[prompt_length:]",
     "        targets[i, prompt_length:len(tokens) - 1] = tokens[prompt_length + 1:]",
     "the loss one position late (collate)"),
    ("data/task.py", "    positions = (flat != -100).nonzero().squeeze(1)",
     "    positions = (flat != -100).nonzero().squeeze(1) + 1",
     "the loss positions shifted (loss_positions)"),
    ("paper/decoding.py",
     '        value, j = (torch.where(ends, top, float("-inf")) / (t + 1) ** length_penalty).max(1)',
     '        value, j = (torch.where(ends, top, float("-inf")) / (t + 1)).max(1)',
     "the beam search ignores the length penalty"),
    ("paper/decoding.py", "        top, index = (scores[..., None] + logp).flatten(1).topk(K)",
     "        top, index = (logp + 0 * scores[..., None]).flatten(1).topk(K)",
     "the beam search forgets the prefix's score"),
    ("lora.py", "    layer.scaling, layer.rslora = layer.alpha / math.sqrt(layer.r), True",
     "    layer.scaling, layer.rslora = layer.alpha / layer.r, True", "rsLoRA scales by alpha/r"),
    ("lora.py",
     "        scale = self.m / (W0 + self.delta_weight()).norm(dim=1).detach()",
     "        scale = self.m / (W0 + self.delta_weight()).norm(dim=1)",
     "DoRA's norm not detached (Sec. 4.3)"),
    ("lora.py", "        self.m = nn.Parameter(base.weight.detach().norm(dim=1))",
     "        self.m = nn.Parameter(base.weight.detach().norm(dim=1) * 1.01)",
     "DoRA's magnitude not starting at ||W0||"),
    ("lora.py", "    root = (S[:layer.r] / layer.scaling).sqrt()", "    root = S[:layer.r].sqrt()",
     "PiSSA's factors without 1/s"),
    ("train.py", "lr_scale\": lora_plus})\n    return", "lr_scale\": 1.0})\n    return",
     "LoRA+'s B at A's learning rate"),
    ("paper/qlora.py", "    absmax = blocks.abs().amax(dim=1)\n",
     "    absmax = blocks.abs().amax().expand(len(blocks))\n", "QLoRA's absmax per tensor"),
    ("paper/qlora.py", '    state = {"packed": codes[0::2] << 4 | codes[1::2]}',
     '    state = {"packed": codes[1::2] << 4 | codes[0::2]}', "the NF4 nibbles swapped"),
    ("paper/qlora.py", "        absmax = absmax + state[\"absmax_offset\"]",
     "        absmax = absmax", "double quantization's offset forgotten"),
    ("paper/qlora.py", "        return grad @ ctx.layer.weight.to(grad.dtype), None, None",
     "        return grad @ ctx.layer.weight.to(grad.dtype) * 0.5, None, None",
     "QLoRA's backward through the NF4 W0 wrong"),
    ("paper/qlora.py", "    values = torch.cat([-quantiles(8), torch.zeros(1, dtype=torch.float64), "
     "quantiles(9)])", "    values = torch.cat([-quantiles(9), torch.zeros(1, dtype=torch.float64), "
     "quantiles(8)])", "the NF4 table's halves swapped (8 negative values, not 7)"),
]
caught = 0
for path, old, new, what in MUTATIONS:
    src = open(path).read()
    assert src.count(old) == 1, (path, old)
    open(path, "w").write(src.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "fast", "-n", "auto",
                            "tests"], capture_output=True, text=True)
        failed = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("FAILED")]
        caught += bool(failed)
        names = ", ".join(name.split("::")[1] for name in failed[:2]) + (", ..." if
                                                                         len(failed) > 2 else "")
        print(f"{what}: " + (f"caught by {len(failed)} tests ({names})" if failed
                             else "NOT CAUGHT"), flush=True)
    finally:
        open(path, "w").write(src)
print(f"{caught} of {len(MUTATIONS)} mutations caught")
sys.exit(0 if caught == len(MUTATIONS) else 1)
