"""The CUDA paths, against the CPU ones: decoding, the KV cache, mixed-precision training, the
compiled and CUDA-graph training steps, the latency timer, torchrun with NCCL. Skipped without a
CUDA GPU (CI has none); `scripts/gpu.sh a` runs this file first on a lent GPU
machine."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from model import GPT, GPTConfig, KVCache
from paper import latency
from paper.decoding import beam_search
from scripts import bench

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
CUDA = torch.device("cuda")


def test_beam_search_on_cuda_equals_cpu(tiny):
    model = GPT.from_pretrained(tiny).eval()
    prompts = torch.randint(0, model.config.vocab_size, (3, 5),
                            generator=torch.Generator().manual_seed(0))
    kwargs = dict(beam=4, length_penalty=0.9, no_repeat_ngram=2, max_new_tokens=20,
                  stop_tokens=(0,))
    cpu = beam_search(model, prompts, **kwargs)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides
    assert beam_search(model.to(CUDA), prompts.to(CUDA), **kwargs) == cpu


def test_mixed_task_batch_on_cuda_equals_each_adapter_merged(tiny, tmp_path):
    """multitask.py on the GPU: a batch whose rows use two adapters, in fp32 and under bf16
    autocast (as sample.py --dtype bf16), against each adapter merged alone."""
    import lora
    from paper import multitask
    paths = []
    for i in range(2):
        model = lora.apply(GPT.from_pretrained(tiny), "q,v", r=4)
        with torch.no_grad():
            for layer in lora.lora_layers(model).values():
                layer.B.normal_(0, 0.3, generator=torch.Generator().manual_seed(i))
        paths.append(str(tmp_path / f"task{i}.safetensors"))
        lora.save(model, paths[-1])
    idx = torch.randint(0, 50257, (4, 9), generator=torch.Generator().manual_seed(0)).to(CUDA)
    tasks = torch.tensor([0, 1, 1, 0], device=CUDA)
    mixed = GPT.from_pretrained(tiny).to(CUDA).eval()
    multitask.Adapters(mixed, paths).mix()
    torch.backends.cuda.matmul.allow_tf32 = False
    for dtype, tolerance in ((None, 1e-4), (torch.bfloat16, 5e-2)):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            multitask.route(mixed, tasks)
            got = mixed(idx).float()
            for row, t in enumerate(tasks.tolist()):
                alone = GPT.from_pretrained(tiny)
                lora.load(alone, paths[t])
                expected = lora.merge(alone).to(CUDA).eval()(idx[row:row + 1]).float()
                torch.testing.assert_close(got[row:row + 1], expected, rtol=tolerance,
                                           atol=tolerance)


def test_kv_cache_on_cuda_one_token_at_a_time_equals_full_forward(tiny):
    model = GPT.from_pretrained(tiny).to(CUDA).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 12), device=CUDA)
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config.n_layer)
        steps = [model(idx[:, t:t + 1], cache=cache) for t in range(idx.size(1))]
        cache.reorder(torch.tensor([1, 0, 1], device=CUDA))  # index_select into new storage
        again = model(idx[[1, 0, 1], -1:], cache=cache)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    assert len(cache) == 13 and again.shape == (3, 1, model.config.vocab_size)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_training_has_a_finite_falling_loss(tiny, e2e_data, gpt2_vocab, tmp_path,
                                                            dtype):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--model", tiny, "--data",
                           e2e_data, "--device", "cuda", "--dtype", dtype, "--out",
                           str(tmp_path / "run"), "--limit", "64", "--warmup", "0", "--lr", "2e-2",
                           "--max-steps", "30", "--log-interval", "1", "--label-smoothing", "0"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["event"] == "train"]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


def test_compiled_steps_compute_the_eager_loss(e2e_data, gpt2_vocab):
    # the first step's loss, before any update: the same model, the same batch, three ways
    argv = ["train", "--small", "--device", "cuda", "--steps", "1", "--warmup", "1",
            "--data", e2e_data]
    with bench.Setup(bench.parse_args(argv)) as setup:
        batch = setup.batches[0]
        losses = [bench.ours_trainer(setup, "lora", compile=mode, lora_dropout=0.0)(batch)
                  for mode in (None, "default", "cuda-graphs")]
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0], rtol=2e-2, atol=0)  # bf16 autocast


def test_latency_timer_runs_on_cuda():
    config = GPTConfig(n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    report = latency.measure(config, [(1, 16)], CUDA, trials=3, warmup=1,
                             amp_dtype=torch.bfloat16, name="tiny")
    assert "1 x 16" in latency.latency_table(report)


def logged_losses(run_dir) -> list[tuple]:
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [(r["step"], r.get("loss", r.get("dev_loss"))) for r in map(json.loads, f)
                if r["event"] in ("train", "eval")]


@pytest.mark.parametrize("nproc", [1, 2])
def test_torchrun_on_cuda_trains_the_plain_runs_losses(tiny, e2e_data, gpt2_vocab, tmp_path,
                                                        nproc):
    # NCCL comes up (one GPU per process), DDP's all-reduce on CUDA: the plain run's losses
    if torch.cuda.device_count() < nproc:
        pytest.skip(f"needs {nproc} GPUs")
    flags = ["--model", tiny, "--data", e2e_data, "--device", "cuda", "--dtype", "fp32",
             "--limit", "97", "--warmup", "0", "--lr", "1e-2", "--max-steps", "20",
             "--log-interval", "1", "--eval-interval", "5", "--dropout", "0",
             "--lora-dropout", "0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(nproc), "--"]
    for launcher, out in (([sys.executable], "plain"), (torchrun, "ddp")):
        proc = subprocess.run([*launcher, str(REPO / "train.py"), *flags, "--out",
                               str(tmp_path / out)], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    plain, ddp = logged_losses(tmp_path / "plain"), logged_losses(tmp_path / "ddp")
    assert [s for s, _ in ddp] == [s for s, _ in plain]
    for (step, a), (_, b) in zip(ddp, plain):
        assert abs(a - b) <= 1e-5 * abs(b), (step, a, b)
