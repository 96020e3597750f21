"""Tasks (data/task.py): your own context -> target data as JSONL (data/jsonl.py) through the
same train.py, sample.py and reproduce.py as E2E, and E2E behind the same interface with the
batches and the decoded inputs it had. The example task, data/toy, is what data/toy/make.py
writes, and a tiny GPT-2 learns it from scratch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_main

import reproduce
import sample
import train
from data.e2e import prepare
from data.e2e.task import E2ETask
from data.task import EOT, open_task
from paper import analysis

TOY = REPO / "data" / "toy"


@pytest.fixture(scope="module")
def vocab(gpt2_vocab):
    return gpt2_vocab


def write_task(folder: Path, train_lines, dev_lines=None, test_lines=None) -> Path:
    """A task folder from lines (objects are written as JSON, strings and bytes as they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = [{"context": "a : 1", "target": "One."}, {"context": "b : 2", "targets": ["Two."]}]
    for name, lines in (("train", train_lines), ("dev", dev_lines or good),
                        ("test", test_lines or good)):
        data = b"".join((line if isinstance(line, bytes) else
                         (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n"
                        for line in lines)
        (folder / f"{name}.jsonl").write_bytes(data)
    return folder


# --- the JSONL format ------------------------------------------------------------------------


def test_lines_sharing_a_context_are_one_input_with_all_its_targets(tmp_path, vocab):
    folder = write_task(tmp_path / "task", [
        {"context": "a : 1", "target": "One.", "id": 7},  # other keys are ignored
        {"context": " b : 2 ", "targets": ["Two.", "A two."]},
        "",  # blank lines are skipped
        {"context": "a : 1", "target": "Just one."}])
    task = open_task(str(folder))
    examples = task.examples("train")
    assert len(examples) == 4  # one per (context, target)
    enc = vocab
    tokens, prompt = examples[1]
    assert enc.decode(list(tokens[:prompt])) == "b : 2<|endoftext|>"  # stripped
    assert enc.decode(list(tokens[prompt:])) == " Two.<|endoftext|>"
    assert tokens[-1] == EOT and task.where("train", 3).endswith("train.jsonl, line 4")
    groups, source = task.eval_groups("train")
    assert groups == [("a : 1", "a : 1", ["One.", "Just one."]),
                      ("b : 2", "b : 2", ["Two.", "A two."])]
    assert source == str(folder / "train.jsonl")


@pytest.mark.parametrize("line, message", [
    ('{"context": "a", "target": "b"', "train.jsonl, line 2: not valid JSON"),
    ('["a", "b"]', 'train.jsonl, line 2: a list, not an object {"context": ..., "target": ...}'),
    ('{"target": "b"}', 'train.jsonl, line 2: no "context"'),
    ('{"context": "a"}', 'line 2: give "target" (a string) or "targets" (a list of strings)'),
    ('{"context": "a", "target": "b", "targets": ["c"]}', '"targets" (a list of strings), not both'),
    ('{"context": "a", "targets": []}', '"targets" must be a list of one or more strings'),
    ('{"context": 3, "target": "b"}', "line 2: the context is a number, not a string"),
    ('{"context": "a", "targets": ["b", null]}', "the target is null, not a string"),
    ('{"context": "a", "target": "  "}', "train.jsonl, line 2: the target is empty"),
    ('{"context": "a<|endoftext|>", "target": "b"}', "the context holds '<|endoftext|>'"),
    (b'{"context": "caf\xe9", "target": "b"}', "train.jsonl is not UTF-8 (byte 0xe9 on line 2)"),
    ('{"context": "a\\ud800b", "target": "b"}', "train.jsonl, line 2: the context holds '\\ud800' "
                                                "at character 2, half of a UTF-16 pair"),
])
def test_a_bad_line_is_one_line_naming_file_and_line_and_nothing_is_written(
        tmp_path, tiny, vocab, capsys, line, message):
    folder = write_task(tmp_path / "task", [{"context": "x", "target": "y"}, line])
    code, out, err = run_main(train.main, capsys, "--data", folder, "--model", tiny, "--device",
                              "cpu", "--out", tmp_path / "run")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("train.py: ") and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_folder_without_dev_jsonl_and_e2e_flags_are_refused(tmp_path, tiny, vocab, capsys):
    folder = write_task(tmp_path / "task", [{"context": "x", "target": "y"}])
    base = ["--model", tiny, "--device", "cpu", "--out", tmp_path / "run"]
    code, _, err = run_main(train.main, capsys, "--data", folder, *base, "--format", "official")
    assert code == 2 and "--format official is a layout of E2E's text; " in err
    (folder / "dev.jsonl").unlink()
    code, _, err = run_main(train.main, capsys, "--data", folder, *base)
    assert code == 2 and err == (f"train.py: {folder} lacks dev.jsonl (a task folder holds "
                                 "train.jsonl, dev.jsonl and, to score on, test.jsonl)\n")
    assert not (tmp_path / "run").exists()


def test_an_example_longer_than_the_model_is_refused_where_it_is(tmp_path, tiny, vocab, capsys):
    folder = write_task(tmp_path / "task", [{"context": "x", "target": "y"},
                                            {"context": "word " * 300, "target": "y"}])
    code, out, err = run_main(train.main, capsys, "--data", folder, "--model", tiny, "--device",
                              "cpu", "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1
    assert f"{folder / 'train.jsonl'}, line 2: the example has 302 tokens, more than the " \
           "model's 256 positions" in err, err
    assert not (tmp_path / "run").exists()


def test_repeated_pairs_are_kept_with_one_note_that_counts_them(tmp_path, tiny, vocab, capsys):
    line = {"context": "x", "target": "y"}
    folder = write_task(tmp_path / "task", [line, line, {"context": "x", "targets": ["y", "z"]}])
    code, out, err = run_main(train.main, capsys, "--data", folder, "--model", tiny, "--device",
                              "cpu", "--out", tmp_path / "run", "--max-steps", "1")
    assert code == 0, err
    assert out.count("note: ") == 1
    assert f"{folder / 'train.jsonl'}: 2 (context, target) pairs repeat an earlier line" in out
    assert "4 examples" in out  # kept


# --- E2E behind the same interface -----------------------------------------------------------


def test_e2e_through_the_task_gives_the_batches_and_inputs_it_had(e2e_data, vocab):
    # the layout before data/task.py, written out: prompt_tokens, then " " + reference, then EOT
    rows = prepare.read_split(os.path.join(e2e_data, "devset.csv"))[:300]
    enc = vocab
    for format in ("paper", "official"):
        before = [prepare.prompt_tokens(mr, format)
                  + enc.encode(" " + prepare.reference(ref, "dev", format)) + [EOT]
                  for mr, ref in rows]
        arrays = prepare.encode(rows, "dev", format)
        now = [arrays["tokens"][a:b].tolist() for a, b in zip(arrays["offsets"],
                                                              arrays["offsets"][1:])]
        assert now == before
        task = open_task(e2e_data, None if format == "paper" else format)
        assert isinstance(task, E2ETask) and task.format == format
        examples, direct = task.examples("dev"), prepare.load_examples("dev", e2e_data, format)
        assert np.array_equal(examples.tokens, direct.tokens)
        assert np.array_equal(examples.prompt_lengths, direct.prompt_lengths)
    # what is decoded: the MRs' prompts as evaluation.py built them before (context + EOT)
    task = open_task(e2e_data)
    groups, source = task.eval_groups("test")
    assert (groups, source) == prepare.eval_groups("test", e2e_data, "paper")
    assert [task.prompt(ctx) for _, ctx, _ in groups] == [
        enc.encode(ctx) + [EOT] for _, ctx, _ in groups]
    assert [task.prompt(mr, mr=True) for mr, _, _ in groups[:50]] == [
        prepare.prompt_tokens(mr) for mr, _, _ in groups[:50]]
    assert task.stop_tokens == (EOT, 628) and open_task(str(TOY)).stop_tokens == (EOT,)


def test_e2e_through_the_task_scores_what_it_scored(e2e_data, tiny, vocab, tmp_path):
    # evaluation.evaluate with the task against the path it replaced, written out: the MRs'
    # prompts (context + EOT), decode, the released decode's cut, the five metrics
    from data.e2e import metrics
    from harness.evaluation import Decoding, evaluate, identity
    from model import GPT
    from paper.decoding import decode
    model = GPT.from_pretrained(tiny).eval()
    search = Decoding(beam=2, max_new_tokens=8, batch_size=2)
    report = evaluate(model, task=open_task(e2e_data), split="test", limit=5,
                      stem=str(tmp_path / "p"), decoding=search, what=identity(tiny, None),
                      force=False, meteor=False, device=model.lm_head.weight.device)
    groups, _ = prepare.eval_groups("test", e2e_data, "paper")
    outputs = decode(model, [vocab.encode(ctx) + [EOT] for _, ctx, _ in groups[:5]],
                     **search.kwargs(), progress=False)
    texts = [vocab.decode(t).split("<|endoftext|>")[0].split("\n\n")[0].strip()
             for t in outputs]
    assert report["scores"] == metrics.score([refs for _, _, refs in groups[:5]], texts,
                                             meteor=False)
    rows = (tmp_path / "p.tsv").read_text().splitlines()
    assert rows[0] == "mr\toutput" and [r.split("\t")[1] for r in rows[1:]] == texts


# --- the example task, through the commands E2E uses ---------------------------------------


def test_the_toy_files_are_what_make_py_writes(tmp_path):
    copy = tmp_path / "toy"  # (make.py writes beside itself: a copy of it, elsewhere)
    copy.mkdir()
    (copy / "make.py").write_text((TOY / "make.py").read_text())
    proc = subprocess.run([sys.executable, str(copy / "make.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name, count in (("train.jsonl", 160), ("dev.jsonl", 20), ("test.jsonl", 20)):
        assert (copy / name).read_bytes() == (TOY / name).read_bytes(), name
        assert len((TOY / name).read_text().splitlines()) == count


def cli(script, *args, env=None):
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env)


def test_a_tiny_gpt2_learns_the_toy_task_and_is_scored(tmp_path, vocab, user_env, capsys):
    # train.py as make train installs it (no test packages): from scratch; then decode, score
    run = tmp_path / "run"
    proc = cli("train.py", "--data", TOY, "--model", TOY / "tiny-gpt2", "--random-init",
               "--method", "full", "--epochs", "6", "--lr", "6e-3", "--warmup", "10",
               "--label-smoothing", "0", "--device", "cpu", "--out", run, env=user_env)
    assert proc.returncode == 0, proc.stderr
    with open(run / "metrics.jsonl", encoding="utf-8") as f:
        dev = [r["dev_loss"] for r in map(json.loads, f) if r["event"] == "eval"]
    assert len(dev) == 6 and dev[-1] < dev[0] / 4, dev  # measured: 3.52 -> 0.70
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["format"] == "jsonl" and config["data_format"].startswith("jsonl: ")
    code, out, err = run_main(sample.main, capsys, "--model", run / "model", "--beam", "1",
                              "--device", "cpu", "--no-meteor")  # the run's own task: test.jsonl
    assert code == 0, err
    scores = json.loads((run / "predictions.scores.json").read_text())
    assert scores["mrs"] == 20 and scores["format"] == "jsonl"
    assert scores["scores"]["BLEU"] > 0.3, scores  # measured: 0.444 (an untrained model: 0)
    assert "| this run (test) |" in out and "paper" not in out
    rows = (run / "predictions.tsv").read_text().splitlines()
    assert rows[0] == "context\toutput" and len(rows) == 21
    code, out, err = run_main(sample.main, capsys, "--model", run / "model", "--context",
                              "city : Oslo | sky : snow | high : 3 | wind : strong",
                              "--device", "cpu")
    assert code == 0 and "degrees" in out, err


def test_sample_refuses_what_the_task_does_not_have(tmp_path, tiny, vocab, capsys):
    folder = write_task(tmp_path / "task", [{"context": "x", "target": "y"}])
    (folder / "test.jsonl").unlink()
    base = ["--model", tiny, "--data", folder, "--device", "cpu"]
    code, out, err = run_main(sample.main, capsys, *base, "--out", tmp_path / "out")
    assert code == 2 and out == "" and err == (f"sample.py: {folder} has no test split (no "
                                               "test.jsonl); decode --split dev\n")
    assert not (tmp_path / "out").exists()
    run = tmp_path / "run"  # what train.py leaves of a run on this task
    shutil.copytree(tiny, run / "model")
    (run / "config.json").write_text(json.dumps({"args": {"data": str(folder),
                                                          "format": "jsonl"}}))
    code, out, err = run_main(sample.main, capsys, "--model", run / "model", "--mr", "name[A]",
                              "--device", "cpu")
    assert code == 2 and err == ("sample.py: --mr is E2E's input (a meaning representation); "
                                 "this task (task) reads --context TEXT\n")
    code, out, err = run_main(sample.main, capsys, *base, "--context", " ")
    assert code == 2 and err == "sample.py: --context is empty\n"
    code, out, err = run_main(sample.main, capsys, *base, "--split", "dev", "--limit", "1",
                              "--beam", "1", "--max-new-tokens", "2", "--no-meteor",
                              "--out", tmp_path / "dev")
    assert code == 0, err
    assert (tmp_path / "dev" / "predictions-dev-first1.tsv").read_text().startswith(
        "context\toutput\na : 1\t")


def test_a_rank_sweep_runs_on_the_toy_task(tmp_path, tiny, vocab, capsys):
    argv = ["sweep", "--data", TOY, "--model", tiny, "--rank", "1,2", "--seeds", "1",
            "--epochs", "1", "--limit", "16", "--mrs", "3", "--beam", "2", "--max-new-tokens",
            "8", "--no-meteor", "--device", "cpu", "--out", tmp_path / "sweep"]
    code, out, err = run_main(reproduce.main, capsys, *argv)
    assert code == 0, err
    result = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert list(result["rows"]) == ["q,v r=1", "q,v r=2"]
    assert result["settings"]["task"] == str(TOY) and result["settings"]["size"] is None
    assert "paper:" not in out and "(first 3 contexts)" in out
    runs = tmp_path / "sweep" / "runs"
    decoded = runs / "lora-qv-r1-seed1" / "decode" / "epoch1-test.tsv"
    assert decoded.read_text().startswith("context\toutput\ncity : ")
    # analysis.py reads adapters, whatever they were trained on
    code, out, err = run_main(analysis.main, capsys, "similarity",
                              runs / "lora-qv-r1-seed1" / "adapter.safetensors",
                              runs / "lora-qv-r2-seed1" / "adapter.safetensors",
                              "--target", "v", "--out", tmp_path / "phi.csv")
    assert code == 0 and (tmp_path / "phi.csv").is_file(), err


# --- tokenized once: the cache ---------------------------------------------------------------


def plainly(path) -> dict:
    """The token arrays as the one-pair-at-a-time encoding lays them out (what encode_pairs did
    before it streamed and batched): the reference for the streaming, batched and cached ones."""
    from data.jsonl import read_file
    from data.task import tokenizer
    enc, sequences, prompts = tokenizer(), [], []
    for _, context, targets in read_file(str(path)):
        for target in targets:
            sequences.append(enc.encode(context) + [EOT] + enc.encode(" " + target) + [EOT])
            prompts.append(len(enc.encode(context)) + 1)
    return {"tokens": np.concatenate(sequences).astype(np.int32),
            "offsets": np.cumsum([0] + [len(s) for s in sequences]),
            "prompt_lengths": np.array(prompts)}


def test_a_cached_load_equals_a_fresh_one_and_an_edited_file_is_read_again(
        tmp_path, vocab, monkeypatch, capsys):
    from data import jsonl
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    lines = [{"context": f"k : {i % 7}", "targets": [f"Text {i}.", f"Again {i // 3}."]}
             for i in range(50)] + [{"context": "k : 0", "target": "Text 0."}]  # a repeat
    folder = write_task(tmp_path / "task", lines)
    monkeypatch.setattr(jsonl, "encode_pairs", lambda pairs: prepare.encode_pairs(pairs, 8))
    fresh = open_task(str(folder)).examples("train")  # (blocks of 8 pairs: many)
    note = "1 (context, target) pair repeat an earlier line; kept as written"
    assert note in capsys.readouterr().out
    expected = plainly(folder / "train.jsonl")
    for name, array in expected.items():
        assert np.array_equal(getattr(fresh, name), array), name
    assert len(list((tmp_path / "cache" / "tokens").glob("jsonl-train-*.npz"))) == 1

    def no_tokenizing(*args):
        raise AssertionError("tokenized again")
    monkeypatch.setattr(jsonl, "encode", no_tokenizing)
    task = open_task(str(folder))
    again = task.examples("train")
    assert note in capsys.readouterr().out  # (said again: the count is in the cache)
    assert all(np.array_equal(getattr(again, n), getattr(fresh, n)) for n in expected)
    assert task.where("train", 100) == f"{folder / 'train.jsonl'}, line 51"
    write_task(tmp_path / "task", lines[:-1] + [{"context": "k : 9", "target": "New."}])
    with pytest.raises(AssertionError, match="tokenized again"):  # its content changed
        open_task(str(folder)).examples("train")


def test_a_bad_file_is_refused_alike_each_time_and_never_cached(tmp_path, vocab, monkeypatch):
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_task(tmp_path / "task", [{"context": "x", "target": "y"},
                                            '{"context": 3, "target": "y"}'])
    messages = []
    for _ in range(2):
        with pytest.raises(prepare.DataError) as e:
            open_task(str(folder)).examples("train")
        messages.append(str(e.value))
    assert messages[0] == messages[1] and messages[0].endswith(
        "train.jsonl, line 2: the context is a number, not a string")
    assert not list((tmp_path / "cache").rglob("*.npz"))


def test_two_processes_building_one_cache_end_with_one_good_copy(tmp_path, vocab):
    # each builds (slowly: the other starts meanwhile), writes its own file, renames it in place
    folder = write_task(tmp_path / "task", [{"context": f"c{i}", "target": f"t{i}."}
                                            for i in range(200)])
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from data import files, jsonl; "
              "arrays = files.cached('jsonl-train', [sys.argv[2]], jsonl.LAYOUT, lambda: "
              "(time.sleep(1), jsonl.encode(sys.argv[2]))[1], sys.argv[3]); "
              "print(int(arrays['tokens'].sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(REPO),
                               str(folder / "train.jsonl"), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    sums = []
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        sums.append(out.strip())
    assert sums[0] == sums[1] == str(int(plainly(folder / "train.jsonl")["tokens"].sum()))
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]  # one, no .tmp left
    with np.load(next((tmp_path / "cache").iterdir())) as arrays:
        assert str(int(arrays["tokens"].sum())) == sums[0]
