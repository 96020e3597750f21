"""Where a run runs and how fast: the device (--device), mixed precision (--dtype: the autocast
dtype, fp16's GradScaler in train.py), torch.compile (--compile), and the memory free for a
search. train.py, sample.py, reproduce.py and bench share them.

Mixed precision runs where it is tested: on CUDA (bf16 by default) and on the CPU (--dtype bf16 or
fp16: PyTorch's CPU autocast, fp16 with a GradScaler; `auto` stays fp32 there, the faster on a CPU
without bf16 instructions). On Apple's MPS everything runs in fp32: no test has run autocast
there. Under autocast the weights stay fp32 (LoRA's A and B, DoRA's m: the master weights the
optimizer updates); the matrix products run in the autocast dtype, the loss and softmax in fp32.
"""

import torch

from plumbing.errors import UserError


def pick_device(name: str) -> torch.device:
    """--device: auto (cuda, else mps on an Apple GPU, else cpu), cpu, cuda, cuda:N, mps; refused
    when not usable here."""
    if name == "auto":
        name = ("cuda" if torch.cuda.is_available() else
                "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or "
                        "mps") from None
    if device.type not in ("cuda", "mps", "cpu"):
        raise UserError(f"--device {name}: only cpu, cuda and mps are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}, but this torch ({torch.__version__}) sees no CUDA "
                        "GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}, but this torch ({torch.__version__}) sees no Apple "
                        "GPU (MPS); use --device cpu")
    return device


def amp_dtype(device: torch.device, dtype: str, what: str,
              auto: torch.dtype | None = torch.bfloat16):
    """--dtype: the autocast dtype, or None for fp32. 'auto' is `auto` on CUDA, fp32 elsewhere;
    bf16 / fp16 run on CUDA and the CPU, and are refused on MPS ("there {what} runs in fp32"):
    autocast and fp16's GradScaler are used only where they are tested."""
    if device.type == "mps" and dtype in ("bf16", "fp16"):
        raise UserError(f"--dtype {dtype}: on MPS {what} runs in fp32, where it is tested (drop "
                        "--dtype)")
    if device.type != "cuda" and dtype == "auto":
        return None
    return {"auto": auto, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[dtype]


def precision(dtype: torch.dtype | None) -> str:
    """What a run computes in, as its log and config.json say it."""
    return {None: "fp32", torch.bfloat16: "bf16 autocast (weights in fp32)",
            torch.float16: "fp16 autocast (weights in fp32, loss scaling)"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision where dtype is set, a no-op (fp32) where it is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors: the GPU's free memory, or the memory Linux says is available;
    None where that is unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


# --compile cuda-graphs: CUDA graphs replay one recorded shape each, so the sequence length is
# rounded up to a multiple of 16 and the number of loss positions to a multiple of 128 (E2E's
# batches then need a few dozen graphs).
CUDA_GRAPH_SHAPES = (16, 128)


def compiled(loss_fn, mode: str | None):
    """loss_fn as --compile asks (None: eager; "default"; "cuda-graphs": torch.compile's
    reduce-overhead mode), and the shape multiples its batches need (train.device_batch)."""
    if mode is None:
        return loss_fn, (1, 1)
    if mode == "cuda-graphs":
        return torch.compile(loss_fn, dynamic=True, mode="reduce-overhead"), CUDA_GRAPH_SHAPES
    return torch.compile(loss_fn, dynamic=True), (1, 1)
