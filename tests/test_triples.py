"""WebNLG and DART as tasks (data/triples.py) through train.py, sample.py and reproduce.py: the
examples are the released converters' lines and the decoded inputs the released decode script's
groups; Table 11's settings apply (length penalty 0.8, DART's recipe); what is decoded is scored
in both protocols, equal to the protocols built here from the released scripts' grouping; the
paper's rows print as Tables 13 and 14 print them; bad input is one line with nothing written.
The runs use small slices of the real data (../shared), written in the released files' format."""

import csv
import hashlib
import json
import subprocess
import sys

import pytest
from conftest import REPO, run_main, shared_folder
from test_dart import released_converter as dart_converter
from test_webnlg import released_converter as webnlg_converter

import reproduce
import sample
import train
from data import files as data_files
from data.dart import metrics as dart_metrics
from data.dart import paper_results as dart_paper
from data.dart import prepare as dart
from data.files import DataError
from data.scorers import mt_metrics
from data.scorers.meteor import meteor_missing
from data.task import EOT, open_task
from data.webnlg import metrics as webnlg_metrics
from data.webnlg import paper_results as webnlg_paper
from data.webnlg import prepare as webnlg
from harness.experiment import table


def released_decode(lines: list[tuple], keep=lambda line: True) -> dict:
    """microsoft/LoRA examples/NLG/src/gpt2_decode.py's refer_dict, as a function: each context
    of the converter's lines (context, completion, ...) that --filter keeps, in the order it
    first comes, with its completions."""
    refer = {}
    for line in lines:
        if keep(line):
            refer.setdefault(line[0], []).append(line[1].split("<|endoftext|>")[0].split("\n\n")[0]
                                                 .strip())
    return refer


@pytest.fixture(scope="module")
def vocab(gpt2_vocab):
    return gpt2_vocab


@pytest.fixture(scope="module")
def webnlg_slice(tmp_path_factory):
    """A WebNLG folder in the released JSON: 30 training entries, 8 dev, and the 12 test entries
    where the seen categories end and the unseen begin (971)."""
    released, folder = shared_folder("webnlg-lora"), tmp_path_factory.mktemp("webnlg")
    for split, rows in (("train", slice(0, 30)), ("dev", slice(0, 8)), ("test", slice(965, 977))):
        entries = json.loads((released / f"{split}.json").read_text(encoding="utf-8"))["entries"]
        picked = [e[str(i + 1)] for i, e in enumerate(entries)][rows]
        (folder / f"{split}.json").write_text(json.dumps(
            {"entries": [{str(i + 1): e} for i, e in enumerate(picked)]}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def dart_slice(tmp_path_factory):
    """A DART folder in the released JSON, cut from the dev set: 30 training entries, 10 dev, and
    12 test entries, the first of them twice (other texts, the same triples: one input)."""
    entries = json.loads((shared_folder("dart") / "dart-v1.1.1-full-dev.json")
                         .read_text(encoding="utf-8"))
    twin = {**entries[40], "annotations": [{"source": "x", "text": "Another text for it."}]}
    folder = tmp_path_factory.mktemp("dart")
    for split, rows in (("train", entries[:30]), ("dev", entries[30:40]),
                        ("test", entries[40:52] + [twin])):
        (folder / f"dart-v1.1.1-full-{split}.json").write_text(json.dumps(rows), encoding="utf-8")
    return folder


# --- the paper's rows, the tasks found ----------------------------------------------------------


def test_the_papers_rows_print_as_tables_13_and_14_print_them():
    # the numbers as Appendix F.1 prints them (issue 33 quotes them)
    assert webnlg_paper.TABLE.paper_row("gpt2-medium", "lora") == (
        "46.7+-.4 | 62.1+-.2 | 55.3+-.2 | .38 | .44 | .41 | .46 | .33 | .39")
    assert webnlg_paper.TABLE.paper_row("gpt2-large", "lora").startswith("48.4+-.3 | 64.0+-.3 |")
    assert dart_paper.TABLE.paper_row("gpt2-medium", "lora") == "47.1+-.2 | .39 | .46"
    assert dart_paper.TABLE.paper_row("gpt2-large", "lora") == "47.5+-.1 | .39 | .45"
    assert dart_paper.TABLE.paper_row("gpt2-medium", "full") is None  # (LoRA's rows only)
    assert webnlg_paper.TABLE.cell("METEOR_A", 0.4123, 0.0041) == ".41+-.00"
    assert webnlg_paper.TABLE.cell("BLEU_U", 0.46712, 0.00412) == "46.7+-.4"
    summary = {m: {"mean": 0.5, "std": None} for m in webnlg_paper.COLUMNS}
    row = {"trainable": 393216, "selections": {"best_test": summary}}
    for size, shown in (("gpt2-medium", True), (None, False)):
        text = table({"settings": {"command": "table14", "size": size}, "rows": {"lora": row}},
                     "best_test", webnlg_paper.TABLE)
        assert text.startswith("| Model & Method | # Trainable Parameters | BLEU U | BLEU S | "
                               "BLEU A | MET U | MET S | MET A | TER U | TER S | TER A |")
        assert ("| paper: GPT-2 M (LoRA) | 0.35M | 46.7+-.4 | 62.1+-.2 | 55.3+-.2 | .38 | .44 | "
                ".41 | .46 | .33 | .39 |" in text) == shown, text


def test_each_task_is_found_by_its_name_or_its_folder(webnlg_slice, dart_slice, monkeypatch,
                                                      tmp_path):
    monkeypatch.setenv("WEBNLG_DATA_DIR", str(webnlg_slice))
    monkeypatch.setenv("DART_DATA_DIR", str(dart_slice))
    for data, name in (("webnlg", "webnlg"), (str(webnlg_slice), "webnlg"), ("dart", "dart"),
                       (str(dart_slice), "dart"), (str(shared_folder("webnlg")), "webnlg"),
                       ("e2e", "e2e")):
        task = open_task(data)
        assert task.name == name and task.format == (name if name != "e2e" else "paper")
    assert open_task("webnlg").locate() == str(webnlg_slice)  # (the environment's folder)
    with pytest.raises(DataError, match="--format paper is a layout of E2E's text; dart is "
                                        "dart's data, which has one"):
        open_task("dart", "paper")
    # no folder, no variable, no network: one line that says what to pass
    monkeypatch.delenv("WEBNLG_DATA_DIR")
    monkeypatch.setattr(webnlg, "HERE", str(tmp_path))
    monkeypatch.setattr(webnlg, "JSON_FILES", {name: ("http://127.0.0.1:9/" + name, kind, digest)
                                               for name, (_, kind, digest) in
                                               webnlg.JSON_FILES.items()})
    with pytest.raises(DataError, match=r"cannot download .*train\.json.*set WEBNLG_DATA_DIR"):
        open_task("webnlg").locate()
    assert list(tmp_path.iterdir()) == []


def test_a_download_is_checked_by_sha256_or_by_the_id_git_gives_it(file_server, tmp_path):
    server, handler = file_server
    handler.payload = b'{"entries": []}\n'
    url = f"http://127.0.0.1:{server.server_port}/file.json"
    blob = subprocess.run(["git", "hash-object", "--stdin"], input=handler.payload,
                          capture_output=True, check=True).stdout.decode().strip()
    data_files.fetch(str(tmp_path), {"a.json": (url, "git", blob),
                                      "b.json": (url, "sha256",
                                                 hashlib.sha256(handler.payload).hexdigest())},
                      hint="")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    with pytest.raises(DataError, match=f"c.json from {url} is not the file expected .*deleted"):
        data_files.fetch(str(tmp_path), {"c.json": (url, "git", "0" * 40)}, hint="")
    assert not (tmp_path / "c.json").exists()


# --- the examples and the decoded inputs: the released scripts' -------------------------------


def test_the_examples_and_inputs_are_the_released_converters_and_decode_scripts(
        webnlg_slice, dart_slice, vocab):
    for folder, converter, name in ((webnlg_slice, webnlg_converter, "{split}.json"),
                                    (dart_slice, dart_converter,
                                     "dart-v1.1.1-full-{split}.json")):
        task = open_task(str(folder))
        for split in ("train", "dev", "test"):
            lines = converter(folder / name.format(split=split))
            examples = task.examples(split)
            assert len(examples) == len(lines)
            for i, (context, completion, *_) in enumerate(lines):
                tokens, prompt = examples[i]
                assert list(tokens) == vocab.encode(context) + [EOT] + vocab.encode(
                    " " + completion) + [EOT] and prompt == len(vocab.encode(context)) + 1
            groups, _ = task.eval_groups(split)
            assert [(c, refs) for _, c, refs in groups] == list(released_decode(lines).items())
    assert len(open_task(str(dart_slice)).eval_groups("test")[0]) == 12  # (13 entries)
    # the whole dev sets: a context two entries share, an entry with no "good" text
    for folder, converter, file in ((shared_folder("webnlg-lora"), webnlg_converter, "dev.json"),
                                    (shared_folder("dart"), dart_converter,
                                     "dart-v1.1.1-full-dev.json")):
        groups, _ = open_task(str(folder)).eval_groups("dev")
        assert [(c, refs) for _, c, refs in groups] == list(
            released_decode(converter(folder / file)).items())
    # WebNLG's subsets: what --filter seen / unseen keeps
    lines = webnlg_converter(webnlg_slice / "test.json")
    contexts, _, seen = webnlg_metrics.inputs(webnlg.read_split(str(webnlg_slice), "test"))
    rows = webnlg_metrics.subsets(seen)
    for subset, keep in (("seen", lambda line: line[2]), ("unseen", lambda line: not line[2])):
        assert [contexts[i] for i in rows[subset]] == list(released_decode(lines, keep))
    assert (len(rows["seen"]), len(rows["unseen"])) == (6, 6)


# --- a tiny GPT-2 through train.py and sample.py ------------------------------------------------


def tsv(path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def released_scores(lines: list[tuple], outputs: list[str], subsets: dict) -> dict:
    """The released protocol's scores, from the released decode's grouping (mt_metrics)."""
    references = list(released_decode(lines).values())
    protocol = mt_metrics.Protocol("released", references, outputs, subsets)
    return mt_metrics.score({"released": protocol})["released"]


def test_a_tiny_gpt2_trains_decodes_and_is_scored_on_webnlg(webnlg_slice, tiny, vocab, capsys,
                                                            meteor_env, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_main(train.main, capsys, "--data", webnlg_slice, "--model", tiny,
                              "--max-steps", "2", "--device", "cpu", "--out", run)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())["args"]
    assert config["format"] == "webnlg" and config["data"] == str(webnlg_slice)
    assert (config["weight_decay"], config["lora_dropout"], config["label_smoothing"]) == \
        (0.01, 0.1, 0.1)  # (Table 11: as E2E's)
    # decoded and scored as a plain install would: no nltk, no pyter3, no Java
    proc = subprocess.run([sys.executable, str(REPO / "sample.py"), "--adapter",
                           str(run / "adapter.safetensors"), "--beam", "2", "--max-new-tokens",
                           "6", "--device", "cpu"], capture_output=True, text=True, env=meteor_env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((run / "predictions.scores.json").read_text())
    assert report["format"] == "webnlg" and report["mrs"] == 12
    assert report["decoding"]["length_penalty"] == 0.8 and report["decoding"]["beam"] == 2
    rows = tsv(run / "predictions.tsv")
    lines = webnlg_converter(webnlg_slice / "test.json")
    assert rows[0] == ["triples", "output"]
    assert [r[0] for r in rows[1:]] == list(released_decode(lines))
    outputs = [r[1] for r in rows[1:]]
    expected = released_scores(lines, outputs, {"unseen": list(range(6, 12)),
                                                "seen": list(range(6)), "all": list(range(12))})
    assert report["scores"] == {f"{m}_{s[0].upper()}": expected[s][m] for m in
                                ("BLEU", "METEOR", "TER") for s in ("unseen", "seen", "all")}
    assert None not in report["scores"].values()  # (METEOR too, without Java)
    assert set(report["challenge"]) == {"unseen", "seen", "all"}
    assert "| | BLEU U | BLEU S | BLEU A | MET U |" in proc.stdout
    assert "| this run (test) | " in proc.stdout and "paper" not in proc.stdout  # (a tiny model)
    assert "the challenge's protocol (" in proc.stdout and "  unseen: BLEU: " in proc.stdout
    # the scoring command takes sample.py's predictions as they are, and gives the same scores
    printed = scorer("webnlg", run / "predictions.tsv", webnlg_slice, env=meteor_env)
    assert printed == {"released": mt_metrics.format_scores(
        {m: report["scores"][f"{m}_A"] for m in ("BLEU", "METEOR", "TER")}, "released"),
        "challenge": mt_metrics.format_scores(report["challenge"]["all"], "challenge")}


def scorer(task: str, outputs, data, env, *flags) -> dict:
    """python -m data.TASK.metrics OUTPUTS --data DATA: its score lines by protocol."""
    proc = subprocess.run([sys.executable, "-m", f"data.{task}.metrics", str(outputs), "--data",
                           str(data), *flags], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    printed, name = {}, None
    for line in proc.stdout.splitlines():
        if " protocol (" in line:
            name = line.split()[0]
            printed[name] = []
        elif name:
            printed[name].append(line)
    return printed


def test_dart_trains_with_its_recipe_and_scores_each_distinct_input_once(dart_slice, tiny,
                                                                         vocab, capsys, tmp_path,
                                                                         user_env):
    run = tmp_path / "run"
    code, out, err = run_main(train.main, capsys, "--data", dart_slice, "--model", tiny,
                              "--max-steps", "2", "--device", "cpu", "--out", run,
                              "--label-smoothing", "0.05")  # given: kept
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())["args"]
    assert (config["weight_decay"], config["lora_dropout"], config["label_smoothing"]) == \
        (0.0, 0.0, 0.05)
    assert "dart: Table 11's recipe for it: --weight-decay 0.0, --lora-dropout 0.0\n" in out
    code, out, err = run_main(sample.main, capsys, "--adapter", run / "adapter.safetensors",
                              "--beam", "2", "--max-new-tokens", "6", "--device", "cpu",
                              "--no-meteor")
    assert code == 0, err
    report = json.loads((run / "predictions.scores.json").read_text())
    assert report["format"] == "dart" and report["mrs"] == 12 and report["meteor"] == \
        "skipped (--no-meteor)"
    lines = dart_converter(dart_slice / "dart-v1.1.1-full-test.json")
    outputs = [r[1] for r in tsv(run / "predictions.tsv")[1:]]
    expected = released_scores(lines, outputs, {"all": list(range(12))})["all"]
    assert report["scores"]["BLEU"] == expected["BLEU"]
    assert report["scores"]["TER"] == expected["TER"]
    # DART's own protocol scores each entry: the twin entry gets its input's output
    entries = dart.read_split(str(dart_slice), "test")
    challenge = mt_metrics.Protocol("challenge", [[t for t, _ in e.lexs] for e in entries],
                                    outputs + [outputs[0]], {"all": list(range(13))},
                                    meteor_refs=8, ter_drops_empty=True)
    ours = mt_metrics.score({"challenge": challenge}, meteor=False)["challenge"]["all"]
    assert report["challenge"]["all"] == {"BLEU": ours["BLEU"], "METEOR": None,
                                          "TER": ours["TER"]}
    assert "| | BLEU | MET | TER |" in out
    # the scoring command, in a plain install (no pycocoevalcap: METEOR n/a), on sample.py's
    # predictions as they are: the same scores
    printed = scorer("dart", run / "predictions.tsv", dart_slice, user_env)
    missing = "n/a (needs the pycocoevalcap package for METEOR's word lists)"
    assert printed == {"released": mt_metrics.format_scores(report["scores"], "released", missing),
                       "challenge": mt_metrics.format_scores(report["challenge"]["all"],
                                                             "challenge", missing)}


def test_an_empty_output_scores_as_the_released_code_scores_it(webnlg_slice):
    pyter = pytest.importorskip("pyter")  # pyter3: the TER the released eval.py averages
    task = open_task(str(webnlg_slice))
    groups, _ = task.eval_groups("test")
    report = task.score("test", groups, [""] * len(groups), meteor=True)
    assert report["scores"]["BLEU_A"] == 0
    assert report["scores"]["METEOR_A"] == (None if meteor_missing() else 0)
    refs = [[mt_metrics.nltk_tokens(mt_metrics.split_nonword(r.lower())) for r in refs]
            for _, _, refs in groups]
    assert report["scores"]["TER_A"] == sum(
        min(pyter.ter([], r.split()) for r in group) for group in refs) / len(refs)


# --- reproduce.py table14 / table13 ------------------------------------------------------------


@pytest.mark.parametrize("command", ["table14", "table13"])
def test_reproduce_runs_each_table_over_seeds_and_epochs(command, webnlg_slice, dart_slice, tiny,
                                                         vocab, capsys, tmp_path):
    folder = webnlg_slice if command == "table14" else dart_slice
    out = tmp_path / command
    code, stdout, err = run_main(reproduce.main, capsys, command, "--model", tiny, "--data",
                                 folder, "--seeds", "1,2", "--epochs", "2", "--limit", "16",
                                 "--mrs", "4", "--beam", "2", "--max-new-tokens", "6",
                                 "--no-meteor", "--device", "cpu", "--out", out)
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["decoding"]["length_penalty"] == 0.8
    assert result["settings"]["task"] == command.replace("table14", "webnlg").replace(
        "table13", "dart")
    by = "BLEU_A" if command == "table14" else "BLEU"
    row = result["rows"]["lora"]["selections"]
    for name, r in result["runs"].items():  # the epoch picked by the table's BLEU
        epochs = r["epochs"]
        assert str(row["best_dev"]["epochs"][name]) == max(sorted(epochs),
                                                           key=lambda e: epochs[e]["dev"][by])
    md = (out / "results.md").read_text()
    name = "Table 14" if command == "table14" else "Table 13"
    assert f"rounded as {name}." in md and md in stdout
    assert ("| BLEU U | BLEU S | BLEU A |" if command == "table14"
            else "| BLEU | MET | TER |") in md
    # the other table's command refuses this data, before anything is made
    other = "table13" if command == "table14" else "table14"
    code, stdout, err = run_main(reproduce.main, capsys, other, "--model", tiny, "--data", folder,
                                 "--device", "cpu", "--out", tmp_path / "other")
    assert code == 2 and err.count("\n") == 1 and f"run {command} on it, not {other}" in err
    assert not (tmp_path / "other").exists()


# --- bad data -----------------------------------------------------------------------------------


def test_missing_or_broken_data_is_one_line_and_no_run_is_made(webnlg_slice, dart_slice, tiny,
                                                               vocab, capsys, tmp_path):
    broken = tmp_path / "webnlg"
    broken.mkdir()
    for name in webnlg.JSON_FILES:
        (broken / name).write_bytes((webnlg_slice / name).read_bytes())
    (broken / "train.json").write_text('{"entries": [{"1": {"category": "Airport", "modif')
    no_train = tmp_path / "dart"
    no_train.mkdir()
    for split in ("dev", "test"):
        name = f"dart-v1.1.1-full-{split}.json"
        (no_train / name).write_bytes((dart_slice / name).read_bytes())
    for folder, message in ((broken, f"{broken / 'train.json'} is not valid JSON"),
                            (no_train, f"{no_train} lacks dart-v1.1.1-full-train.json")):
        code, out, err = run_main(train.main, capsys, "--data", folder, "--model", tiny,
                                  "--device", "cpu", "--out", tmp_path / "run")
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "run").exists()
    # DART without its training set still decodes and scores (../shared has none)
    code, out, err = run_main(sample.main, capsys, "--model", tiny, "--data", no_train, "--beam",
                              "1", "--max-new-tokens", "2", "--limit", "2", "--no-meteor",
                              "--device", "cpu", "--out", tmp_path / "decoded")
    assert code == 0, err


@pytest.mark.parametrize("script", ["train.py", "sample.py", "reproduce.py"])
def test_a_data_that_is_no_task_is_named_as_such(script, tiny, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    (tmp_path / "file.csv").write_text("x")
    main = {"train.py": train.main, "sample.py": sample.main, "reproduce.py": reproduce.main}
    before = sorted(tmp_path.rglob("*"))
    for data, message in (
            ("webnlgg", "webnlgg: no such task or folder; did you mean webnlg? (the tasks by "
                        "name: e2e, webnlg, dart)"),
            ("WebNLG", "did you mean webnlg?"),
            (tmp_path / "nonexist", f"{tmp_path / 'nonexist'}: no such folder"),
            (tmp_path / "file.csv", "is a file: give the folder that holds the task's files"),
            (tmp_path / "empty", "is an empty folder: a task's folder holds E2E's CSVs"),
            (tmp_path / "other", "holds none of a task's files: E2E's CSVs (trainset.csv, ")):
        argv = {"train.py": ["--model", tiny, "--out", tmp_path / "run"],
                "sample.py": ["--model", tiny, "--out", tmp_path / "run"],
                "reproduce.py": ["table14", "--model", tiny, "--out", tmp_path / "run"]}[script]
        code, out, err = run_main(main[script], capsys, *argv, "--data", data, "--device", "cpu")
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"{script}: ") and message in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing made


def test_the_lines_printed_say_what_they_mean(webnlg_slice, dart_slice, tiny, vocab, capsys,
                                              tmp_path):
    # --limit beyond the split is the whole split: named and printed as such
    code, out, err = run_main(sample.main, capsys, "--model", tiny, "--data", webnlg_slice,
                              "--split", "dev", "--limit", "100000", "--beam", "1",
                              "--max-new-tokens", "2", "--no-meteor", "--device", "cpu", "--out",
                              tmp_path)
    assert code == 0, err
    assert (tmp_path / "predictions-dev.tsv").is_file() and "| this run (dev) |" in out
    # each task's challenge protocol is named for what it is
    assert "the challenge's protocol (the WebNLG 2017 challenge's scripts: 3 references, " \
           "multi-bleu.perl -lc, METEOR -r 3, tercom):" in out
    (tmp_path / "out.txt").write_text("x\n" * 12)
    printed = subprocess.run([sys.executable, "-m", "data.dart.metrics", tmp_path / "out.txt",
                              "--data", dart_slice, "--no-meteor"], cwd=REPO, capture_output=True,
                             text=True).stdout
    assert "challenge protocol (DART's own scripts: 3 references for BLEU and TER, 8 for " \
           "METEOR, multi-bleu.perl, tercom): 13 entries" in printed
    # a scorer's help says what each flag does
    for module in (webnlg_metrics, dart_metrics):
        text = subprocess.run([sys.executable, "-m", module.__name__, "--help"], cwd=REPO,
                              capture_output=True, text=True).stdout
        assert "the split the outputs are for" in text and "released: the paper's" in text


def test_the_examples_are_tokenized_once_and_cached_by_the_files(webnlg_slice, vocab, tmp_path,
                                                                  monkeypatch):
    from data.triples import TriplesTask
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    first = open_task(str(webnlg_slice)).examples("train")
    monkeypatch.setattr(TriplesTask, "encode", lambda self, split: pytest.fail("tokenized again"))
    again = open_task(str(webnlg_slice)).examples("train")
    assert (again.tokens == first.tokens).all() and (again.offsets == first.offsets).all()
    copy = tmp_path / "edited"  # the same entries but one text: its own cache
    copy.mkdir()
    for name in webnlg.JSON_FILES:
        text = (webnlg_slice / name).read_text(encoding="utf-8")
        (copy / name).write_text(text.replace('"lex": "', '"lex": "Edited: ', 1)
                                 if name == "train.json" else text, encoding="utf-8")
    monkeypatch.undo()
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path / "cache"))
    edited = open_task(str(copy)).examples("train")
    assert len(edited) == len(first) and not (edited.tokens[:len(first.tokens)] ==
                                               first.tokens).all()
    assert len(list((tmp_path / "cache" / "tokens").glob("webnlg-train-*.npz"))) == 2
