"""data/scorers/meteor.py, the Python METEOR 1.5, against the jar it ports.

Where Java is installed, the jar itself is the reference: the 23 statistics of every MR, each MR's
score and the corpus score equal what it answers through the stdio protocol the COCO code uses
(SCORE / EVAL), on real E2E outputs and on raw text written to stress the normaliser; the Snowball
stemmer and the normaliser equal the jar's own classes, run directly. Everywhere (pycocoevalcap
installed, no Java): each matcher and the aligner on hand-made cases whose scores are derived here
from the definitions. (test_metrics.py checks the corpus scores against the six official ones.)
"""

import gzip
import os
import subprocess
import sys

import pytest
from conftest import FIXTURES, METEOR_JAR, needs_jar

from data.e2e import metrics
from data.scorers import meteor

MISSING = meteor.resources_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"METEOR {MISSING}")
CASES = FIXTURES / "e2e-metrics"


def score_one(output: str, reference: str) -> tuple[list[float], float]:
    out, ref = meteor.words(output), meteor.words(reference)
    stats = meteor.statistics(out, ref, meteor.paraphrase_table(set(out) | set(ref)))
    return stats, meteor.score_of(stats)


def module_counts(stats: list[float], module: str) -> list[float]:
    """Matched (output content, reference content, output function, reference function) words."""
    i = meteor.MODULES.index(module)
    return stats[4 + 4 * i:8 + 4 * i]


def fmean(p: float, r: float) -> float:
    """The paper's form of Fmean, alpha 0.85 (the code computes 1 / ((1 - a)/P + a/R))."""
    return p * r / (0.85 * p + 0.15 * r)


def weighted(content: float, function: float) -> float:
    return 0.75 * content + 0.25 * function  # delta 0.75


# --- each matcher and the aligner, by hand ---------------------------------------------------


def test_identical_sides_are_matched_exactly_and_score_one():
    words = meteor.words("The pubs near the city centre")
    found = meteor.candidates(words, list(words), meteor.paraphrase_table(set(words)))
    assert {m.module for ms in found for m in ms} == {0}  # the jar runs no other module
    stats, score = score_one("The pubs near the city centre", "the pubs near the city centre")
    assert module_counts(stats, "exact") == [4, 4, 2, 2] and stats[20] == 1  # one chunk
    assert score == pytest.approx(1.0, abs=1e-15)


def test_stem_match_weighs_0_6():
    assert meteor._stem("pubs") == meteor._stem("pub") == "pub"
    stats, score = score_one("the pubs", "the pub")
    assert module_counts(stats, "stem") == [1, 1, 0, 0]
    p = r = weighted(0.6, 1.0) / weighted(1, 1)  # pubs~pub (stem), the=the (exact)
    assert score == pytest.approx(fmean(p, r), abs=1e-12)  # fully matched, one chunk: no penalty


def test_synonym_match_weighs_0_8():
    assert meteor._stem("cheap") != meteor._stem("inexpensive")
    stats, score = score_one("the food is cheap", "the food is inexpensive")
    assert module_counts(stats, "synonym") == [1, 1, 0, 0]  # (the paraphrase table has it too:
    # the synonym is found first and the aligner keeps the first of equal choices)
    p = r = weighted(1.0 + 0.8, 2.0) / weighted(2, 2)
    assert score == pytest.approx(fmean(p, r), abs=1e-12)


def test_a_word_only_the_paraphrase_table_matches():
    assert meteor._stem("city") != meteor._stem("town")
    assert meteor._synsets("city").isdisjoint(meteor._synsets("town"))
    stats, score = score_one("the pub is in the city", "the pub is in the town")
    assert module_counts(stats, "paraphrase") == [1, 1, 0, 0]
    p = r = weighted(1.0 + 0.6, 4.0) / weighted(2, 4)  # the, is, in, the: function words
    assert score == pytest.approx(fmean(p, r), abs=1e-12)


def test_a_phrase_paraphrase_matches_two_words_with_one():
    stats, score = score_one("it is close to the pub", "it is near the pub")
    # "close to" = "near" (one match of 2 output words, one of them a function word), which the
    # aligner prefers to the synonym close~near (one word each side)
    assert module_counts(stats, "paraphrase") == [1, 1, 1, 0]
    p = weighted(1.0 + 0.6, 3.0 + 0.6) / weighted(2, 4)
    r = weighted(1.0 + 0.6, 3.0) / weighted(2, 3)
    assert score == pytest.approx(fmean(p, r), abs=1e-12)


def test_the_beam_finds_the_alignment_with_fewer_chunks():
    out, ref = meteor.words("the cat on the mat"), meteor.words("the mat")
    found = meteor.candidates(out, ref, {})
    assert [m.out_start for m in found[0]] == [0, 3]  # the first "the" comes first
    matches = meteor.align(out, ref, found)
    assert [m.out_start for m in matches] == [3, 4]  # "the mat" as one chunk, not the + mat
    stats, score = score_one("the cat on the mat", "the mat")
    p, r = weighted(1, 1) / weighted(2, 3), weighted(1, 1) / weighted(1, 1)

    def penalized(chunks):
        return fmean(p, r) * (1 - 0.6 * (chunks / 2) ** 0.2)  # frag: chunks / mean matched words
    assert stats[20] == 1 and score == pytest.approx(penalized(1), abs=1e-12)
    assert penalized(2) < score  # what taking the first "the" would have scored


def test_nothing_matched_or_nothing_said_scores_zero():
    assert score_one("", "the pub")[1] == 0.0  # 0/0 precision: the jar's NaN becomes 0
    assert score_one("a cafe", "the pub")[1] == 0.0
    assert meteor.corpus_score([["the pub"], ["a cafe"]], ["", "a cafe"]) > 0


def test_the_corpus_leaves_out_the_chunks_of_exact_segments():
    exact, other = score_one("the pub", "the pub")[0], score_one("the cat on the mat", "the mat")[0]
    total = meteor.add(meteor.add([0.0] * 23, exact), other)
    assert total[20] == other[20] == 1  # the exact segment's chunk is not counted
    assert total[:20] == [a + b for a, b in zip(exact[:20], other[:20])]


def test_the_normalizer_splits_as_the_jar_does():
    # the jar's output for these lines (test_normalizer_equals_the_jar checks them with Java)
    assert meteor.normalize("Mr. Smith's pub costs £20-25.") == "Mr. Smith 's pub costs £ 20 25 ."
    assert meteor.normalize("U.S.-based diners... e.g. \u201cThe Eagle\u201d -- 1990's, don't "
                            "No. 5") == ("US based diners ... eg \" The Eagle \" - 1990 's , "
                                         "don 't No. 5")
    assert meteor.words("  The PUB.  ") == ["the", "pub", "."]


def test_the_paraphrase_table_is_cached_and_filtered(tmp_path, monkeypatch):
    entries = [("near", "close to"), ("close to", "near"), ("the city", "town"),
               ("near", "next to"), ("a word", "near")]  # the last two use unknown words
    (tmp_path / "data").mkdir()
    with gzip.open(tmp_path / "data" / "paraphrase-en.gz", "wt", encoding="utf-8") as f:
        f.writelines(f"0.5\n{phrase}\n{paraphrase}\n" for phrase, paraphrase in entries)
    monkeypatch.setattr(meteor, "data_folder", lambda: str(tmp_path))
    monkeypatch.setattr(meteor, "CACHE", str(tmp_path / "cache"))
    meteor._paraphrase_arrays.cache_clear()
    size = os.path.getsize(tmp_path / "data" / "paraphrase-en.gz")
    (tmp_path / "cache").mkdir()
    cache = tmp_path / "cache" / f"paraphrase-en-{size}-v1.npz"
    cache.write_bytes(b"a cache file cut short")  # unreadable: parsed again, replaced
    try:
        vocabulary = {"near", "close", "to", "the", "city", "town", "word"}
        expected = {("near",): [("close", "to")], ("close",): [], ("close", "to"): [("near",)],
                    ("the",): [], ("the", "city"): [("town",)]}  # first words of phrases: keys
        assert meteor.paraphrase_table(vocabulary) == expected
        assert os.listdir(tmp_path / "cache") == [cache.name] and cache.stat().st_size > 100
        meteor._paraphrase_arrays.cache_clear()
        monkeypatch.setattr(meteor, "_parse_paraphrases", None)  # the cache is read, not the table
        assert meteor.paraphrase_table(vocabulary) == expected
    finally:
        meteor._paraphrase_arrays.cache_clear()


def test_snowballstemmer_3_is_refused_with_the_reason(monkeypatch):
    class Stemmer:  # snowballstemmer 3.x stems "added" as "add"
        def stemWord(self, word):
            return "add"
    fake = type(sys)("snowballstemmer")
    fake.stemmer = lambda language: Stemmer()
    monkeypatch.setitem(sys.modules, "snowballstemmer", fake)
    assert "snowballstemmer<3" in meteor.resources_missing()


# --- against the jar -------------------------------------------------------------------------


def _mixed_segments(e2e_data) -> tuple[list[list[str]], list[str]]:
    """E2E segments as the scorer sends them (300 MRs of test-tgen, COCO-tokenized), raw text
    (each of 60 MRs' first reference as the output, the others as references: punctuation,
    capitals, £), and edge cases: an empty output, an output equal to its reference."""
    all_refs, preds = metrics.load(os.path.join(e2e_data, "testset_w_refs.csv"),
                                   str(CASES / "test-tgen-std.run0.txt"))
    refs, preds = all_refs[:300], preds[:300]
    flat = iter(metrics.coco_tokenize([r for group in refs for r in group]))
    coco_refs = [[next(flat) for _ in group] for group in refs]
    raw = [group for group in all_refs[300:] if len(group) > 1][:60]
    edge_refs, edge_outputs = [["The Eagle is a pub."]] * 2, ["", "The Eagle is a pub."]
    return (coco_refs + [group[1:] for group in raw] + edge_refs,
            metrics.coco_tokenize(preds) + [group[0] for group in raw] + edge_outputs)


@needs_jar
def test_statistics_and_scores_equal_the_jar_for_every_segment(e2e_data):
    refs, outputs = _mixed_segments(e2e_data)
    ours = meteor.segment_statistics(refs, outputs)
    with metrics.Meteor(METEOR_JAR) as jar:
        theirs = jar.statistics(refs, outputs)
        jar_scores, jar_corpus = jar.evaluate(theirs)
    assert len(ours) == len(theirs) == 362
    different = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not different, (different[:5], outputs[different[0]])
    for a, b in zip(map(meteor.score_of, ours), jar_scores):
        assert a == pytest.approx(b, abs=1e-12)
    total = [0.0] * 23
    for stats in ours:
        total = meteor.add(total, stats)
    assert meteor.score_of(total) == pytest.approx(jar_corpus, abs=1e-12)


def _java(*args: str, lines: list[str]) -> list[str]:
    """Run Java with the jar on the class path, lines on stdin; the lines it prints."""
    result = subprocess.run(["java", "-Dfile.encoding=UTF-8", "-Dstdout.encoding=UTF-8", "-cp",
                             METEOR_JAR, *args], input="\n".join(lines) + "\n", capture_output=True,
                            text=True, encoding="utf-8", check=True)
    return result.stdout.split("\n")[:-1]


STEM_JAVA = """
import java.io.*;
import org.tartarus.snowball.ext.englishStemmer;

public class Stem {
    public static void main(String[] args) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out), false, "UTF-8");
        englishStemmer stemmer = new englishStemmer();
        for (String word; (word = in.readLine()) != null; ) {
            stemmer.setCurrent(word);
            stemmer.stem();
            out.println(stemmer.getCurrent());
        }
        out.flush();
    }
}
"""


@needs_jar
def test_stemmer_equals_the_jar_snowball(tmp_path, e2e_data):
    # every word WordNet knows (147,306) and every word of the E2E test references
    synsets, _ = meteor._wordnet()
    _, refs = metrics.read_references(os.path.join(e2e_data, "testset_w_refs.csv"))
    words = sorted(set(synsets) | {w for group in refs for r in group for w in meteor.words(r)})
    words = [w for w in words if w]
    (tmp_path / "Stem.java").write_text(STEM_JAVA)  # Java 11+ runs a one-file source, no javac
    assert _java(str(tmp_path / "Stem.java"), lines=words) == [meteor._stem(w) for w in words]


@needs_jar
def test_normalizer_equals_the_jar(e2e_data):
    _, refs = metrics.read_references(os.path.join(e2e_data, "testset_w_refs.csv"))
    lines = sorted({r for group in refs for r in group}) + [
        "Mr. Smith's pub costs £20-25.", "U.S.-based diners... e.g. \u201cThe Eagle\u201d -- "
        "1990's, don't No. 5", "No. of seats: 5,000; rating 3.5/5 (high).", "'Quoted' `text`",
        "Inc. is open. Dr. no. 7 at St. James's...", "a.b.c. 1,2,3 ,x x, 4,y", "\u2013 dash\u2013d"]
    jar = _java("edu.cmu.meteor.util.Normalizer", "english", "true", lines=lines)  # its main()
    assert jar == [meteor.normalize(line) for line in lines]
