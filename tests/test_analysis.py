"""paper/analysis.py: the paper's Section 7 measurements, checked on cases whose answer is known."""

import errno
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_main, trained

import lora
from model import GPT
from paper import analysis


def random_A(r, k, seed):
    return torch.randn(r, k, generator=torch.Generator().manual_seed(seed), dtype=torch.double)


def test_an_adapter_is_fully_similar_to_itself():
    A = random_A(8, 64, 0)
    grid = analysis.similarity(A, A)
    assert torch.allclose(grid.diagonal(), torch.ones(8, dtype=torch.double))
    assert ((grid >= -1e-12) & (grid <= 1 + 1e-12)).all()


def test_swapping_the_adapters_transposes_the_grid():
    A, B = random_A(4, 64, 1), random_A(8, 64, 2)
    torch.testing.assert_close(analysis.similarity(A, B), analysis.similarity(B, A).T)


def test_random_subspaces_give_the_expected_similarity():
    # For independent uniformly random subspaces of dimensions i and j in R^k,
    # E ||U_i^T U_j||_F^2 = sum over the i x j pairs of E cos^2 = i j / k, so
    # E phi(i, j) = i j / (k min(i, j)) = max(i, j) / k. Gaussian A has uniform directions.
    k, draws = 128, 300
    grid = sum(analysis.similarity(random_A(4, k, 2 * n), random_A(8, k, 2 * n + 1))
               for n in range(draws)) / draws
    i = torch.arange(1, 5, dtype=torch.double)[:, None]
    j = torch.arange(1, 9, dtype=torch.double)[None, :]
    expected = torch.maximum(i, j) / k
    assert (grid - expected).abs().max() < 0.15 * expected.max()


def matrix_with_spectrum(d, k, singular_values, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.double))
    V, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.double))
    s = torch.tensor(singular_values, dtype=torch.double)
    return U[:, :len(s)] @ torch.diag(s) @ V[:, :len(s)].T, U, V


def test_amplification_of_an_update_along_ws_top_directions_is_its_scale():
    W, U, V = matrix_with_spectrum(48, 32, [10.0, 8.0, 6.0] + [0.1] * 29)
    dW = 3.0 * (U[:, :2] @ torch.diag(torch.tensor([10.0, 8.0], dtype=torch.double)) @ V[:, :2].T)
    result = analysis.amplification(W, dW, r=2)
    assert result["dW"] == pytest.approx(result["W"])  # Delta W's directions are W's top two
    assert result["factor"] == pytest.approx(3.0)  # = ||dW|| / ||dW / 3||: 1 up to the scale 3


def test_amplification_of_an_update_orthogonal_to_ws_top_directions_is_large():
    W, U, V = matrix_with_spectrum(48, 32, [10.0, 8.0, 6.0] + [0.01] * 29)
    dW = U[:, 30:32] @ V[:, 30:32].T  # along two of W's weakest directions, norm sqrt(2)
    result = analysis.amplification(W, dW, r=2)
    assert result["dW"] == pytest.approx(0.01 * 2 ** 0.5)  # W barely has these directions
    assert result["factor"] == pytest.approx(100.0)
    assert result["W"] == pytest.approx((10.0 ** 2 + 8.0 ** 2) ** 0.5)


@pytest.fixture
def two_adapters(hf_dir, tmp_path):
    for r, seed in ((2, 0), (8, 1)):
        model = trained(lora.apply(GPT.from_pretrained(str(hf_dir)), "q,v", r=r, alpha=2 * r),
                        seed=seed)
        lora.save(model, str(tmp_path / f"r{r}.safetensors"))
    return tmp_path


def run(*args):
    return subprocess.run([sys.executable, "-m", "paper.analysis", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def test_similarity_cli_writes_the_grid(two_adapters):
    out = two_adapters / "phi.csv"
    result = run("similarity", two_adapters / "r2.safetensors", two_adapters / "r8.safetensors",
                 "--target", "v", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "phi(A_r=2, A_r=8, i, j) on W_v, mean over 2 layers" in result.stdout
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows[0] == ["i\\j", *map(str, range(1, 9))] and [r[0] for r in rows[1:]] == ["1", "2"]
    values = [float(v) for row in rows[1:] for v in row[1:]]
    assert len(values) == 16 and all(0 <= v <= 1 for v in values)
    if importlib.util.find_spec("matplotlib"):
        assert (two_adapters / "phi.png").is_file()
    else:
        assert "matplotlib is not installed" in result.stdout


def test_amplification_cli_prints_table_7(two_adapters, hf_dir):
    result = run("amplification", two_adapters / "r8.safetensors", "--layer", "1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("| W_")]
    assert [line.split(" | ")[0] for line in lines] == ["| W_q", "| W_v"]
    assert all(line.split(" | ")[1] == "8" for line in lines)


def test_a_peft_adapter_reads_as_its_import(two_adapters, hf_dir, tmp_path):
    from paper import peft_interop
    model = GPT.from_pretrained(str(hf_dir))
    lora.load(model, str(two_adapters / "r2.safetensors"))
    peft_interop.export_peft(model, str(tmp_path / "peft"))
    factors, _ = analysis.read_factors(str(tmp_path / "peft"), str(hf_dir))
    ours, _ = analysis.read_factors(str(two_adapters / "r2.safetensors"))
    for (layer, target), (A, B, s) in ours.items():  # the same update B A, whatever the factors
        A2, B2, s2 = factors[(layer, target)]
        torch.testing.assert_close(s2 * B2 @ A2, s * B @ A)


def table_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("| W_")]


def test_a_peft_export_of_a_qv_adapter_reads_as_the_adapter_itself(two_adapters, hf_dir, tmp_path,
                                                                    capsys):
    # PEFT's fused c_attn holds W_q, W_k, W_v's rows: the export of a q,v adapter at r=2 is one
    # rank-4 c_attn whose W_k rows of B are zero. Read as data, that gave r=4, a W_k row of zeros
    # and W_q's amplification over the wrong rank.
    from paper import peft_interop
    native = two_adapters / "r2.safetensors"
    model = GPT.from_pretrained(str(hf_dir))
    lora.load(model, str(native))
    peft_interop.export_peft(model, str(tmp_path / "peft"))
    tables = []
    for adapter in (native, tmp_path / "peft"):
        code, out, err = run_main(analysis.main, capsys, "amplification", adapter, "--model",
                                  hf_dir)
        assert code == 0, err
        tables.append(table_rows(out))
    assert [row.split(" | ")[1] for row in tables[0]] == ["2", "2"]
    assert [row.split(" (")[0] for row in tables[0]] == ["| W_q", "| W_v"]
    assert tables[1] == tables[0]
    grids = []
    for adapter in (native, tmp_path / "peft"):
        out = tmp_path / f"phi-{len(grids)}.csv"
        code, _, err = run_main(analysis.main, capsys, "similarity", adapter,
                                two_adapters / "r8.safetensors", "--model", hf_dir, "--out", out)
        assert code == 0, err
        grids.append(out.read_text())
    assert grids[1] == grids[0]


def test_a_peft_export_of_pissa_reads_as_its_change_to_the_pretrained_w0(hf_dir, tmp_path, capsys):
    # PEFT's conversion of PiSSA: a LoRA of rank 2r on the pretrained W0 (each matrix its own
    # [A; A0] and [B, -B0]); c_attn stacks q's and v's: 4r, of which each matrix uses 2r
    from paper import peft_interop
    model = trained(lora.apply(GPT.from_pretrained(str(hf_dir)), "q,v", r=2, alpha=4,
                               init="pissa"), seed=3)
    peft_interop.export_peft(model, str(tmp_path / "peft"))
    code, out, err = run_main(analysis.main, capsys, "amplification", tmp_path / "peft",
                              "--model", hf_dir)
    assert code == 0, err
    assert [row.split(" | ")[1] for row in table_rows(out)] == ["4", "4"]
    assert [row.split(" (")[0] for row in table_rows(out)] == ["| W_q", "| W_v"]
    factors, _ = analysis.read_factors(str(tmp_path / "peft"), str(hf_dir))
    pretrained = GPT.from_pretrained(str(hf_dir))
    for (i, target), (A, B, s) in factors.items():
        name = f"transformer.h.{i}.{lora.TARGETS[target]}"
        layer = model.get_submodule(name)
        W = layer.base.weight + layer.delta_weight()  # what the trained PiSSA layer computes
        torch.testing.assert_close(s * B @ A, (W - pretrained.get_submodule(name).weight).detach(),
                                   atol=1e-5, rtol=1e-4)


def test_a_dora_adapter_is_refused_in_our_file_and_in_peft_s(hf_dir, tmp_path, capsys):
    from paper import peft_interop
    model = trained(lora.apply(GPT.from_pretrained(str(hf_dir)), "q,v", r=2, alpha=4, dora=True))
    lora.save(model, str(tmp_path / "dora.safetensors"))
    peft_interop.export_peft(model, str(tmp_path / "peft"))
    for adapter in (tmp_path / "dora.safetensors", tmp_path / "peft"):
        code, out, err = run_main(analysis.main, capsys, "amplification", adapter, "--model",
                                  hf_dir)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "is a DoRA adapter" in err and "reads plain LoRA's Delta W = s B A" in err


@pytest.mark.parametrize("field, value, kind", [("dora", "null", "true or false"),
                                               ("dora", '"false"', "true or false"),
                                               ("r", '"2"', "a whole number")])
def test_a_hand_edited_setting_of_another_type_is_one_line(two_adapters, tmp_path, capsys, field,
                                                           value, kind):
    from safetensors.torch import load_file, save_file

    from plumbing.checkpoint import load_metadata
    src = str(two_adapters / "r2.safetensors")
    meta = {**load_metadata(src), field: value}
    save_file(load_file(src), str(tmp_path / "edited.safetensors"), metadata=meta)
    code, out, err = run_main(analysis.main, capsys, "amplification",
                              tmp_path / "edited.safetensors")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"its recorded {field} is {value}, not {kind}; the file was edited or damaged" in err


def test_amplification_takes_the_target_and_layer_it_is_given(two_adapters, hf_dir, capsys):
    adapter = two_adapters / "r8.safetensors"  # (the command line, in this process)
    code, out, err = run_main(analysis.main, capsys, "amplification", adapter, "--target", "v",
                              "--layer", "0")
    assert code == 0, err
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| W_")] == \
        ["| W_v"]
    code, out, err = run_main(analysis.main, capsys, "amplification", adapter, "--target", "fc")
    assert code == 2 and err.count("\n") == 1
    assert "has no LoRA on fc (targets q,v, layers 0-1)" in err
    code, out, err = run_main(analysis.main, capsys, "amplification", adapter, "--target", "v",
                              "--layer", "-1")
    assert code == 2 and err == "analysis.py: --layer counts from 0 (the first layer), got -1\n"


def test_a_full_disk_is_one_line_and_leaves_no_half_file(two_adapters, capsys, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", full)  # the grid's CSV, written whole or not at all
    out = two_adapters / "phi.csv"
    code, _, err = run_main(analysis.main, capsys, "similarity", two_adapters / "r2.safetensors",
                            two_adapters / "r8.safetensors", "--out", out)
    assert code == 1 and err == f"analysis.py: cannot write {out} (No space left on device)\n"
    assert not out.exists() and not (two_adapters / "phi.csv.tmp").exists()


def test_a_missing_target_is_one_line(two_adapters):
    result = run("similarity", two_adapters / "r2.safetensors", two_adapters / "r8.safetensors",
                 "--target", "o", "--out", two_adapters / "x.csv")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "has no LoRA on o (targets q,v, layers 0-1)" in result.stderr


def test_adapters_of_other_shapes_and_unwritable_outputs_are_one_line(two_adapters, tmp_path,
                                                                      capsys):
    from conftest import random_gpt2
    random_gpt2(n_embd=48).save_pretrained(tmp_path / "wide")
    wide = trained(lora.apply(GPT.from_pretrained(str(tmp_path / "wide")), "q,v", r=2, alpha=4))
    lora.save(wide, str(tmp_path / "wide.safetensors"))
    cases = [
        (["similarity", two_adapters / "r2.safetensors", tmp_path / "wide.safetensors", "--out",
          tmp_path / "phi.csv"], "adapt W_q of different widths (32 and 48): they were trained "
                                 "on base models of different shapes"),
        (["amplification", two_adapters / "r2.safetensors", "--model", tmp_path / "wide"],
         "adapts 32 x 32 matrices, but W_q of"),
        (["similarity", two_adapters / "r2.safetensors", two_adapters / "r8.safetensors", "--out",
          "/proc/lora-gpt2/phi.csv"], "cannot write to /proc/lora-gpt2"),  # before the work
    ]
    for argv, fragment in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            analysis.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert stop.value.code == 2 and out == "", out
        assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "phi.csv").exists()


def test_the_shared_directions_read_as_english():
    grid = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.double)
    assert "no direction is shared (phi > 0.5)" in analysis.shared_directions(grid, 64)
    assert "the top direction is shared" in analysis.shared_directions(grid + 0.3, 64)
    assert "the top 2 directions are shared" in analysis.shared_directions(grid + 0.6, 64)


def test_run_folders_read_as_their_adapters_and_other_folders_say_what_they_are(two_adapters,
                                                                                 capsys):
    for r in (2, 8):  # a run folder as train.py leaves it (its log and its result)
        folder = two_adapters / f"run-r{r}"
        folder.mkdir()
        (two_adapters / f"r{r}.safetensors").rename(folder / "adapter.safetensors")
        (folder / "metrics.jsonl").write_text("")
    code, out, err = run_main(analysis.main, capsys, "similarity", two_adapters / "run-r2",
                              two_adapters / "run-r8", "--out", two_adapters / "phi.csv")
    assert code == 0, err
    assert "phi(A_r=2, A_r=8, i, j) on W_q, mean over 2 layers" in out
    (two_adapters / "unfinished").mkdir()
    (two_adapters / "unfinished" / "metrics.jsonl").write_text("")
    (two_adapters / "other").mkdir()
    for folder, message in (("unfinished", "is a run folder without a result yet"),
                            ("other", "is neither a run folder of train.py's "
                                      "(adapter.safetensors) nor a PEFT adapter folder")):
        code, out, err = run_main(analysis.main, capsys, "amplification", two_adapters / folder)
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_rslora_is_read_with_its_scaling_and_dora_or_pissa_refused(hf_dir, tmp_path, capsys):
    for name, variant in (("rslora", {"rslora": True}), ("dora", {"dora": True}),
                          ("pissa", {"init": "pissa"})):
        model = trained(lora.apply(GPT.from_pretrained(str(hf_dir)), "q,v", r=4, alpha=8,
                                   **variant))
        lora.save(model, str(tmp_path / f"{name}.safetensors"))
    factors, _ = analysis.read_factors(str(tmp_path / "rslora.safetensors"))
    assert {scaling for _, _, scaling in factors.values()} == {8 / 2}  # alpha / sqrt(r)
    for name in ("dora", "pissa"):
        code, out, err = run_main(analysis.main, capsys, "amplification",
                                  tmp_path / f"{name}.safetensors")
        assert code == 2 and f"is a {name.replace('dora', 'DoRA').replace('pissa', 'PiSSA')} " \
            "adapter: Section 7's analysis reads plain LoRA's" in err, err
