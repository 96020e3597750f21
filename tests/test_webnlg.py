"""WebNLG (data/webnlg/): the reader against the paper's released converter on the released JSON,
the challenge protocol against the WebNLG 2017 challenge's official scores of a submission (every
printed digit of BLEU, METEOR and TER on all, seen and unseen, with METEOR's per-segment scores and
tercom's step counters), the released protocol's BLEU against multi-bleu-detok.perl's output and
its tokenization against nltk, and the scoring command's bad input."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import FIXTURES, METEOR_JAR, REPO, shared_folder

from data.scorers import mt_metrics
from data.scorers.meteor import meteor_note
from data.webnlg import metrics, prepare


def released_converter(path) -> list[tuple]:
    """microsoft/LoRA examples/NLG/src/format_converting_webnlg.py, as a function: (context,
    completion, seen) per line it writes."""
    with open(path, encoding="utf8") as f:
        data = json.load(f)
    lines = []
    for i, example in enumerate(data["entries"]):
        entry = example[str(i + 1)]
        context = " | ".join(f"{t['subject']} : {t['property']} : {t['object']}"
                             for t in entry["modifiedtripleset"])
        lines += [(context, lex["lex"], entry["category"] in prepare.SEEN)
                  for lex in entry["lexicalisations"] if lex["comment"] == "good"]
    return lines


@pytest.mark.parametrize("split, count", [("train", 18_025), ("dev", 2_258), ("test", 4_928)])
def test_the_xml_reader_gives_the_released_converters_lines(split, count):
    xml, released = shared_folder("webnlg"), shared_folder("webnlg-lora")
    entries = prepare.read_split(str(xml), split)
    ours = [(e.context, text, e.seen) for e in entries for text, comment in e.lexs
            if comment == "good"]
    assert ours == released_converter(released / f"{split}.json")
    assert len(ours) == count and len(prepare.pairs(entries)) == count
    assert prepare.read_split(str(released), split) == entries  # the JSON reader too


def test_the_test_set_has_ten_seen_and_five_unseen_categories():
    entries = prepare.read_split(str(shared_folder("webnlg")), "test")
    assert {e.category for e in entries if e.seen} == set(prepare.SEEN)
    assert {e.category for e in entries if not e.seen} == set(prepare.UNSEEN)
    assert (sum(e.seen for e in entries), sum(not e.seen for e in entries)) == (971, 891)


# --- the challenge's official scores of a submission ---------------------------------------------


# (one xdist worker computes it once, for every test that needs it: about 45 s on 2 cores)
in_one_worker = pytest.mark.xdist_group("webnlg-melbourne")


@pytest.fixture(scope="session")
def melbourne():
    """The challenge protocol's scores of the submission in ../shared/data/webnlg-metrics
    (GKB_Unimelb, one line per test input): computed once (for the session: a module fixture is
    set up again when the worker runs another module's tests between this group's)."""
    folder = shared_folder("webnlg-metrics")
    entries = prepare.read_split(str(shared_folder("webnlg")), "test")
    outputs = mt_metrics.read_outputs(folder / "melbourne.txt", metrics.inputs(entries)[0])
    return folder, entries, outputs, metrics.score(entries, outputs, names=("challenge",))


def official(folder, kind: str, track: str) -> str:
    name = {"bleu": f"bleu3ref-GKB_Unimelb_{track}.txt", "meteor": f"meteor-GKB_Unimelb-{track}.txt",
            "ter": f"ter3ref-GKB_Unimelb-{track}.txt"}[kind]
    return (folder / "official-scores" / name).read_text()


@in_one_worker
@pytest.mark.parametrize("subset, track", [("all", "all-cat"), ("seen", "old-cat"),
                                           ("unseen", "new-cat")])
def test_the_challenge_protocol_gives_the_official_scores(melbourne, subset, track):
    folder, _, _, scores = melbourne
    ours = scores["challenge"][subset]
    assert str(ours["bleu"]) == official(folder, "bleu", track).strip()
    meteor_final = re.search(r"Final score:\s+(\S+)", official(folder, "meteor", track))[1]
    assert repr(ours["METEOR"]) == meteor_final
    t = ours["tercom"]
    assert (f"Total TER: {t['score']!r} ({t['edits']!r}/{t['words']!r})\n"
            f"Number of calls to beam search: {t['beam_calls']}\n"
            f"Number of segments scored: {t['segments_scored']}\n"
            f"Number of shifts tried: {t['shifts_tried']}") in official(folder, "ter", track)


@in_one_worker
def test_meteor_gives_the_official_score_of_every_segment(melbourne):
    folder, _, _, scores = melbourne
    printed = [float(s) for s in re.findall(r"^Segment \d+ score:\s+(\S+)$",
                                            official(folder, "meteor", "all-cat"), flags=re.M)]
    assert scores["challenge"]["segments"]["METEOR"] == printed
    assert len(printed) == 1_862


# --- the released protocol ------------------------------------------------------------------------


@in_one_worker
def test_multi_bleu_detok_gives_the_perl_scripts_lines(melbourne):
    _, entries, outputs, _ = melbourne
    expected = dict(line.split("\t") for line in
                    (FIXTURES / "webnlg" / "multi-bleu-detok.txt").read_text().splitlines()
                    if line and not line.startswith("#"))
    refs = [[t for t, _ in e.lexs] for e in entries]
    for name, prepare_text in (("released", lambda s: mt_metrics.split_nonword(s.lower())),
                               ("raw", lambda s: s)):
        six = [[prepare_text(g[k] if k < len(g) else g[0]) for k in range(6)] for g in refs]
        hyps = [prepare_text(out) for out in outputs]
        for flag, lowercase in (("", False), (" -lc", True)):
            assert str(mt_metrics.multi_bleu(six, hyps, lowercase=lowercase, detok=True)) == \
                expected[name + flag]
    refs, hyps = mt_metrics.prepared(metrics.protocols(entries, outputs)["released"])
    assert f"{100 * mt_metrics.multi_bleu(refs, hyps, detok=True).score:.2f}" == "44.67"  # (its
    # own texts, as mt_metrics.score reads them: the released protocol's whole scoring is
    # tests/test_triples.py's, on slices)


@in_one_worker
def test_nltk_tokens_are_nltks_on_split_lowercased_text(melbourne):
    nltk = pytest.importorskip("nltk")
    _, entries, outputs, _ = melbourne
    texts = [mt_metrics.split_nonword(t.strip().lower())
             for t in [*outputs, *(t for e in entries for t, _ in e.lexs)]]
    texts += ['he said " i cannot go " and wanna stay , gotta say', "gonna lemme gimme"]
    for text in texts:
        assert mt_metrics.nltk_tokens(text) == " ".join(
            nltk.word_tokenize(text, preserve_line=True)), text


# --- the scoring command ------------------------------------------------------------------------


def run(*args):
    return subprocess.run([sys.executable, "-m", "data.webnlg.metrics", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("content, message", [
    ("one line\n", "has 1 line, but the split has 1,862 inputs"),
    ("x\n" * 1_863, "has 1,863 lines, but the split has 1,862 inputs"),
    (b"\xff\xfe\n", "is not UTF-8 (byte 0xff on line 1)"),
])
def test_bad_outputs_are_one_line_and_exit_2(webnlg_data, tmp_path, content, message):
    path = tmp_path / "outputs.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run(path, "--data", webnlg_data, "--no-meteor")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("damage, message", [
    ("empty", "webnlg is an empty folder: a task's folder holds E2E's CSVs"),
    ("truncated", "test.json is not valid JSON (Unterminated string starting at: line 1 column "
                  "44 (char 43)); replace it with a good copy (nothing is downloaded into a "
                  "folder you give)"),
    ("no test", "webnlg lacks WebNLG's test split (test.json, or the challenge's "
                "test/testdata_with_lex.xml)"),
    ("test only", "out.txt has 1 line, but the split has 1,862 inputs"),  # (read: all it needs)
])
def test_missing_or_truncated_data_is_one_line(tmp_path, damage, message):
    folder, xml = tmp_path / "webnlg", shared_folder("webnlg")
    folder.mkdir()
    if damage == "truncated":
        for name in prepare.JSON_FILES:
            (folder / name).write_text('{"entries": [{"1": {"category": "Airport", "modif')
    if damage != "test only":  # the challenge's XML without its test file
        shutil.copytree(xml / "train", folder / "train")
        shutil.copytree(xml / "dev", folder / "dev")
    if damage != "no test":
        (folder / "test").mkdir()
        shutil.copy(xml / prepare.XML_TEST, folder / prepare.XML_TEST)
    if damage == "empty":
        shutil.rmtree(folder)
        folder.mkdir()
    (tmp_path / "out.txt").write_text("x\n")
    result = run(tmp_path / "out.txt", "--data", folder, "--no-meteor")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr


def test_the_scorer_takes_the_task_names_train_py_takes(tmp_path, monkeypatch):
    monkeypatch.setenv("WEBNLG_DATA_DIR", str(shared_folder("webnlg")))
    (tmp_path / "out.txt").write_text("x\n")
    for data, message in (("webnlg", "has 1 line, but the split has 1,862 inputs"),
                          ("WebNLG", "WebNLG: no such task or folder; did you mean webnlg?"),
                          ("dart", "--data dart is DART's data, not WebNLG's")):
        result = run(tmp_path / "out.txt", "--data", data, "--no-meteor")
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr, result.stderr


def test_empty_outputs_score_as_the_official_scripts_score_them(tmp_path):
    """A submission with empty lines, in the challenge protocol: BLEU as the challenge's own
    multi-bleu.perl prints it, METEOR as the jar scores the files (evaluation.py's, -r 3)."""
    folder = shared_folder("webnlg-metrics")
    entries = prepare.read_split(str(shared_folder("webnlg")), "test")
    contexts = metrics.inputs(entries)[0]
    lines = (folder / "melbourne.txt").read_text(encoding="utf-8").splitlines()[:120]
    outputs = ["" if i % 4 == 1 else line for i, line in enumerate(lines)]
    (tmp_path / "out.txt").write_text("".join(o + "\n" for o in outputs)
                                      + "x\n" * (len(contexts) - 120))
    assert mt_metrics.read_outputs(tmp_path / "out.txt", contexts)[:120] == outputs
    entries = mt_metrics.first_inputs(entries, prepare.texts, 120)
    protocol = metrics.protocols(entries, outputs)["challenge"]
    ours = mt_metrics.score({"challenge": protocol})["challenge"]["all"]
    refs, hyps = mt_metrics.prepared(protocol)
    assert hyps.count("") == 30
    (tmp_path / "hyp").write_text("".join(h + "\n" for h in hyps))
    for k in range(3):
        (tmp_path / f"ref{k}").write_text("".join(group[k] + "\n" for group in refs))
    if shutil.which("perl"):
        perl = subprocess.run(["perl", folder / "official-scripts-multi-bleu.perl", "-lc",
                               *(tmp_path / f"ref{k}" for k in range(3))],
                              stdin=open(tmp_path / "hyp"), capture_output=True, text=True)
        assert perl.stdout.strip() == str(ours["bleu"])
    if METEOR_JAR is None:
        pytest.skip(f"METEOR's jar: {meteor_note(implementation='jar')} (BLEU was checked)")
    (tmp_path / "ref3").write_text("".join(r + "\n" for group in refs for r in group))
    jar = subprocess.run(["java", "-Xmx2G", "-jar", METEOR_JAR, tmp_path / "hyp",
                          tmp_path / "ref3", "-l", "en", "-norm", "-r", "3"],
                         cwd=os.path.dirname(METEOR_JAR), capture_output=True, text=True)
    assert repr(ours["METEOR"]) == re.search(r"Final score:\s+(\S+)", jar.stdout)[1]


def test_the_command_scores_without_meteor_in_a_plain_install(user_env, tmp_path):
    """make train's environment has no pycocoevalcap: METEOR n/a and why, the rest scored."""
    lines = (shared_folder("webnlg-metrics") / "melbourne.txt").read_text(encoding="utf-8")
    lines = lines.splitlines()
    lines[0] = ""  # (a seen input's: the unseen scores stay the official ones)
    (tmp_path / "out.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "data.webnlg.metrics", tmp_path / "out.txt",
                             "--data", shared_folder("webnlg"), "--subset", "unseen",
                             "--protocol", "challenge"],
                            cwd=REPO, capture_output=True, text=True, env=user_env)
    assert result.returncode == 0, result.stderr
    assert "1,862 outputs for the test split's 1,862 inputs; 1 is empty" in result.stdout
    assert "METEOR: n/a (needs the pycocoevalcap package" in result.stdout
    assert "BLEU: 33.27" in result.stdout and "TER: 0.5592 (tercom 0.7.25)" in result.stdout


def test_a_damaged_download_is_fetched_again_a_users_file_is_theirs(tmp_path):
    from data.files import mend
    assert mend(os.path.join(prepare.HERE, "test.json"), prepare.HERE) == \
        "delete it, and the next run downloads it again"
    assert mend(str(tmp_path / "test.json"), prepare.HERE).startswith("replace it")
