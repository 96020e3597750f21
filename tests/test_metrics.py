"""metrics.py against the official E2E scorer.

Ground truth: tests/fixtures/e2e-metrics/SCORES.md and SCORES-short.md, the five scores the
official script printed for six cases (METEOR from meteor.py, which test_meteor.py compares with
the jar MR by MR). Also compared with the reference code itself where it runs here:
pycocoevalcap's ROUGE-L and CIDEr (Python), and the Stanford PTBTokenizer jar it ships (Java). The
cases scored against the whole test set read its references from the official testset_w_refs.csv
(the e2e_data fixture) and skip without it.
"""

import csv
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import FIXTURES, REPO, SHARED, installed, needs_jar

from data.e2e import metrics
from data.scorers.meteor import meteor_note
from data.scorers import mteval
from data.scorers.mteval import mteval_tokenize

CASES = FIXTURES / "e2e-metrics"
HAVE_COCO = installed("pycocoevalcap")


def official_scores():
    """The rows of SCORES.md and SCORES-short.md: case -> (references, predictions, scores)."""
    rows = {}
    for table in ("SCORES.md", "SCORES-short.md"):
        for line in (CASES / table).read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 8 and re.fullmatch(r"[\d.]+", cells[3]):
                rows[cells[0]] = (cells[1], cells[2],
                                  dict(zip(metrics.NAMES, map(float, cells[3:]))))
    assert set(rows) == {"dev-10", "test-tgen", "test-sclstm",
                         "short-firstsent", "short-alternate", "short-dev10"}
    return rows


OFFICIAL = official_scores()


def references(name: str, e2e_dir) -> str:
    """test-refs.txt is the E2E test set: read the same references from testset_w_refs.csv."""
    return os.path.join(e2e_dir(), "testset_w_refs.csv") if name == "test-refs.txt" \
        else str(CASES / name)


@pytest.fixture
def e2e_dir(request):
    """A function returning the E2E folder: only the cases that need it ask (and maybe skip)."""
    return lambda: request.getfixturevalue("e2e_data")


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.fast) if case == "dev-10"
                                  else case for case in OFFICIAL])
def test_equal_to_the_official_scores(case, e2e_dir):
    refs_file, preds_file, expected = OFFICIAL[case]
    refs, preds = metrics.load(references(refs_file, e2e_dir), str(CASES / preds_file))
    got = metrics.score(refs, preds)  # METEOR from meteor.py, the Python port
    for name in ("BLEU", "NIST", "ROUGE_L", "CIDEr"):
        assert round(got[name], 4) == expected[name], name
    if got["METEOR"] is None:
        pytest.skip(f"METEOR {meteor_note()}; the other four metrics matched")
    assert abs(got["METEOR"] - expected["METEOR"]) < 0.0005
    assert round(got["METEOR"], 4) == expected["METEOR"]  # in fact all four printed decimals


@pytest.mark.skipif(not (SHARED / "data" / "e2e-metrics").is_dir(),
                    reason="no ../shared/data/e2e-metrics to compare the fixtures with")
def test_fixtures_are_the_shared_files():
    for path in CASES.iterdir():
        if path.name != "README.md":
            assert path.read_bytes() == (SHARED / "data" / "e2e-metrics" / path.name).read_bytes()


@pytest.mark.skipif(not (SHARED / "data" / "e2e-metrics").is_dir(),
                    reason="no ../shared/data/e2e-metrics/test-refs.txt to compare with")
def test_testset_csv_holds_the_references_of_test_refs_txt(e2e_data):
    # what lets the cases above read testset_w_refs.csv where the scorer was given test-refs.txt
    mrs, refs = metrics.read_references(os.path.join(e2e_data, "testset_w_refs.csv"))
    assert (len(mrs), sum(map(len, refs))) == (630, 4693)
    _, text_refs = metrics.read_references(str(SHARED / "data" / "e2e-metrics" / "test-refs.txt"))
    assert refs == text_refs


def test_csv_references_and_tsv_predictions_give_the_same_scores(tmp_path, e2e_data):
    refs_csv = os.path.join(e2e_data, "testset_w_refs.csv")
    mrs, _ = metrics.read_references(refs_csv)
    _, preds = metrics.read_predictions(str(CASES / "test-tgen-std.run0.txt"))
    with open(tmp_path / "predictions.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["MR", "output"])
        writer.writerows(zip(mrs, preds))
    refs2, preds2 = metrics.load(refs_csv, str(tmp_path / "predictions.tsv"))
    got = metrics.score(refs2, preds2, meteor=False)
    for name in ("BLEU", "NIST", "ROUGE_L", "CIDEr"):
        assert round(got[name], 4) == OFFICIAL["test-tgen"][2][name]


# --- the pieces, against the reference implementations ---------------------------------------


def _coco_inputs(case, e2e_dir):
    refs_file, preds_file, _ = OFFICIAL[case]
    refs, preds = metrics.load(references(refs_file, e2e_dir), str(CASES / preds_file))
    flat = iter(metrics.coco_tokenize([r for g in refs for r in g]))
    return [[next(flat) for _ in g] for g in refs], metrics.coco_tokenize(preds)


@pytest.mark.skipif(not HAVE_COCO, reason="pycocoevalcap is not installed")
@pytest.mark.parametrize("case", ["test-tgen", "test-sclstm"])
def test_rouge_and_cider_equal_pycocoevalcap(case, e2e_dir):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, preds = _coco_inputs(case, e2e_dir)
    gts = {i: group for i, group in enumerate(refs)}
    res = {i: [pred] for i, pred in enumerate(preds)}
    assert metrics.rouge_l(refs, preds) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert metrics.cider_d(refs, preds) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


def test_coco_tokenize_drops_punctuation_but_keeps_lowercased_brackets():
    assert metrics.coco_tokenize(["It's near (the) 'Café'.", ""]) == ["it 's near -lrb- the -rrb- "
                                                                      "café", ""]


def test_mteval_punctuation_is_the_perl_character_class():
    # mteval-v13a: s/([\{-\~\[-\` -\&\(-\+\:-\@\/])/ $1 /g (the space in it changes nothing)
    perl = {chr(c) for c in range(128) if re.match(r"[\{-\~\[-\` -\&\(-\+\:-\@\/]", chr(c))}
    ours = {chr(k) for k, v in mteval._MTEVAL_CHARS.items() if v == f" {chr(k)} "}
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
    lines = [r for group in metrics.read_references(str(CASES / "devel-conc.txt"))[1] for r in group]
    lines += (CASES / "test-tgen-std.run0.txt").read_text(encoding="utf-8").splitlines()
    lines += (CASES / "test-sclstm.run0.txt").read_text(encoding="utf-8").splitlines()
    lines += ["The Eagle's price: £20-25, 3.5 stars. A&B &amp; [x] {y} <z> \"q\" 5-star.Cheap",
              "ÉCLAIR Café 1,000.5 .5 5. ,a a,b -- a--b 20£-25 ~^_`|@#$%*+=?!;:/\\"]
    out = subprocess.run(["perl", "-e", MTEVAL_PERL], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, encoding="utf-8", check=True).stdout
    assert [" ".join(mteval_tokenize(line)) for line in lines] == out.splitlines()


def test_an_empty_prediction_scores_as_empty():
    refs = [["The Eagle is a pub."], ["Zizzi is cheap."]]
    got = metrics.score(refs, ["The Eagle is a pub.", ""], meteor=False)
    full = metrics.score(refs, refs[0] + refs[1], meteor=False)
    assert 0 < got["BLEU"] < full["BLEU"] and got["ROUGE_L"] == pytest.approx(0.5)


# --- the command line and bad input ----------------------------------------------------------


def run(*args):
    return subprocess.run([sys.executable, "-m", "data.e2e.metrics", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, encoding="utf-8")


def test_cli_prints_the_official_format():
    result = run(CASES / "devel-conc.txt", CASES / "baseline-output.txt", "--no-meteor")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "SCORES:", "==============", "BLEU: 0.7203", "NIST: 7.8212",
        "METEOR: skipped (--no-meteor)", "ROUGE_L: 0.7910", "CIDEr: 2.3039"]


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
    (tmp_path / "p.txt").write_text("", encoding="utf-8")
    one_line_error(run(CASES / "devel-conc.txt", tmp_path / "p.txt"), "p.txt is empty")


def test_a_file_of_empty_outputs_is_scored_and_says_so(tmp_path):
    (tmp_path / "p.txt").write_text("\n" * 10, encoding="utf-8")  # devel-conc.txt: 10 MRs
    result = run(CASES / "devel-conc.txt", tmp_path / "p.txt", "--no-meteor")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:4] == [
        "10 of 10 outputs are empty, scored as empty outputs (as the official script scores "
        "them)", "SCORES:", "==============", "BLEU: 0.0000"]


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
    (tmp_path / "refs.csv").write_text("mr,ref\n" + "".join(
        f"name[Place {i}],Place {i} is a pub.\nname[Place {i}],It is a pub.\n" for i in range(8)))
    mrs, _ = metrics.read_references(str(tmp_path / "refs.csv"))
    assert len(mrs) == 8
    with open(tmp_path / "p.csv", "w", encoding="utf-8", newline="") as f:
        rows = [[mr, "A place."] for mr in mrs]
        rows[4][0] = "name[Somewhere else]"
        csv.writer(f).writerows([["mr", "output"], *rows])
    one_line_error(run(tmp_path / "refs.csv", tmp_path / "p.csv", "--no-meteor"),
                   "the MR of prediction 5 is not the MR of reference group 5")


def test_plain_install_without_java_and_pycocoevalcap_scores_the_rest(user_env):
    hidden = subprocess.run([sys.executable, "-c", "import pycocoevalcap"], env=user_env,
                            capture_output=True, text=True)
    assert hidden.returncode == 1 and "No module named 'pycocoevalcap'" in hidden.stderr
    # run as a file, from another folder: the script finds its package by itself
    result = subprocess.run([sys.executable, str(REPO / "data" / "e2e" / "metrics.py"),
                             CASES / "devel-conc.txt", CASES / "baseline-output.txt"],
                            env=user_env, capture_output=True, text=True, encoding="utf-8",
                            cwd=CASES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2:] == [
        "BLEU: 0.7203", "NIST: 7.8212", "METEOR: n/a (needs the pycocoevalcap package for "
        "METEOR's word lists)", "ROUGE_L: 0.7910", "CIDEr: 2.3039"]


def test_with_pycocoevalcap_and_no_java_all_five_are_scored(meteor_env):
    assert shutil.which("java", path=meteor_env["PATH"]) is None
    result = subprocess.run([sys.executable, str(REPO / "data" / "e2e" / "metrics.py"),
                             CASES / "devel-conc.txt", CASES / "baseline-output.txt"],
                            env=meteor_env, capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    expected = OFFICIAL["dev-10"][2]
    assert result.stdout.splitlines()[2:] == [f"{name}: {expected[name]:.4f}" for name in
                                              metrics.NAMES]
    # the jar, asked for, says what it lacks
    result = subprocess.run([sys.executable, "-m", "data.e2e.metrics", CASES / "devel-conc.txt",
                             CASES / "baseline-output.txt", "--meteor", "jar"],
                            env=meteor_env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "METEOR: n/a (needs Java)" in result.stdout


def test_without_pycocoevalcap_the_tests_that_need_it_skip(user_env):
    # the suite in an environment without pycocoevalcap: what needs it skips, saying why
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             "-p", "no:xdist", "tests/test_metrics.py", "-k",
                             "pycocoevalcap_and_no_java"],
                            env=user_env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" not in result.stdout and " failed" not in result.stdout, result.stdout
    assert "pycocoevalcap is not installed" in result.stdout, result.stdout


@needs_jar
def test_meteor_jar_on_request_gives_the_official_score():
    result = run(CASES / "devel-conc.txt", CASES / "baseline-output.txt", "--meteor", "jar")
    assert result.returncode == 0, result.stderr
    assert f"METEOR: {OFFICIAL['dev-10'][2]['METEOR']:.4f}" in result.stdout.splitlines()


def test_a_jar_that_does_not_answer_is_one_line(tmp_path, monkeypatch):
    # a "java" that exits at once, as a broken Java install would
    (tmp_path / "java").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "java").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    jar = tmp_path / "meteor-1.5.jar"
    jar.write_bytes(b"")
    with pytest.raises(metrics.MeteorError, match="did not answer .* --no-meteor"):
        with metrics.Meteor(str(jar)) as running:
            running.score([["A pub."]], ["A pub."])
