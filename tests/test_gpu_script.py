"""scripts/gpu.sh, the GPU measurements in two calls of a lent GPU machine, run here with SMOKE=1:
every stage at a tiny size on the CPU, so the script cannot rot while no session has a GPU."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, random_gpt2

STAGES = {"a": ["cuda-tests", "bench-train", "bench-memory", "bench-latency"],
          "b": ["bench-decode", "amp-fp16", "train", "sample", "plain", "torchrun", "compare"]}


@pytest.mark.parametrize("part", list(STAGES))  # (two tests: pytest-xdist runs them side by side)
def test_each_part_runs_every_stage_and_brings_back_at_most_8_files(part, tmp_path, e2e_data,
                                                                    released_text, gpt2_vocab):
    carry = tmp_path / "carry"  # what make gpu-carry copies, found where the tests find it
    carry.mkdir()
    for name, path in (("e2e", e2e_data), ("e2e-lora", os.environ["E2E_LORA_DIR"]),
                       ("tiktoken_cache", os.environ["TIKTOKEN_CACHE_DIR"])):
        (carry / name).symlink_to(path)
    random_gpt2(std=0.02, n_positions=256).save_pretrained(tmp_path / "tiny")
    env = {**os.environ, "SMOKE": "1", "SMOKE_MODEL": str(tmp_path / "tiny"),
           "PYTHON": sys.executable, "CARRY": str(carry)}
    out = tmp_path / part
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu.sh"), part], cwd=REPO,
                          env={**env, "OUT": str(out)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    log = (out / f"{part}.log").read_text()
    assert re.findall(r"^== (\S+): exit (\d+) after \d+ s$", log, flags=re.M) == \
        [(stage, "0") for stage in STAGES[part]], log[-3000:]
    assert len(os.listdir(out)) <= 8  # what the device tool brings back of a call
    if part == "a":
        assert sorted(os.listdir(out)) == ["a.log", "bench-latency.json", "bench-memory.json",
                                           "bench-train.json"]
    else:  # torchrun with one process (gloo here, NCCL there) against the plain run: the same
        compared = re.search(r"training loss (\S+), dev loss (\S+) .*; weights (\S+) ", log)
        assert compared and all(float(x) <= 1e-6 for x in compared.groups()), log[-2000:]


def test_the_quick_routes_timing_script_runs(tmp_path, e2e_data, gpt2_vocab):
    # scripts/quick_route.sh (docs/no-gpu.md's route, timed for BENCHMARKS.md) at a tiny size
    random_gpt2(std=0.02, n_positions=256).save_pretrained(tmp_path / "tiny")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "quick_route.sh")], cwd=REPO,
                          env={**os.environ, "SMOKE": "1", "SMOKE_MODEL": str(tmp_path / "tiny"),
                               "PYTHON": sys.executable, "E2E_DATA_DIR": e2e_data},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^== \d+ s: .* train.py --model", proc.stdout, flags=re.M)
    assert "| this run (test, first 2 MRs) |" in proc.stdout
    assert re.search(r"^== the route: \d+ s \(train \+ decode \+ score\)$", proc.stdout,
                     flags=re.M)
