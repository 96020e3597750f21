"""plumbing/checkpoint.py: the resumable download of the official checkpoints (served locally: this
machine has no network). The layout conversion (model.py) and the strict checks are tested through
GPT.from_pretrained in test_model.py, and the adapter files through lora and adapter."""

import os

import pytest
import torch
from conftest import run_main

import model
from model import GPT
from plumbing import checkpoint


def test_download_resumes_after_an_interruption(file_server, tmp_path):
    server, handler = file_server
    handler.payload = os.urandom(300_000)
    handler.cut_after = 120_000
    url = f"http://127.0.0.1:{server.server_port}/openai-community/gpt2/resolve/main/x"
    dest = tmp_path / "gpt2" / "model.safetensors"
    with pytest.raises(RuntimeError, match="run again to resume"):
        checkpoint.download(url, str(dest), chunk_size=4096)
    assert not dest.exists()  # nothing half-written under the final name
    assert (tmp_path / "gpt2" / "model.safetensors.part").stat().st_size == 120_000
    checkpoint.download(url, str(dest), chunk_size=4096)
    assert dest.read_bytes() == handler.payload
    assert handler.requests == [0, 120_000]  # the second request asked only for the rest
    assert not (tmp_path / "gpt2" / "model.safetensors.part").exists()


def test_preset_download_lands_in_the_cache_dir(file_server, tmp_path, monkeypatch, hf_dir):
    # The preset's file on the "hub" here is our tiny checkpoint, so only the download is tested.
    server, handler = file_server
    handler.payload = (hf_dir / "model.safetensors").read_bytes()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    path = checkpoint.download_checkpoint("gpt2-medium")
    assert path == str(tmp_path / "cache" / "gpt2-medium" / "model.safetensors")
    assert open(path, "rb").read() == handler.payload
    assert checkpoint.download_checkpoint("gpt2-medium") == path
    assert handler.requests == [0]  # the second call used the cached file


def test_preset_without_network_says_so_and_how_to_pass_a_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("MAKELEVEL", raising=False)  # (sample.py, reproduce.py: not make's)
    with pytest.raises(RuntimeError, match="cannot download .*no network.*openai-community/gpt2 "
                       r"in a folder and pass it as --model FOLDER$"):
        GPT.from_pretrained("gpt2")
    import sample
    code, _, err = run_main(sample.main, capsys, "--model", "gpt2", "--prompt", "x", "--device",
                            "cpu")
    assert code == 2 and err.endswith("pass it as --model FOLDER\n"), err
    monkeypatch.setenv("MAKELEVEL", "1")  # started by make train: its way to pass the flag
    with pytest.raises(RuntimeError, match=r"pass it as --model FOLDER \(make train ARGS="):
        GPT.from_pretrained("gpt2")
    assert not (tmp_path / "cache").exists()  # not even an empty folder


def test_the_layout_conversion_is_its_own_inverse(base):
    state = {k: v for k, v in base.state_dict().items() if k != "lm_head.weight"}
    hf = model.ours_to_hf(state, base.config.n_layer)
    assert hf["h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out), q|k|v fused
    back = model.hf_to_ours(hf, base.config.n_layer)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_safetensors_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        checkpoint.save_tensors(str(tmp_path / "t.safetensors"), {"x": torch.zeros(2)})
    finally:
        os.umask(previous)
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
