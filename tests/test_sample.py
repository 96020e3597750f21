"""sample.py: the merged model it decodes with, the E2E evaluation, one input, the latency
table, and its user errors, through the real command line."""

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import types

import pytest
import torch
from conftest import REPO, assert_close, random_gpt2, run_main, signal_on_line

import lora
from model import GPT
from plumbing import rundir

# --- the command line on a tiny random GPT-2 with a LoRA adapter -----------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny GPT-2 (256 positions) and a LoRA adapter for it with non-zero B."""
    root = tmp_path_factory.mktemp("tiny_run")
    random_gpt2(n_positions=256).save_pretrained(root / "base")
    model = lora.apply(GPT.from_pretrained(str(root / "base")), "q,v", r=2, alpha=4)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.B.normal_(0, 0.3)
    lora.save(model, str(root / "run" / "adapter.safetensors"))
    return root


def test_merged_decoding_model_equals_the_unmerged_one(tiny_run):
    import sample
    args = sample.parse_args(["--adapter", str(tiny_run / "run" / "adapter.safetensors")])
    merged, kind = sample.load_model(args, torch.device("cpu"))
    assert kind == "lora"
    assert not any(isinstance(m, lora.LoRALinear) for m in merged.modules())
    assert type(merged.transformer.h[0].attn.q) is torch.nn.Linear
    unmerged = GPT.from_pretrained(str(tiny_run / "base")).eval()
    lora.load(unmerged, str(tiny_run / "run" / "adapter.safetensors"))
    idx = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(merged(idx), unmerged(idx))


def run(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "sample.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env)


@pytest.mark.fast
def test_limit_5_writes_5_predictions_and_scores(tiny_run, e2e_data, gpt2_vocab):
    adapter = tiny_run / "run" / "adapter.safetensors"
    result = run("--adapter", adapter, "--data", e2e_data, "--limit", "5", "--no-meteor",
                 "--beam", "3", "--max-new-tokens", "16", "--batch-size", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "merged LoRA" in result.stdout and "decoded 5 MRs" in result.stdout
    # with no terminal to draw a bar on, progress comes as lines (here after each of 4 MRs)
    assert re.findall(r"decoded (\d)/5 MRs in \d+ s, about \d+ s to go", result.stdout) == \
        ["1", "2", "3", "4"]
    assert "| this run (test, first 5 MRs) |" in result.stdout
    lines = (tiny_run / "run" / "predictions-first5.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "mr\toutput" and len(lines) == 6
    assert lines[1].startswith("name[Blue Spice], eatType[coffee shop], area[city centre]\t")
    report = json.loads((tiny_run / "run" / "predictions-first5.scores.json").read_text())
    assert report["mrs"] == 5 and set(report["scores"]) == {"BLEU", "NIST", "METEOR", "ROUGE_L",
                                                            "CIDEr"}
    assert report["scores"]["METEOR"] is None and report["meteor"] == "skipped (--no-meteor)"
    assert "METEOR: skipped (--no-meteor)" in result.stdout
    assert report["format"] == "paper" and report["decoding"]["dtype"] == "auto"  # fp32 here


def test_paper_and_official_formats_score_against_their_own_references(
        tiny_run, e2e_data, gpt2_vocab, released_text, tmp_path, run_here):
    adapter = tiny_run / "run" / "adapter.safetensors"
    flags = ["--data", e2e_data, "--limit", "3", "--no-meteor", "--beam", "2",
             "--max-new-tokens", "8", "--device", "cpu", "--out", tmp_path]
    paper = run_here("--adapter", adapter, *flags)
    assert paper.returncode == 0, paper.stderr
    assert "references: the paper's released test.txt" in paper.stdout
    official = run_here("--adapter", adapter, "--format", "official", *flags)
    assert official.returncode == 0, official.stderr
    assert "official text: not comparable with Table 3" in official.stdout
    reports = {name: json.loads((tmp_path / f"predictions{name}-first3.scores.json").read_text())
               for name in ("", "-official")}
    assert reports[""]["references"] == "the paper's released test.txt"
    assert reports["-official"]["references"] == "testset_w_refs.csv (as is)"
    # the same 3 MRs, read as two texts (the prompts differ, so the outputs may too)
    rows = {name: (tmp_path / f"predictions{name}-first3.tsv").read_text().splitlines()
            for name in ("", "-official")}
    assert [r.split("\t")[0] for r in rows[""]] == [r.split("\t")[0] for r in rows["-official"]]


def test_plain_install_decodes_and_scores_without_meteor(tiny_run, e2e_data, gpt2_vocab, user_env,
                                                         tmp_path):
    # requirements.txt only (no transformers, peft, pycocoevalcap) and no Java: METEOR is n/a,
    # the other four are scored, the predictions are kept
    result = run("--adapter", tiny_run / "run" / "adapter.safetensors", "--data", e2e_data,
                 "--limit", "3", "--beam", "2", "--max-new-tokens", "8", "--device", "cpu",
                 "--out", tmp_path, env=user_env)
    assert result.returncode == 0, result.stderr
    assert "METEOR: n/a (needs the pycocoevalcap package for METEOR's word lists)" in result.stdout
    assert len((tmp_path / "predictions-first3.tsv").read_text().splitlines()) == 4
    report = json.loads((tmp_path / "predictions-first3.scores.json").read_text())
    assert report["scores"]["METEOR"] is None and report["scores"]["BLEU"] is not None


def main(capsys, *args):
    import sample
    return run_main(sample.main, capsys, *args)


@pytest.fixture
def run_here(capsys):
    """run() without a new interpreter (seconds saved per call): sample.main in this process,
    answering as subprocess.run does."""
    def run(*args):
        code, out, err = main(capsys, *args)
        return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return run


def test_one_mr_and_free_text(tiny_run, gpt2_vocab, capsys):
    base = tiny_run / "base"
    code, out, err = main(capsys, "--model", base, "--mr", "name[The Eagle], eatType[pub]",
                          "--beam", "2", "--max-new-tokens", "8", "--device", "cpu")
    assert code == 0 and out.count("\n") == 1, err
    code, out, err = main(capsys, "--model", base, "--prompt", "The Eagle is",
                          "--max-new-tokens", "5", "--device", "cpu")
    assert code == 0 and out.startswith("The Eagle is"), err


@pytest.mark.parametrize("args, fragment", [
    (["--adapter", "{tmp}/missing.safetensors"], "no such adapter file"),
    (["--adapter", "{adapter}", "--model", "{tmp}/other", "--device", "cpu"],
     "was trained on base model"),
    (["--adapter", "{adapter}", "--beam", "0"], "--beam must be at least 1, got 0"),
    (["--model", "{base}", "--mr", "name The Eagle", "--device", "cpu"],
     "--mr does not parse as key[value]"),
    (["--device", "cpu"], "give --adapter"),
    (["--adapter", "{adapter}", "--split", "train"], "argument --split: invalid choice"),
])
def test_user_errors_are_one_line(tiny_run, tmp_path, capsys, args, fragment):
    random_gpt2(n_embd=48, n_positions=256).save_pretrained(tmp_path / "other")
    paths = dict(tmp=tmp_path, adapter=tiny_run / "run" / "adapter.safetensors",
                 base=tiny_run / "base")
    code, out, err = main(capsys, *(a.format(**paths) for a in args))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sample.py: ") and fragment in err, err


def test_latency_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # by default the JSON goes to a new file in runs/, said where
    code, out, err = main(capsys, "--latency", "--latency-model", "gpt2", "--grid", "1x8,2x4",
                          "--trials", "2", "--warmup-trials", "1", "--device", "cpu")
    assert code == 0, err
    assert "| 1 x 8 | 11M |" in out
    # minutes on a CPU at GPT-2 medium's shape: what it builds, then a line per cell
    lines = out.splitlines()
    assert lines[0].startswith("latency: building gpt2's shape with random weights on cpu")
    assert "2 cells x 3 forward passes of each" in lines[0]
    assert re.fullmatch(r"latency: timed 1 x 8 \(1/2\) in \d+ s, about \d+ s to go", lines[1])
    assert re.fullmatch(r"latency: timed 2 x 4 \(2/2\) in \d+ s", lines[2])
    [path] = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"latency-gpt2-cpu-\d{8}-\d{6}\.json", path.name)
    assert f"wrote {os.path.join('runs', path.name)}" in out
    report = json.loads(path.read_text())
    assert [(r["batch"], r["seq"]) for r in report["rows"]] == [(1, 8), (2, 4)]
    names = list(report["rows"][0]["ms"])
    assert names[:3] == ["base (FT)", "LoRA merged", "LoRA unmerged"]
    assert names[3].startswith("Adapter^L r=") and names[4].startswith("Adapter^H r=")
    assert all(math.isfinite(v["mean"]) and v["mean"] > 0 for v in report["rows"][0]["ms"].values())


def test_the_format_defaults_to_the_runs_own(tiny_run, e2e_data, gpt2_vocab, tmp_path,
                                             run_here):
    # an adapter beside the config.json of a run trained with --format official
    (tmp_path / "adapter.safetensors").write_bytes(
        (tiny_run / "run" / "adapter.safetensors").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"args": {"format": "official"}}))
    result = run_here("--adapter", tmp_path / "adapter.safetensors", "--data", e2e_data,
                      "--limit", "1", "--no-meteor", "--beam", "2", "--max-new-tokens", "8",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "predictions-official-first1.tsv").is_file()
    assert "decoded 1 MR (" in result.stdout


@pytest.mark.parametrize("trained, data, fragment", [
    ("paper", "toy", None),  # E2E's layout means nothing to a JSONL task: its own is taken
    ("jsonl", "e2e", "this adapter was trained on jsonl text (its run's config.json), and --data "
                     "{e2e} is E2E's: pass --format paper (or official) to decode E2E with it"),
])
def test_a_run_of_one_task_on_another_tasks_data(tiny_run, e2e_data, gpt2_vocab, tmp_path,
                                                 run_here, trained, data, fragment):
    (tmp_path / "adapter.safetensors").write_bytes(
        (tiny_run / "run" / "adapter.safetensors").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"args": {"format": trained}}))
    folder = e2e_data if data == "e2e" else REPO / "data" / "toy"
    result = run_here("--adapter", tmp_path / "adapter.safetensors", "--data", folder,
                      "--limit", "1", "--no-meteor", "--beam", "1", "--max-new-tokens", "4",
                      "--device", "cpu")
    if fragment is None:
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "predictions-first1.tsv").is_file()
    else:
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert fragment.format(e2e=e2e_data) in result.stderr
        result = run_here("--adapter", tmp_path / "adapter.safetensors", "--data", folder,
                          "--format", "paper", "--limit", "1", "--no-meteor", "--beam", "1",
                          "--max-new-tokens", "4", "--device", "cpu")
        assert result.returncode == 0, result.stderr


# --- bad input through the real command line: one line, exit 2 ---------------------------------


def adapter_with(tiny_run, tmp_path, edit_meta=None, edit_tensors=None):
    """A copy of the tiny run's adapter with its metadata or tensors changed."""
    from safetensors.torch import load_file, save_file

    from plumbing.checkpoint import load_metadata
    src = str(tiny_run / "run" / "adapter.safetensors")
    meta, tensors = load_metadata(src), load_file(src)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(tmp_path / "adapter.safetensors"), metadata=meta)
    return tmp_path / "adapter.safetensors"


def nan_in_B(tensors):
    tensors["transformer.h.1.attn.v.B"][0, 0] = float("nan")


@pytest.mark.parametrize("case, flags, message", [
    ("nan", [], "holds NaN or infinite values (transformer.h.1.attn.v.B)"),
    ("no method", [], "its metadata lacks method, so it is damaged or was not written by "
                      "train.py"),
    ("no base", [], "its metadata lacks base_model, so it is damaged or was not written by "
                    "train.py; pass --model"),
    ("other base", ["--model", "{other}"], "was trained on base model"),
    ("ok", ["--prompt", ""], "--prompt is empty"),
    ("ok", ["--prompt", "Hi", "--temperature", "1", "--top-k", "0"], "--top-k must be at least 1"),
    ("ok", ["--prompt", "Hi", "--temperature", "1", "--top-k", "-5"],
     "--top-k must be at least 1, got -5"),
    ("ok", ["--out", "{tmp}/file"], "is a file, not a folder; pick another --out"),
    ("ok", ["--out", "/proc/lora-gpt2-out"], "cannot write to /proc/lora-gpt2-out"),
])
def test_bad_input_is_one_line_with_exit_2(tiny_run, e2e_data, tmp_path, case, flags, message,
                                           run_here):
    edits = {"nan": dict(edit_tensors=nan_in_B),
             "no method": dict(edit_meta=lambda m: m.pop("method")),
             "no base": dict(edit_meta=lambda m: m.pop("base_model"))}
    adapter = adapter_with(tiny_run, tmp_path, **edits.get(case, {}))
    if case == "other base":  # the same shape, other weights
        random_gpt2(seed=1, n_positions=256).save_pretrained(tmp_path / "other")
    (tmp_path / "file").write_text("mine")
    paths = dict(tmp=tmp_path, other=tmp_path / "other")
    result = run_here("--adapter", adapter, "--data", e2e_data, "--limit", "2", "--beam", "2",
                      "--max-new-tokens", "4", "--device", "cpu", "--no-meteor",
                      *(f.format(**paths) for f in flags))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not list(tmp_path.glob("predictions*"))


def test_another_base_of_the_same_shape_loads_with_any_base(tiny_run, e2e_data, tmp_path,
                                                             run_here):
    random_gpt2(seed=1, n_positions=256).save_pretrained(tmp_path / "other")
    result = run_here("--adapter", tiny_run / "run" / "adapter.safetensors", "--model",
                      tmp_path / "other", "--any-base", "--mr", "name[The Eagle]", "--beam", "2",
                      "--max-new-tokens", "4", "--device", "cpu")
    assert result.returncode == 0, result.stderr


# --- the decode is never lost and never overwritten ----------------------------------------------


def test_earlier_predictions_are_kept_unless_force(tiny_run, e2e_data, tmp_path, run_here):
    flags = ["--adapter", tiny_run / "run" / "adapter.safetensors", "--data", e2e_data,
             "--limit", "2", "--beam", "2", "--max-new-tokens", "4", "--device", "cpu",
             "--no-meteor", "--out", tmp_path]
    assert run_here(*flags).returncode == 0
    first = (tmp_path / "predictions-first2.tsv").read_text()
    again = run_here(*flags, "--beam", "3")
    assert again.returncode == 2
    assert "predictions-first2.tsv already holds predictions; pass --force" in again.stderr
    assert (tmp_path / "predictions-first2.tsv").read_text() == first
    assert run_here(*flags, "--beam", "3", "--force").returncode == 0


def test_an_interrupted_decode_resumes_from_its_part_file(tiny_run, e2e_data, tmp_path, run_here):
    flags = ["--adapter", tiny_run / "run" / "adapter.safetensors", "--data", e2e_data,
             "--limit", "6", "--beam", "2", "--max-new-tokens", "6", "--device", "cpu",
             "--no-meteor", "--batch-size", "1"]
    assert run_here(*flags, "--out", tmp_path / "whole").returncode == 0
    whole = (tmp_path / "whole" / "predictions-first6.tsv").read_text()
    # what a decode killed after three MRs leaves: the settings, then three outputs (and a
    # fourth line cut short)
    import sample
    from harness import evaluation, sample_cli
    args = sample.parse_args([str(f) for f in flags])
    args.amp_dtype = None
    what = evaluation.identity(str(tiny_run / "base"), str(flags[1]))
    settings = evaluation.decode_settings(what, 6, "test", "paper", sample_cli.decoding(args))
    outputs = [line.split("\t")[1] for line in whole.splitlines()[1:4]]
    records = [json.dumps({"settings": settings})] + [
        json.dumps({"i": i, "output": text}) for i, text in enumerate(outputs)]
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "predictions-first6.tsv.part").write_text("\n".join(records) + '\n{"i": 3')
    other = run_here(*flags, "--out", tmp_path / "cut", "--beam", "3")
    assert other.returncode == 2
    assert ("holds an unfinished decode with other settings (or is damaged); delete it, or pass "
            "sample.py --force, to decode afresh") in other.stderr
    resumed = run_here(*flags, "--out", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 3 of 6 MRs were decoded already" in resumed.stdout
    assert "decoded 3 MRs" in resumed.stdout
    assert (tmp_path / "cut" / "predictions-first6.tsv").read_text() == whole
    assert not (tmp_path / "cut" / "predictions-first6.tsv.part").exists()


def test_no_repeat_ngram_1_decodes_no_token_twice(tiny_run, e2e_data, gpt2_vocab, tmp_path,
                                                  run_here):
    import tiktoken
    adapter = adapter_with(tiny_run, tmp_path)
    result = run_here("--adapter", adapter, "--data", e2e_data, "--limit", "1", "--beam", "2",
                      "--max-new-tokens", "8", "--no-repeat-ngram", "1", "--no-meteor",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr
    output = (tmp_path / "predictions-first1.tsv").read_text(encoding="utf-8").splitlines()[1]
    tokens = tiktoken.get_encoding("gpt2").encode(output.split("\t")[1])
    assert tokens and len(tokens) == len(set(tokens)), tokens


def test_a_prompt_longer_than_the_model_reads_is_one_line(tiny_run, gpt2_vocab, capsys):
    code, out, err = main(capsys, "--model", tiny_run / "base", "--prompt", "word " * 300,
                          "--device", "cpu")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--prompt has 301 tokens; the model reads at most 255 before it writes" in err


# --- one owner per output folder, Ctrl-C, and a line for every user error ---------------------


@pytest.mark.parametrize("args, fragment", [
    (["--model", "{base}", "--mr", "name[The Eagle]<|endoftext|>"],
     "--mr holds '<|endoftext|>', which separates the MR from the text here"),
    (["--model", "{base}", "--mr", "name[The Eagle], rating[5]"],
     "--mr has attributes E2E does not know ('rating'); use name, eatType"),
    (["--model", "{base}", "--mr", "name[], eatType[pub]"], "--mr leaves name[] empty"),
    (["--model", "{base}", "--mr", "name[The\x00Eagle]"],
     "--mr holds control characters ('\\x00')"),
    (["--model", "{base}", "--mr", "name[A], name[B]"], "--mr gives name more than once"),
    (["--model", "{base}", "--prompt", "Hi", "--mr", "name[A]"],
     "give --prompt (free text) or --mr (one MR), not both"),
    (["--model", "{base}", "--prompt", "Hi", "--top-k", "5", "--top-p", "0.9"],
     "--top-k, --top-p only act when sampling: add --temperature (0, the default, is greedy)"),
    (["--model", "{base}", "--prompt", "Hi", "--beam", "3"],
     "--beam does nothing with --prompt; drop it"),
    (["--adapter", "{adapter}", "--temperature", "0.7", "--seed", "1"],
     "--seed, --temperature do nothing with the test set; drop them"),
    (["--adapter", "{adapter}", "--grid", "1x8"], "--grid does nothing with the test set"),
    (["--latency", "--grid", "1x100000"],
     "--grid 1x100000: longer than gpt2-medium's 1024 positions"),
    (["--latency", "--trials", "0"], "--trials must be at least 1"),
    (["--latency", "--latency-out", "/proc/lora-gpt2/l.json"],
     "cannot write to /proc/lora-gpt2 (No such file or directory); pick another --latency-out"),
    (["--latency", "--adapter", "{adapter}"], "--adapter does nothing with --latency"),
    (["--model", "{adapter}", "--mr", "name[A]"],
     "adapter.safetensors is an adapter (train.py's), not a GPT-2 checkpoint: pass its base model "
     "as --model and the adapter as --adapter"),
    (["--model", "{base}", "--mr", "name[A]", "--beam", "100000"],
     "--beam 100,000 is more than the 50,257 tokens each step chooses from"),
    (["--model", "{base}", "--mr", "name[A]", "--max-new-tokens", "300"],
     "--max-new-tokens 300 after a prompt of 4 tokens is more than the model's 256 positions"),
])
def test_more_user_errors_are_one_line(tiny_run, gpt2_vocab, tmp_path, capsys, args, fragment):
    paths = dict(adapter=tiny_run / "run" / "adapter.safetensors", base=tiny_run / "base")
    code, out, err = main(capsys, *(a.format(**paths) for a in args), "--device", "cpu")
    assert code == 2 and out == "", out
    assert err.count("\n") == 1 and err.startswith("sample.py: ") and fragment in err, err


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.update(r="NaN"), "its recorded r is NaN, not a whole number"),
    (lambda m: m.update(r='"2"'), 'its recorded r is "2", not a whole number'),
    (lambda m: m.update(r="true"), "its recorded r is true, not a whole number"),
    (lambda m: m.update(alpha="true"), "its recorded alpha is true, not a number"),
    (lambda m: m.update(dora="null"), "its recorded dora is null, not true or false"),
    (lambda m: m.update(dora='"false"'), 'its recorded dora is "false", not true or false'),
    (lambda m: m.update(rslora="0"), "its recorded rslora is 0, not true or false"),
    (lambda m: m.update(init="1"), "its recorded init is 1, not a string"),
    (lambda m: m.update(targets='[1, 2]'), "its recorded targets is [1, 2], not a list of target "
                                           "names"),
    (lambda m: m.update(targets='"q,v"'), 'its recorded targets is "q,v", not a list of target'),
    (lambda m: m.update(alpha="NaN"), "its recorded settings are not valid (alpha must be > 0"),
    (lambda m: m.update(targets="q,v"), "its metadata targets='q,v' is not what lora.save / "
                                        "adapter.save write"),
    (lambda m: m.update(base_fingerprint='["a"]'), "its base_fingerprint is not a list of numbers"),
    (lambda m: m.update(base_fingerprint="[1, 2"), "its metadata base_fingerprint='[1, 2' is not"),
    (lambda m: m.update(format_version="one"), "its metadata format_version='one' is not what"),
])
def test_a_hand_edited_adapter_is_one_line(tiny_run, gpt2_vocab, tmp_path, capsys, edit,
                                           fragment):
    adapter = adapter_with(tiny_run, tmp_path, edit_meta=edit)
    code, out, err = main(capsys, "--adapter", adapter, "--mr", "name[A]", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and fragment in err, err


def test_a_search_larger_than_memory_is_refused_before_decoding(tiny_run, e2e_data, gpt2_vocab,
                                                               tmp_path, capsys):
    code, out, err = main(capsys, "--adapter", tiny_run / "run" / "adapter.safetensors", "--data",
                          e2e_data, "--beam", "50000", "--batch-size", "1000", "--device", "cpu",
                          "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(r"--beam 50,000 with --batch-size 630 needs about [\d,.]+ GB for the "
                     r"search, more than the [\d,.]+ GB free here; lower --beam or --batch-size",
                     err), err
    assert not (tmp_path / "out").exists()  # the folder made for the predictions went again


def test_an_output_folder_in_use_is_refused(tiny_run, e2e_data, tmp_path, capsys):
    with rundir.claim(str(tmp_path), "train.py", ""):
        code, out, err = main(capsys, "--adapter", tiny_run / "run" / "adapter.safetensors",
                              "--data", e2e_data, "--limit", "2", "--device", "cpu", "--out",
                              tmp_path)
    assert code == 2 and err == (f"sample.py: {tmp_path} is in use by train.py (pid "
                                 f"{os.getpid()}); wait for it to end, or write the predictions "
                                 "elsewhere with --out DIR\n")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_decoding_keeps_what_was_decoded(tiny_run, e2e_data, gpt2_vocab, tmp_path,
                                                      capsys, monkeypatch):
    from harness import evaluation
    flags = ["--adapter", tiny_run / "run" / "adapter.safetensors", "--data", e2e_data,
             "--limit", "3", "--beam", "2", "--max-new-tokens", "4", "--batch-size", "1",
             "--device", "cpu", "--no-meteor", "--out", tmp_path]
    real = evaluation.decode

    def one_then_ctrl_c(model, prompts, **kwargs):
        real(model, prompts[:1], **kwargs)  # the first MR is decoded and written
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluation, "decode", one_then_ctrl_c)
    code, out, err = main(capsys, *flags)
    part = tmp_path / "predictions-first3.tsv.part"
    assert code == 130 and err == (f"sample.py: Ctrl-C: stopped; the 1 MR decoded so far is kept "
                                   f"in {part}: run the same command again to go on from there\n")
    assert part.is_file() and not (tmp_path / rundir.LOCK).exists()
    monkeypatch.setattr(evaluation, "decode", real)
    code, out, err = main(capsys, *flags)
    assert code == 0, err
    assert "resuming: 1 of 3 MRs were decoded already" in out and "decoded 2 MRs (" in out


def test_ctrl_c_while_scoring_is_scored_by_the_same_command_without_decoding(
        tiny_run, e2e_data, gpt2_vocab, tmp_path, capsys, monkeypatch):
    from data.e2e import metrics
    from harness import evaluation
    flags = ["--adapter", tiny_run / "run" / "adapter.safetensors", "--data", e2e_data,
             "--limit", "3", "--beam", "2", "--max-new-tokens", "4", "--device", "cpu",
             "--no-meteor", "--out", tmp_path]

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(metrics, "score", ctrl_c)
    code, out, err = main(capsys, *flags)
    tsv = tmp_path / "predictions-first3.tsv"
    assert code == 130 and err == (
        f"sample.py: Ctrl-C: stopped while scoring; the predictions are saved in {tsv}: run the "
        "same command again to score them (nothing is decoded again)\n")
    predictions = tsv.read_text()
    monkeypatch.undo()
    monkeypatch.setattr(evaluation, "decode", lambda model, prompts, **kwargs: (
        [] if not prompts else pytest.fail("decoded again")))
    code, out, err = main(capsys, *flags)
    assert code == 0, err
    assert "all 3 MRs were decoded already" in out and "decoded " not in out.replace(
        "were decoded already", "")
    assert tsv.read_text() == predictions and not (tmp_path / "predictions-first3.tsv.part").exists()
    report = json.loads((tmp_path / "predictions-first3.scores.json").read_text())
    assert report["mrs"] == 3 and report["predictions"] == str(tsv)
    code, out, err = main(capsys, *flags)  # scored: a third time is refused, as before
    assert code == 2 and "already holds predictions; pass --force" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_while_decoding_says_what_was_kept(tiny_run, e2e_data, gpt2_vocab,
                                                            tmp_path, sig):
    # a scheduler's kill, a closed terminal: stopped as Ctrl-C is, exit 128 + the signal
    flags = ["--adapter", tiny_run / "run" / "adapter.safetensors", "--data", e2e_data,
             "--limit", "3", "--beam", "2", "--max-new-tokens", "4", "--batch-size", "1",
             "--device", "cpu", "--no-meteor", "--out", tmp_path]
    proc = subprocess.Popen([sys.executable, str(REPO / "sample.py"), *map(str, flags)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=signal_on_line(tmp_path / "signal", "decoded 1/3 MRs", sig))
    out, err = proc.communicate()
    part = tmp_path / "predictions-first3.tsv.part"
    assert proc.returncode == 128 + sig, err
    assert err.startswith(f"sample.py: {sig.name}: stopped; the ") and err.count("\n") == 1, err
    assert f"decoded so far are kept in {part}: run the same command again" in err \
        or f"decoded so far is kept in {part}: run the same command again" in err, err
    assert part.is_file() and not (tmp_path / rundir.LOCK).exists()


def test_a_full_disk_while_decoding_is_one_line_and_keeps_what_was_decoded(
        tiny_run, e2e_data, gpt2_vocab, tmp_path, capsys, monkeypatch):
    # the .part file's writes fail as on a full disk once one MR is in it (the real OSError)
    from harness import evaluation
    flags = ["--adapter", tiny_run / "run" / "adapter.safetensors", "--data", e2e_data,
             "--limit", "3", "--beam", "2", "--max-new-tokens", "4", "--batch-size", "1",
             "--device", "cpu", "--no-meteor", "--out", tmp_path]

    class FullDisk:
        def __init__(self, f):
            self.f, self.lines = f, 0

        def write(self, text):
            self.lines += 1
            if self.lines > 2:  # the settings line and one MR's
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)
    monkeypatch.setattr(evaluation, "open", lambda path, mode="r", *a, **k: (
        FullDisk if mode == "a" else lambda f: f)(open(path, mode, *a, **k)), raising=False)
    code, out, err = main(capsys, *flags)
    part = tmp_path / "predictions-first3.tsv.part"
    assert code == 1 and err == (
        f"sample.py: cannot write {part} (No space left on device); stopped; the 1 MR decoded "
        f"so far is kept in {part}: run the same command again to go on from there\n")
    assert not (tmp_path / rundir.LOCK).exists()
    monkeypatch.undo()  # room again: the decode goes on
    code, out, err = main(capsys, *flags)
    assert code == 0 and "resuming: 1 of 3 MRs were decoded already" in out, err


def test_the_paper_row_follows_the_models_shape_not_its_folder_name(tiny_run):
    import sample
    from data.e2e import paper_results
    from data.task import size_of
    from harness import sample_cli
    from model import GPTConfig
    with torch.device("meta"):
        medium = GPT(GPTConfig.from_preset("gpt2-medium"))  # a local copy, named anything
    assert size_of(medium.config) == "gpt2-medium"
    assert size_of(GPT.from_pretrained(str(tiny_run / "base")).config) is None
    args = sample.parse_args(["--model", str(tiny_run / "base")])
    scores = dict(BLEU=0.7, NIST=8.8, METEOR=None, ROUGE_L=0.71, CIDEr=2.5)
    args.split, args.limit, args.format = "test", 0, "paper"
    assert ("| paper: GPT-2 M (LoRA), 0.35M, test | 70.4+-.1 | 8.85+-.02 | 46.8+-.2 | "
            "71.8+-.1 | 2.53+-.02 |") in sample_cli.paper_table(
        scores, paper_results.TABLE, "gpt2-medium", "lora", args)
    assert "| paper: GPT-2 M (Adapter^H), 11.09M, test | 67.3+-.6 |" in sample_cli.paper_table(
        scores, paper_results.TABLE, "gpt2-medium", "houlsby", args)
    assert "paper" not in sample_cli.paper_table(scores, paper_results.TABLE, None, "lora",
                                                  args)


def test_a_run_still_training_is_said_to_be(tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    with rundir.claim(str(run_dir), "train.py", ""):  # (the lock train.py holds while it runs)
        code, out, err = main(capsys, "--adapter", run_dir, "--device", "cpu")
    assert code == 2 and err == (
        f"sample.py: {run_dir} is a run still training (train.py, pid {os.getpid()}): its "
        "adapter.safetensors is written when it ends (or pass an adapter-epochN.safetensors kept "
        "in it)\n")
    code, out, err = main(capsys, "--adapter", run_dir, "--device", "cpu")
    assert code == 2 and f"continue it with: python train.py --resume {run_dir}," in err
