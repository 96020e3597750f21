"""paper/mfu.py: the FLOPs a training step needs, against torch's own count (FlopCounterMode, with
attention computed by SDPA's math backend so that its products are counted too) on real steps of
train.py's loss: LoRA on the paper's and on every matrix, full fine-tuning, Adapter^H and
Adapter^L; and the peaks MFU divides by."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import lora
import train
from model import GPT, GPTConfig
from paper import adapter, mfu

CONFIG = GPTConfig(block_size=64, vocab_size=100, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def model_for(method: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    if method == "lora q,v":
        lora.apply(model, "q,v", r=4, alpha=8)
    elif method == "lora everywhere":
        lora.apply(model, "q,k,v,o,fc,proj", r=3, alpha=8)
    elif method == "dora":
        lora.apply(model, "q,v,fc", r=3, alpha=8, dora=True)
    elif method in adapter.KINDS:
        adapter.apply(model, method, r=5)
    return model


@pytest.mark.parametrize("method", ["lora q,v", "lora everywhere", "dora", "full", "houlsby",
                                    "lin"])
@pytest.mark.fast
def test_the_count_is_torchs_on_a_real_step(method):
    model = model_for(method)
    batch, length = 3, 10
    inputs = torch.randint(0, CONFIG.vocab_size, (batch, length))
    positions = torch.tensor([5, 6, 7, 15, 16, 25, 26, 27, 28])  # the loss at 9 of the 30
    labels = torch.randint(0, CONFIG.vocab_size, (len(positions),))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        train.token_loss(model, inputs, positions, labels, 0.1).backward()
    assert mfu.step_flops(model, batch, length, len(positions)) == counter.get_total_flops()


def test_a_lora_step_needs_less_than_full_fine_tuning_and_a_batch_counts_as_collate_pads_it():
    lora_step = mfu.step_flops(model_for("lora q,v"), 8, 40, 160)
    full_step = mfu.step_flops(model_for("full"), 8, 40, 160)
    assert 0.6 < lora_step / full_step < 0.75  # no weight gradient for W0: about 2/3
    examples = [(list(range(12)), 5), (list(range(7)), 3)]  # padded to 11 tokens; 7 + 4 targets
    assert mfu.batch_flops(model_for("full"), examples) == mfu.step_flops(model_for("full"), 2,
                                                                          11, 11)


def test_peaks_come_from_the_table_or_a_measurement(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    cuda = torch.device("cuda")
    assert mfu.peak(cuda, torch.bfloat16) == (756e12, "NVIDIA H100 PCIe, bf16: NVIDIA's data sheet")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert mfu.peak(cuda, None)[0] == 67e12  # (fp32: no TF32)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert mfu.peak(cuda, torch.bfloat16)[0] is None  # (no bf16 there)
    value, source = mfu.peak(torch.device("cpu"), None)
    assert value > 1e8 and source == "cpu: an fp32 matrix product measured here"
