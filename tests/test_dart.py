"""DART (data/dart/): the reader against the paper's released converter on the released dev JSON,
the challenge protocol's references against DART's own reference files (by their SHA-256), its
BLEU, METEOR and TER against what DART's evaluation scripts printed (recorded in
tests/fixtures/dart/), the released protocol's grouping of entries into distinct inputs, and the
scoring command's bad input."""

import hashlib
import json
import re
import subprocess
import sys

import pytest
from conftest import FIXTURES, REPO, shared_folder

from data.dart import metrics, prepare
from data.scorers import mt_metrics


def released_converter(path) -> list[tuple]:
    """microsoft/LoRA examples/NLG/src/format_converting_dart.py, as a function: (context,
    completion) per line it writes."""
    with open(path, encoding="utf8") as f:
        data = json.load(f)
    lines = []
    for example in data:
        context = " | ".join(f"{s} : {p.lower()} : {o}" for s, p, o in example["tripleset"])
        lines += [(context, a["text"]) for a in example["annotations"]]
    return lines


def test_the_xml_reader_gives_the_released_converters_dev_lines(tmp_path):
    folder = shared_folder("dart")
    xml = prepare._xml_entries(str(folder / "dart-v1.1.1-full-dev.xml"))
    assert prepare.pairs(xml) == released_converter(folder / "dart-v1.1.1-full-dev.json")
    assert len(prepare.pairs(xml)) == 6_980
    assert prepare.read_split(str(folder), "dev") == xml  # (the JSON, read as the released code)


@pytest.fixture(scope="module")
def test_set():
    return prepare.read_split(str(shared_folder("dart")), "test")


def test_the_test_set_groups_into_its_distinct_inputs(test_set):
    contexts, references, of_entry = metrics.inputs(test_set)
    assert (len(test_set), sum(len(e.lexs) for e in test_set), len(contexts)) == \
        (5_097, 12_552, 4_159)
    assert sum(map(len, references)) == 12_552  # every text, each under its entry's input
    assert [contexts[row] for row in of_entry] == [e.context for e in test_set]


# the SHA-256 of Yale-LILY/dart's evaluation/dart_reference/all-delex-reference{0,1,2}.lex (HEAD),
# the references its scripts score against (not in ../shared: their hashes are enough). The files
# end their lines in CR LF, which its scripts read in text mode: the words are what count.
DART_REFERENCE_FILES = ["07dd2cc064c58c8abed6690a8882ce48c2e61acc8c873f38756ce62a61d591bf",
                        "1b073f35536ebb3985cbb3c2f53c5cde23d8170089e115097f980ef82961830a",
                        "a5a11705b9d451843c7550dc4b7bc0084a7512c450e3635601924b325e3301d3"]


def test_the_challenge_references_are_darts_reference_files(test_set):
    protocol = metrics.protocols(test_set, ["x"] * 4_159)["challenge"]
    refs, _ = mt_metrics.prepared(protocol)
    for k, digest in enumerate(DART_REFERENCE_FILES):
        lines = "".join(group[k] + "\r\n" for group in refs)
        assert hashlib.sha256(lines.encode()).hexdigest() == digest, k


@pytest.mark.xdist_group("dart-test-set")
def test_the_challenge_protocol_gives_what_darts_scripts_printed(test_set):
    # the "system": each entry's last text, so one entry's output is empty (its second text is)
    official = (FIXTURES / "dart" / "last-text-official.txt").read_text()
    _, _, of_entry = metrics.inputs(test_set)
    outputs = {}
    for e, row in zip(test_set, of_entry):
        outputs.setdefault(row, e.lexs[-1][0])
    per_entry = [mt_metrics.split_nonword(e.lexs[-1][0].lower()) for e in test_set]
    protocol = metrics.protocols(test_set, [outputs[r] for r in range(len(outputs))])["challenge"]
    protocol.outputs = per_entry  # (one output per entry: each its own last text)
    scores = mt_metrics.score({"challenge": protocol})["challenge"]["all"]
    assert str(scores["bleu"]) in official
    assert f"Final score:            {scores['METEOR']!r}" in official
    t = scores["tercom"]
    assert (f"Total TER: {t['score']!r} ({t['edits']!r}/{t['words']!r})\n"
            f"Number of calls to beam search: {t['beam_calls']}\n"
            f"Number of segments scored: {t['segments_scored']}\n"
            f"Number of shifts tried: {t['shifts_tried']}") in official


# --- the scoring command ------------------------------------------------------------------------


def run(*args):
    return subprocess.run([sys.executable, "-m", "data.dart.metrics", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


def test_per_entry_and_per_input_files_give_the_same_scores(test_set, tmp_path):
    contexts, _, of_entry = metrics.inputs(test_set)
    per_input = [c.split(" : ")[0] for c in contexts]  # any text: the subject of each input
    (tmp_path / "inputs.txt").write_text("".join(line + "\n" for line in per_input))
    (tmp_path / "entries.txt").write_text("".join(per_input[row] + "\n" for row in of_entry))
    folder = shared_folder("dart")
    assert metrics.per_input(test_set, tmp_path / "entries.txt") == per_input
    result = run(tmp_path / "inputs.txt", "--data", folder, "--no-meteor", "--protocol", "released")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^BLEU: \d+\.\d\d$", result.stdout, flags=re.M), result.stdout
    assert "4,159 distinct inputs" in result.stdout


def test_a_wrong_number_of_lines_is_one_line(tmp_path):
    (tmp_path / "out.txt").write_text("x\n" * 10)
    result = run(tmp_path / "out.txt", "--data", shared_folder("dart"), "--no-meteor")
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    assert "has 10 lines, but the split has 5,097 entries and 4,159 distinct inputs" in \
        result.stderr
