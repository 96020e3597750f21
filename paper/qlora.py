"""QLoRA (Dettmers et al. 2023, arXiv 2305.14314, Sec. 3): LoRA over a frozen W0 kept in 4 bits.

LoRA trains A and B; W0 only ever runs forward. So QLoRA stores W0 in 4 bits and computes with it
in 32 (or 16) bits, dequantizing it in each forward pass; A and B stay as lora.py makes them:

    h = dequant(NF4(W0)) x + (alpha / r) B A x

Three ideas, in the order this file writes them (Sec. 3 of the QLoRA paper):

1. 4-bit NormalFloat (NF4): pretrained weights are close to normal, so the 16 values a 4-bit
   code names are quantiles of N(0, 1), scaled to [-1, 1], with an exact 0 (padding and zeros
   stay zero): each code stands for about as many weights as the others.
2. Blockwise absmax quantization (Sec. 2, Eq. 1): each block of 64 consecutive weights is divided
   by its largest |w|, then every weight becomes the code of the nearest NF4 value; an outlier
   coarsens only its own block. Two codes go in a byte.
3. Double quantization: the fp32 absmax of each block costs 32/64 = 0.5 bits a weight; quantizing
   the absmaxes themselves to 8 bits in blocks of 256 costs 8/64 + 32/(64 * 256) = 0.127 (the
   paper's numbers). A weight then costs 4.127 bits, against 32 in fp32: 7.75x less.

quantize(model) puts NF4 in place of every nn.Linear of GPT-2's blocks (q, k, v, o, fc, proj,
adapted or not: lora.apply first, so PiSSA's SVD sees the full-precision W0 and what is quantized
is its residual, as QPiSSA does). The embeddings, the LayerNorms and the LM head (tied to the
token embedding) stay as they are: they are not Linear layers a 4-bit matrix product replaces,
and with bitsandbytes too they stay unquantized. dequantize(model) turns each back into an
nn.Linear of the dequantized W0, into which lora.merge can fold B A (docs/qlora.md: the ways to
merge, and what each costs).

What this file is not: bitsandbytes' fused CUDA kernels, or QLoRA's paged optimizers (Sec. 3,
for memory spikes on a GPU). It equals bitsandbytes on the CPU: tests/test_qlora.py.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import lora
from model import GPT
from plumbing import checkpoint

BLOCK, BLOCK_ABSMAX = 64, 256  # weights per absmax; absmaxes per constant of the second level


def nf4_values(offset: float = 0.9677083) -> torch.Tensor:
    """The 16 NF4 values (Sec. 3, Eq. 4): quantiles of N(0, 1), divided by the largest. 8 of the
    positive half (9 quantiles, from `offset` down to the median 0.5, which is 0) and 7 of the
    negative half, sharing one exact 0. `offset` keeps the outermost quantile finite: it lies
    midway between the last quantiles of 16 and of 15 bins, 1 - (1/32 + 1/30) / 2 (bitsandbytes'
    constant; its table, which this equals, is built the same way with scipy)."""
    def quantiles(n):  # n levels from offset down to 0.5, the last (0) dropped
        return torch.special.ndtri(torch.linspace(offset, 0.5, n).double()[:-1])
    values = torch.cat([-quantiles(8), torch.zeros(1, dtype=torch.float64), quantiles(9)])
    values = values.float().sort().values
    return values / values.max()


def dynamic_values() -> torch.Tensor:
    """The 256 values of the 8-bit data type the absmaxes are quantized to (bitsandbytes'
    "dynamic" type, Dettmers 2015, arXiv 1511.04561): a sign, then for e = 0..6 the 2^e midpoints
    of [0.1, 1] cut in 2^e equal parts, scaled by 10^(e - 6), then 0 and 1. Fine steps near 0,
    coarse near 1. (The paper says "8-bit Floats"; its released code uses this type.)"""
    values = [torch.tensor([0.0, 1.0])]
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2 ** e + 1)
        middles = (edges[:-1] + edges[1:]) / 2
        values += [10 ** (e - 6) * middles, -(10 ** (e - 6)) * middles]
    return torch.cat(values).sort().values


NF4, DYNAMIC = nf4_values(), dynamic_values()
ZERO = int((NF4 == 0).nonzero())  # NF4's code of 0 (7): what an odd weight count is padded with


def quantize_blocks(x: torch.Tensor, values: torch.Tensor, block: int):
    """Blockwise absmax quantization (Eq. 1): x flattened, in blocks of `block` numbers; each
    block divided by its largest |x| (its absmax), then each number replaced by the index of the
    nearest of `values` (sorted, in [-1, 1]). Returns the codes (uint8, one per number) and the
    absmax of each block (fp32; a last, shorter block has its own)."""
    n = x.numel()
    blocks = F.pad(x.reshape(-1).float(), (0, -n % block)).reshape(-1, block)  # zeros fill it up
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)  # (a block of 0s: 0)
    midpoints = (values[:-1] + values[1:]) / 2
    codes = torch.bucketize(scaled.reshape(-1)[:n], midpoints.to(x.device))  # a tie: the lower
    return codes.to(torch.uint8), absmax


def dequantize_blocks(codes: torch.Tensor, absmax: torch.Tensor, values: torch.Tensor,
                      block: int) -> torch.Tensor:
    """Each code's value times its block's absmax (fp32, flat)."""
    n = codes.numel()
    x = F.pad(_on(values, codes.device)[codes.long()], (0, -n % block)).reshape(-1, block)
    return (x * absmax[:, None]).reshape(-1)[:n]


def quantize_nf4(W: torch.Tensor, block: int = BLOCK, double: bool = True) -> dict:
    """W in NF4: its codes two per byte (the first in the high 4 bits), and each block's absmax,
    itself quantized to 8 bits (double) around their mean, or kept in fp32."""
    codes, absmax = quantize_blocks(W, NF4, block)
    codes = F.pad(codes, (0, codes.numel() % 2), value=ZERO)
    state = {"packed": codes[0::2] << 4 | codes[1::2]}
    if double:  # Sec. 3: the absmaxes are all > 0; centred on their mean, they use both signs
        offset = absmax.mean()
        state["absmax"], state["absmax_absmax"] = quantize_blocks(absmax - offset, DYNAMIC,
                                                                  BLOCK_ABSMAX)
        state["absmax_offset"] = offset
    else:
        state["absmax"] = absmax
    return state


_TABLES = {}  # (table, device) -> the table there: not copied to the GPU at every forward pass


def _on(values: torch.Tensor, device) -> torch.Tensor:
    key = (id(values), str(device))
    if key not in _TABLES:
        _TABLES[key] = values.to(device)
    return _TABLES[key]


def dequantize_nf4(state: dict, shape, block: int = BLOCK) -> torch.Tensor:
    """The fp32 matrix a quantize_nf4() state stands for: the absmaxes first (if they are quantized
    too), then each weight's NF4 value times its block's absmax."""
    absmax = state["absmax"]
    if "absmax_offset" in state:
        absmax = dequantize_blocks(absmax, state["absmax_absmax"], DYNAMIC, BLOCK_ABSMAX)
        absmax = absmax + state["absmax_offset"]
    packed = state["packed"]
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:shape[0] * shape[1]]
    return dequantize_blocks(codes, absmax, NF4, block).reshape(shape)


class NF4Linear(nn.Module):
    """A frozen nn.Linear with its weight kept in NF4 (4.127 bits a weight); its bias stays as it
    was. Each forward pass dequantizes the weight to the compute dtype, and the backward pass
    does so again (it keeps no 32-bit W0 between the two: that is the memory QLoRA saves)."""
    quantized = "nf4"  # (what lora.py reads: a LoRA layer over this base records it)

    def __init__(self, linear: nn.Linear, block: int = BLOCK, double: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.block = linear.in_features, \
            linear.out_features, block
        state = quantize_nf4(linear.weight.detach(), block, double)
        for name, tensor in state.items():
            self.register_buffer(name, tensor)
        self.state_names = list(state)
        self.bias = linear.bias  # frozen, as every weight but A and B

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, NF4, " \
               f"block={self.block}, double quantization={'absmax_offset' in self.state_names}"

    @property
    def weight(self) -> torch.Tensor:
        """W0 as the model computes with it: dequantized, fp32 (a new tensor at each read)."""
        state = {name: getattr(self, name) for name in self.state_names}
        return dequantize_nf4(state, (self.out_features, self.in_features), self.block)

    def forward(self, x):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return _Dequantized.apply(x.to(dtype), self, None if self.bias is None
                                  else self.bias.to(dtype))


class _Dequantized(torch.autograd.Function):
    """x W^T + b with W dequantized in the forward pass and again in the backward pass, which
    needs W for the gradient of x (W0 has none: it is frozen)."""

    @staticmethod
    def forward(ctx, x, layer, bias):
        ctx.layer = layer
        return F.linear(x, layer.weight.to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.layer.weight.to(grad.dtype), None, None


def quantize(model: GPT, block: int = BLOCK, double: bool = True) -> GPT:
    """Every nn.Linear of the blocks (a LoRA layer's W0 included) in NF4; the rest as it was.
    DoRA's magnitude m starts again at the norms of the W0 it now computes with (the dequantized
    one: PEFT's QDoRA), so that the model still starts as its base."""
    for name, module in list(model.transformer.h.named_modules()):
        if type(module) is nn.Linear:
            model.transformer.h.set_submodule(name, NF4Linear(module, block, double))
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            if isinstance(layer, lora.DoRALinear):
                layer.m.copy_(layer.base.weight.norm(dim=1))
    return model


def dequantize(model: GPT) -> GPT:
    """Every NF4Linear back to an nn.Linear holding its dequantized weight (fp32): plain GPT-2
    again, with the very W0 QLoRA trained over, into which lora.merge can fold B A."""
    for name, module in list(model.transformer.h.named_modules()):
        if isinstance(module, NF4Linear):
            linear = nn.Linear(module.in_features, module.out_features, bias=False,
                               device=module.packed.device)
            linear.weight = nn.Parameter(module.weight, requires_grad=False)
            linear.bias = module.bias
            model.transformer.h.set_submodule(name, linear)
    return model


WAYS = {  # sample.py --qlora-merge: what an adapter trained over NF4 is decoded with
    "dequantized": "merged into the dequantized NF4 W0: the function it trained, at GPT-2's cost "
                   "(W in fp32)",
    "nf4": "unmerged over W0 in NF4: 4.127 bits a frozen weight, dequantized at each forward pass",
    "base": "merged into the full-precision W0 of the checkpoint: not the W0 it trained over",
}


def load(model: GPT, path: str, way: str = "dequantized", check_base: bool = True) -> dict:
    """An adapter that trained over NF4 (train.py --quantize nf4) onto the full-precision model:
    LoRA applied as the file says (PiSSA's split of the full-precision W0, as in training), W0
    quantized, A and B loaded and the fingerprint checked against that quantized base; then, by
    `way`, W0 left in NF4, dequantized, or put back in full precision. lora.merge then folds
    B A in (but over NF4). Returns the adapter's settings."""
    s = lora.read_settings(model, path, check_base=False)
    if s["quantize"] != "nf4":
        raise checkpoint.CheckpointError(f"{path} did not train over NF4 (no --quantize nf4): "
                                         "load it with lora.load")
    lora.apply(model, s["targets"], s["r"], s["alpha"], s["dropout"], rslora=s["rslora"],
               dora=s["dora"], init=s["init"])
    full = {name: m for name, m in model.transformer.h.named_modules() if type(m) is nn.Linear}
    quantize(model)
    lora.load(model, path, check_base=check_base)  # (the fingerprint of W0 as it trained)
    if way == "base":
        for name, module in full.items():
            model.transformer.h.set_submodule(name, module)
    elif way == "dequantized":
        dequantize(model)
    return s
