"""metrics.py against the official E2E scorer.

Ground truth: ../shared/data/e2e-metrics/SCORES.md, the five scores the official script printed for
three cases. Also compared with the reference code itself where it runs here: pycocoevalcap's
ROUGE-L and CIDEr (Python), and the Stanford PTBTokenizer and METEOR jars it ships (Java).
"""

import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, SHARED

import metrics

CASES = SHARED / "data" / "e2e-metrics"
E2E = SHARED / "data" / "e2e"
METEOR_JAR = metrics.meteor_jar()  # None without Java and pycocoevalcap
needs_jar = pytest.mark.skipif(METEOR_JAR is None, reason=f"the jars are {metrics.METEOR_NA}")
HAVE_COCO = importlib.util.find_spec("pycocoevalcap") is not None


def official_scores():
    """The rows of SCORES.md: case -> (references file, predictions file, {metric: score})."""
    rows = {}
    for line in (CASES / "SCORES.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"[\d.]+", cells[3]):
            rows[cells[0]] = (cells[1], cells[2], dict(zip(metrics.NAMES, map(float, cells[3:]))))
    assert set(rows) == {"dev-10", "test-tgen", "test-sclstm"}
    return rows


OFFICIAL = official_scores()


@pytest.fixture(scope="module")
def meteor():
    """One METEOR jar for all cases (it takes ~10 s to start), or None without Java."""
    if METEOR_JAR is None:
        yield None
        return
    with metrics.Meteor(METEOR_JAR) as running:
        yield running


@pytest.mark.parametrize("case", list(OFFICIAL))
def test_equal_to_the_official_scores(case, meteor):
    refs_file, preds_file, expected = OFFICIAL[case]
    refs, preds = metrics.load(str(CASES / refs_file), str(CASES / preds_file))
    got = metrics.score(refs, preds, meteor=meteor or False)
    for name in ("BLEU", "NIST", "ROUGE_L", "CIDEr"):
        assert round(got[name], 4) == expected[name], name
    if meteor is None:
        pytest.skip(f"METEOR {metrics.METEOR_NA}; the other four metrics matched")
    assert abs(got["METEOR"] - expected["METEOR"]) < 0.005
    assert round(got["METEOR"], 4) == expected["METEOR"]  # in fact exact: the same jar


def test_csv_references_and_tsv_predictions_give_the_same_scores(tmp_path):
    # testset_w_refs.csv holds the same references as test-refs.txt, with their MRs.
    mrs, refs = metrics.read_references(str(E2E / "testset_w_refs.csv"))
    assert (len(mrs), sum(map(len, refs))) == (630, 4693)
    _, text_refs = metrics.read_references(str(CASES / "test-refs.txt"))
    assert refs == text_refs
    _, preds = metrics.read_predictions(str(CASES / "test-tgen-std.run0.txt"))
    with open(tmp_path / "predictions.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["MR", "output"])
        writer.writerows(zip(mrs, preds))
    refs2, preds2 = metrics.load(str(E2E / "testset_w_refs.csv"), str(tmp_path / "predictions.tsv"))
    got = metrics.score(refs2, preds2, meteor=False)
    for name in ("BLEU", "NIST", "ROUGE_L", "CIDEr"):
        assert round(got[name], 4) == OFFICIAL["test-tgen"][2][name]


# --- the pieces, against the reference implementations ---------------------------------------


def _coco_inputs(case="test-tgen"):
    refs_file, preds_file, _ = OFFICIAL[case]
    refs, preds = metrics.load(str(CASES / refs_file), str(CASES / preds_file))
    flat = iter(metrics.coco_tokenize([r for g in refs for r in g]))
    return [[next(flat) for _ in g] for g in refs], metrics.coco_tokenize(preds)


@pytest.mark.skipif(not HAVE_COCO, reason="pycocoevalcap is not installed")
@pytest.mark.parametrize("case", ["test-tgen", "test-sclstm"])
def test_rouge_and_cider_equal_pycocoevalcap(case):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, preds = _coco_inputs(case)
    gts = {i: group for i, group in enumerate(refs)}
    res = {i: [pred] for i, pred in enumerate(preds)}
    assert metrics.rouge_l(refs, preds) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert metrics.cider_d(refs, preds) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


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
    assert " ".join(metrics.ptb_tokenize_lines([text])[0]) == expected


def test_ptb_tokenizer_looks_at_the_next_line():
    # PTBTokenizer sees all lines joined by newlines: "L." before "The ..." ends a sentence.
    assert metrics.ptb_tokenize_lines(["for 20-25 L.", "The next.", "for 20-25 L.", "English"]) == [
        ["for", "20-25", "l", "."], ["the", "next", "."], ["for", "20-25", "l."], ["english"]]


def test_coco_tokenize_drops_punctuation_but_keeps_lowercased_brackets():
    assert metrics.coco_tokenize(["It's near (the) 'Café'.", ""]) == ["it 's near -lrb- the -rrb- "
                                                                      "café", ""]


@needs_jar
def test_ptb_tokenizer_equals_the_jar_on_all_e2e_text(tmp_path):
    lines = []
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        with open(E2E / name, encoding="utf-8", newline="") as f:
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
    got = [" ".join(tokens) for tokens in metrics.ptb_tokenize_lines(lines)]
    assert len(lines) > 50_000
    wrong = [(line, e, g) for line, e, g in zip(lines, expected, got) if e != g]
    assert wrong == []


def test_mteval_punctuation_is_the_perl_character_class():
    # mteval-v13a: s/([\{-\~\[-\` -\&\(-\+\:-\@\/])/ $1 /g (the space in it changes nothing)
    perl = {chr(c) for c in range(128) if re.match(r"[\{-\~\[-\` -\&\(-\+\:-\@\/]", chr(c))}
    ours = {chr(k) for k, v in metrics._MTEVAL_CHARS.items() if v == f" {chr(k)} "}
    assert ours == perl - {" "}


# mteval-v13a's own tokenization lines (its sub tokenization, without -c), run by Perl itself
MTEVAL_PERL = r"""
use utf8; binmode STDIN, ":utf8"; binmode STDOUT, ":utf8";
while (my $t = <STDIN>) {
    chomp $t;
    $t =~ s/[\s\n\r]+/ /g;
    $t =~ s/<skipped>//g; $t =~ s/-\n//g; $t =~ s/\n/ /g;
    $t =~ s/&quot;/"/g; $t =~ s/&amp;/&/g; $t =~ s/&lt;/</g; $t =~ s/&gt;/>/g;
    $t = " $t ";
    $t =~ tr/[A-Z]/[a-z]/;
    $t =~ s/([\{-\~\[-\` -\&\(-\+\:-\@\/])/ $1 /g;
    $t =~ s/([^0-9])([\.,])/$1 $2 /g;
    $t =~ s/([\.,])([^0-9])/ $1 $2/g;
    $t =~ s/([0-9])(-)/$1 $2 /g;
    $t =~ s/\s+/ /g; $t =~ s/^\s+//; $t =~ s/\s+$//;
    print "$t\n";
}
"""


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
def test_mteval_tokenize_equals_perl():
    lines = [r for group in metrics.read_references(str(CASES / "test-refs.txt"))[1] for r in group]
    lines += (CASES / "test-sclstm.run0.txt").read_text(encoding="utf-8").splitlines()
    lines += ["The Eagle's price: £20-25, 3.5 stars. A&B &amp; [x] {y} <z> \"q\" 5-star.Cheap",
              "ÉCLAIR Café 1,000.5 .5 5. ,a a,b -- a--b 20£-25 ~^_`|@#$%*+=?!;:/\\"]
    out = subprocess.run(["perl", "-e", MTEVAL_PERL], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, encoding="utf-8", check=True).stdout
    assert [" ".join(metrics.mteval_tokenize(line)) for line in lines] == out.splitlines()


def test_an_empty_prediction_scores_as_empty():
    refs = [["The Eagle is a pub."], ["Zizzi is cheap."]]
    got = metrics.score(refs, ["The Eagle is a pub.", ""], meteor=False)
    full = metrics.score(refs, refs[0] + refs[1], meteor=False)
    assert 0 < got["BLEU"] < full["BLEU"] and got["ROUGE_L"] == pytest.approx(0.5)


# --- the command line and bad input ----------------------------------------------------------


def run(*args):
    return subprocess.run([sys.executable, str(REPO / "metrics.py"), *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8")


def test_cli_prints_the_official_format():
    result = run(CASES / "devel-conc.txt", CASES / "baseline-output.txt", "--no-meteor")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "SCORES:", "==============", "BLEU: 0.7203", "NIST: 7.8212",
        "METEOR: n/a (needs Java and pycocoevalcap)", "ROUGE_L: 0.7910", "CIDEr: 2.3039"]


def one_line_error(result, *fragments):
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_count_mismatch_names_both_counts(tmp_path):
    (tmp_path / "p.txt").write_text("one\ntwo\n", encoding="utf-8")
    one_line_error(run(CASES / "devel-conc.txt", tmp_path / "p.txt"),
                   "has 2 predictions but", "has 10 MRs")


def test_empty_file(tmp_path):
    (tmp_path / "p.txt").write_text("\n", encoding="utf-8")
    one_line_error(run(CASES / "devel-conc.txt", tmp_path / "p.txt"), "p.txt is empty")


def test_csv_without_two_columns(tmp_path):
    (tmp_path / "refs.csv").write_text("mr,ref,extra\na,b,c\n", encoding="utf-8")
    one_line_error(run(tmp_path / "refs.csv", CASES / "baseline-output.txt"),
                   "expected two columns (MR, reference)", "row 2 has 3")


def test_not_utf8(tmp_path):
    (tmp_path / "p.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    one_line_error(run(CASES / "devel-conc.txt", tmp_path / "p.txt"),
                   "is not UTF-8 text (byte 0xe9 at offset 3)")


def test_missing_file(tmp_path):
    one_line_error(run(tmp_path / "nope.txt", CASES / "baseline-output.txt"), "cannot read")


def test_predictions_for_other_mrs(tmp_path):
    mrs, _ = metrics.read_references(str(E2E / "testset_w_refs.csv"))
    with open(tmp_path / "p.csv", "w", encoding="utf-8", newline="") as f:
        rows = [[mr, "A place."] for mr in mrs]
        rows[4][0] = "name[Somewhere else]"
        csv.writer(f).writerows([["mr", "output"], *rows])
    one_line_error(run(E2E / "testset_w_refs.csv", tmp_path / "p.csv", "--no-meteor"),
                   "the MR of prediction 5 is not the MR of reference group 5")
