"""train.py's pieces against the paper's released code (microsoft/LoRA, examples/NLG/src): the
learning rate schedule as its LambdaLR gives it, and the label-smoothed loss as its GPT2LMModel
computes it. The loop itself is tested through train.py (test_train.py)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import batch

import train
from data.e2e.prepare import collate, loss_positions
from harness import bookkeeping


@pytest.mark.fast
def test_the_schedule_is_the_released_linear_schedule_with_warmup():
    total, warmup, lr = 40, 7, 2e-4

    def released_lambda(step):  # src/optimizer.py, get_linear_schedule_with_warmup
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, released_lambda)
    for step in range(total):  # the lr each optimizer step uses, then scheduler.step()
        assert abs(optimizer.param_groups[0]["lr"] - train.lr_at(step, total, lr, warmup)) < 1e-15
        optimizer.step()
        scheduler.step()


@pytest.mark.fast
def test_the_loss_is_the_released_label_smoothed_loss(base):
    # src/model.py: (1 - e) nll + e mean(-log p) per position, summed over the reference
    # positions and divided by their number
    examples = [(batch(seed, (1, n))[0].numpy(), p) for seed, n, p in [(0, 12, 5), (1, 9, 4)]]
    inputs, targets = collate(examples)
    positions, labels = loss_positions(targets)
    eps = 0.1
    with torch.no_grad():
        ours = train.token_loss(base, inputs, positions, labels, eps) / len(labels)
        logp = F.log_softmax(base(inputs).view(-1, base.config.vocab_size), -1)
        mask = (targets.flatten() != -100).float()
        nll = -logp.gather(1, targets.flatten().clamp_min(0)[:, None]).squeeze(1)
        released = (((1 - eps) * nll + eps * -logp.mean(-1)) * mask).sum() / mask.sum()
    torch.testing.assert_close(ours, released, rtol=1e-5, atol=1e-6)


def test_padding_to_few_shapes_changes_no_loss(base):
    # --compile cuda-graphs (and scripts/bench.py's variant of it) rounds the length and the number of loss positions up: the
    # padding sits after every real token (causal attention never looks ahead) and takes no loss
    examples = [(batch(seed, (1, n))[0].numpy(), p) for seed, n, p in [(0, 12, 5), (1, 9, 4)]]
    cpu = torch.device("cpu")
    plain = train.device_batch(examples, cpu)
    padded = train.device_batch(examples, cpu, multiple=(16, 64))
    assert plain[0].shape == (2, 11) and padded[0].shape == (2, 16)
    assert len(plain[1]) == 7 + 5 and len(padded[1]) == 64
    assert (padded[2][12:] == -100).all() and torch.equal(padded[2][:12], plain[2])
    with torch.no_grad():
        a = train.token_loss(base, *plain, 0.1)
        b = train.token_loss(base, *padded, 0.1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_duration_shows_days_instead_of_wrapping_at_24_hours():
    assert bookkeeping.duration(59) == "00:00:59"
    assert bookkeeping.duration(10 * 86400 + 16 * 3600 + 57 * 60 + 16) == "10 d 16:57:16"
