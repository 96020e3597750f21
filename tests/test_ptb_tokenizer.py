"""data/e2e/ptb_tokenizer.py against the Stanford PTBTokenizer 3.4.1 jar that the COCO caption
code runs: recorded outputs of the jar (so these run without Java), and, with Java and
pycocoevalcap installed, the jar itself on every E2E reference and system output."""

import csv
import os
import subprocess

import pytest
from conftest import FIXTURES, METEOR_JAR, needs_jar

from data.e2e.ptb_tokenizer import ptb_tokenize_lines

CASES = FIXTURES / "e2e-metrics"


# Outputs of the Stanford PTBTokenizer 3.4.1 jar (-preserveLines -lowerCase) on these lines: the
# reference, recorded here so the checks run without Java too.
PTB_EXAMPLES = [
    ("Café Sicilia isn't kid friendly, costs more than £30 and has 1,000 seats - 3.5 stars.",
     "café sicilia is n't kid friendly , costs more than # 30 and has 1,000 seats - 3.5 stars ."),
    ('Don\'t go to "The Phoenix" (it\'s bad)... They serve Italian food; rating: 5 out of 5!',
     "do n't go to `` the phoenix '' -lrb- it 's bad -rrb- ... they serve italian food ; rating "
     ": 5 out of 5 !"),
    ("It is located in city center., nearby Clare Hall.",
     "it is located in city center. , nearby clare hall ."),
    ("The Rice Boat is French,family-friendly, priced £20-£25 or 20£-25.",
     "the rice boat is french,family-friendly , priced # 20 - # 25 or 20 # -25 ."),
    ("Its price range is high.The place is near St. John's College, etc. Family friendly.",
     "its price range is high.the place is near st. john 's college , etc. . family friendly ."),
    ("Overpriced is Clowns. You can find it at the riverside.......Or not........",
     "overpriced is clowns . you can find it at the riverside ... . . or not ... ..."),
    ("The Vaults' is near 'Rainbow Vegetarian Café' and serves hors d'oeuvres.",
     "the vaults ' is near ` rainbow vegetarian café ' and serves hors d'oeuvres ."),
    ("Chesterton Rd.", "chesterton rd. ."),
    ("kids friendly no.", "kids friendly no ."),
    ("Open 10:30-11:00 a.m. to 5 p.m. daily, e.g. on Mon. and Tues.",
     "open 10:30 -11:00 a.m. to 5 p.m. daily , e.g. on mon. and tues. ."),
]


@pytest.mark.parametrize("text, expected", PTB_EXAMPLES)
def test_ptb_tokenizer_examples(text, expected):
    assert " ".join(ptb_tokenize_lines([text])[0]) == expected


def test_ptb_tokenizer_looks_at_the_next_line():
    # PTBTokenizer sees all lines joined by newlines: "L." before "The ..." ends a sentence.
    assert ptb_tokenize_lines(["for 20-25 L.", "The next.", "for 20-25 L.", "English"]) == [
        ["for", "20-25", "l", "."], ["the", "next", "."], ["for", "20-25", "l."], ["english"]]


@needs_jar
def test_ptb_tokenizer_equals_the_jar_on_all_e2e_text(tmp_path, e2e_data):
    lines = []
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        with open(os.path.join(e2e_data, name), encoding="utf-8", newline="") as f:
            lines += [row[1].replace("\r", " ").replace("\n", " ") for row in list(csv.reader(f))[1:]]
    for name in ("test-tgen-std.run0.txt", "test-sclstm.run0.txt", "baseline-output.txt"):
        lines += (CASES / name).read_text(encoding="utf-8").splitlines()
    lines += [text for text, _ in PTB_EXAMPLES]
    (tmp_path / "lines.txt").write_text("\n".join(lines), encoding="utf-8")
    jar = os.path.join(os.path.dirname(METEOR_JAR), "..", "tokenizer", "stanford-corenlp-3.4.1.jar")
    out = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer",
                          "-preserveLines", "-lowerCase", str(tmp_path / "lines.txt")],
                         capture_output=True, text=True, encoding="utf-8", check=True).stdout
    expected = out.split("\n")[:len(lines)]
    got = [" ".join(tokens) for tokens in ptb_tokenize_lines(lines)]
    assert len(lines) > 50_000
    wrong = [(line, e, g) for line, e, g in zip(lines, expected, got) if e != g]
    assert wrong == []
