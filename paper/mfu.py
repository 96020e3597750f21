"""What a LoRA step costs, and how close a run comes to the device's limit. The paper's Sec. 4.2
("Practical Benefits"): "a 25% speedup during training on GPT-3 175B compared to full fine-tuning
as we do not need to calculate the gradient for the vast majority of the parameters". Here that
saving is counted, and a run's speed reported as model FLOPs utilization (MFU), as nanoGPT and
PaLM (Appendix B) report it: the FLOPs a training step needs over the time it takes, over the
device's peak:

    MFU = step_flops(...) / seconds per step / peak(device, dtype)

step_flops counts every matrix product a step of *this* model runs, forward and backward, with the
backward LoRA really runs: a frozen W0 gets no weight gradient (its input's gradient is still
needed, to reach the A and B below it), so a LoRA step costs about two forward passes where full
fine-tuning costs three; and the LM head runs only at the loss positions (train.token_loss). A
multiply-add is 2 FLOPs. Left out: layer norms, GELU, softmax, the embeddings' lookups and the
optimizer (a few percent). tests/test_mfu.py holds the count equal to torch's own FlopCounterMode
on real steps of LoRA, full fine-tuning and both adapters.

The peak: for NVIDIA GPUs, the dense (no sparsity) tensor-core figure of the data sheet for the
dtype autocast uses (fp32 without TF32: torch's default for matrix products); on a CPU (or Apple's
MPS), the speed of a large fp32 matrix product measured here, once per process: what this machine
reaches on the operation the model spends its time in, so a CPU's MFU says how well the rest keeps
up with it.
"""

import functools
import time

import torch
import torch.nn as nn

import lora
from paper.adapter import Adapter, WithAdapter

# Dense FLOP/s by GPU (a fragment of torch.cuda.get_device_name, the first that matches) and
# autocast dtype, from NVIDIA's data sheets (H200, H100, A100, L4, A10, T4, V100, GeForce RTX 4090
# and 3090): tensor cores without sparsity; fp32 is the plain CUDA-core figure (no TF32).
GPU_PEAKS = {
    "H200 NVL": {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12},
}
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


# --- the FLOPs a training step needs -------------------------------------------------------------


def _linear(layer: nn.Linear, n: int, grad_in: bool) -> tuple[int, bool]:
    """(FLOPs, whether its output needs a gradient) of a Linear layer on n tokens: 2 n d_in
    d_out forward; the same for its input's gradient where the input needs one, and for its
    weight's where it trains."""
    f = 2 * n * layer.in_features * layer.out_features
    trains = layer.weight.requires_grad
    return f * (1 + grad_in + trains), grad_in or trains or (layer.bias is not None and
                                                             layer.bias.requires_grad)


def _projection(module: nn.Module, n: int, grad_in: bool) -> tuple[int, bool]:
    """A projection of the model as it is: a plain Linear, a LoRALinear (W0 beside A and B: A's
    and B's products forward, their weights' gradients, and the gradients into them), or a
    module followed by an adapter (paper/adapter.py)."""
    if isinstance(module, WithAdapter):
        flops, grad = _projection(module.module, n, grad_in)
        more, grad = _adapter(module.adapter, n, grad)
        return flops + more, grad
    if isinstance(module, lora.LoRALinear):
        flops, _ = _linear(module.base, n, grad_in)
        down, up = 2 * n * module.r * module.base.in_features, 2 * n * module.r * \
            module.base.out_features
        # x -> A: forward, A's gradient, and x's where it needs one; A x -> B: forward, B's
        # gradient, and A x's (A trains)
        flops += down * (2 + grad_in) + up * 3
        if isinstance(module, lora.DoRALinear):  # W0 x once more, with its input's gradient,
            d_in, d_out = module.base.in_features, module.base.out_features  # and B A for the
            flops += 2 * n * d_in * d_out * (1 + grad_in) + 2 * d_out * module.r * d_in  # norm
        return flops, True
    return _linear(module, n, grad_in)


def _adapter(adapter: Adapter, n: int, grad_in: bool) -> tuple[int, bool]:
    """An adapter on n tokens: x + up(act(down(LN(x)))), its layers trained."""
    grad = grad_in or (adapter.ln is not None and adapter.ln.weight.requires_grad)
    down, grad = _linear(adapter.down, n, grad)
    up, grad = _linear(adapter.up, n, grad)
    return down + up, grad


def step_flops(model, batch: int, length: int, positions: int) -> int:
    """The FLOPs of one forward and backward pass of model (model.py's GPT, with LoRA, adapters
    or every weight trainable) on `batch` sequences of `length` tokens (padding included: it is
    computed), with the loss at `positions` of them.

    Which gradients the backward pass computes follows autograd: a weight's where it trains, an
    input's where anything before it trains. Attention's two products, Q K^T and the weights
    times V, cost 4 batch length^2 d forward (all of the square, though causal: SDPA computes it
    so, and PaLM and nanoGPT count it so), and 2 batch length^2 d for each of dQ, dK, dV and the
    attention weights' gradient that is needed."""
    config, n = model.config, batch * length
    square = 2 * batch * length * length * config.n_embd  # one of attention's products
    wte = model.transformer.wte.weight.requires_grad
    grad = wte or model.transformer.wpe.weight.requires_grad  # the residual stream's
    total = 0
    for block in model.transformer.h:
        adapter_after = block.adapter if isinstance(block, WithAdapter) else None
        block = block.module if adapter_after is not None else block
        into = grad or block.ln_1.weight.requires_grad
        attn = block.attn
        q, k, v = (_projection(getattr(attn, name), n, into) for name in "qkv")
        total += q[0] + k[0] + v[0] + 2 * square  # the projections; Q K^T and weights x V
        total += square * (q[1] + k[1] + v[1] + (q[1] or k[1]))  # dQ, dK, dV, d(weights)
        o = _projection(attn.o, n, q[1] or k[1] or v[1])
        grad = grad or o[1]
        into = grad or block.ln_2.weight.requires_grad
        fc = _projection(block.mlp.fc, n, into)
        proj = _projection(block.mlp.proj, n, fc[1])
        total += o[0] + fc[0] + proj[0]
        grad = grad or proj[1]
        if adapter_after is not None:  # Adapter^L, on the block's output
            more, grad = _adapter(adapter_after, n, grad)
            total += more
    into = grad or model.transformer.ln_f.weight.requires_grad
    head = 2 * positions * config.n_embd * config.vocab_size  # only where the loss is
    return total + head * (1 + into + wte)


def batch_flops(model, examples: list) -> int:
    """step_flops of one batch of (token ids, prompt length) examples, as data/task.collate pads
    it: to its longest input, the loss at each target token and the final <|endoftext|>."""
    length = max(len(tokens) for tokens, _ in examples) - 1
    positions = sum(len(tokens) - prompt for tokens, prompt in examples)
    return step_flops(model, len(examples), length, positions)


# --- the device's peak ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def measured_peak(device_type: str, dtype: torch.dtype = torch.float32,
                  size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of matrix products of size x size in dtype on this device (a CPU's cores, as torch's
    threads use them; MPS), timed for about `seconds` after one untimed product. Once per
    process and dtype."""
    device = torch.device(device_type)
    g = torch.Generator().manual_seed(0)  # (not torch's own: a resumed run's RNG stays as saved)
    a, b = (torch.randn(size, size, generator=g).to(device, dtype) for _ in range(2))

    def sync():
        if device.type == "mps":
            torch.mps.synchronize()
    a @ b
    sync()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < 2:
        a @ b
        sync()
        count += 1
    return 2 * size ** 3 * count / elapsed


def peak(device: torch.device, amp_dtype: torch.dtype | None) -> tuple[float | None, str]:
    """The device's peak FLOP/s for the dtype the run computes in, and where the figure comes
    from; None where it is not known (a GPU not in GPU_PEAKS, bf16 on one without it)."""
    dtype = DTYPES.get(amp_dtype, "fp32")
    if device.type != "cuda":  # (bf16 and fp16 at 512: a CPU without bf16 instructions computes
        value = (measured_peak(device.type) if amp_dtype is None  # them far slower)
                 else measured_peak(device.type, amp_dtype, 512))
        return value, f"{device.type}: {'a' if dtype == 'bf16' else 'an'} {dtype} matrix product " \
                      "measured here"
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in GPU_PEAKS.items():
        if fragment in name:
            return peaks.get(dtype), f"{name}, {dtype}: NVIDIA's data sheet"
    return None, f"{name}: not in paper/mfu.py's GPU_PEAKS"
