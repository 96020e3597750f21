"""The five E2E NLG Challenge metrics, equal to the official scorer, without Perl or Java.

    python -m data.e2e.metrics REFS PREDS     (or python data/e2e/metrics.py REFS PREDS)
    SCORES:
    ==============
    BLEU: 0.6616
    NIST: 8.5446
    METEOR: 0.4504
    ROUGE_L: 0.6914
    CIDEr: 2.2312

In Python: `refs, preds = load(refs_path, preds_path)`, then `score(refs, preds)` returns
{"BLEU": ..., "NIST": ..., "METEOR": ..., "ROUGE_L": ..., "CIDEr": ...} for refs (a list of
references per MR) and preds (one string per MR).

The official scorer (tuetschek/e2e-metrics, measure_scores.py) computes
- BLEU and NIST with NIST's mteval-v13a Perl script (its own tokenizer, case-insensitive), modified
  for a variable number of references per MR: every MR's references become parallel "reference
  systems", padded with empty strings, which are skipped. NIST's length penalty compares the output
  length with the average reference length: all reference words over the average number of
  references per MR (7.45 on the test set), not over the 45 padded slots;
- ROUGE-L (beta 1.2), CIDEr-D and METEOR with the MS-COCO caption code, after Stanford CoreNLP's
  PTBTokenizer (Java; ptb_tokenizer.py is a pure-Python port that gives the jar's tokens on all
  50,598 E2E references and system outputs) and the removal of punctuation tokens.

All five are pure Python, written from those definitions, and equal the official numbers to all
four printed decimals on six public cases (tests/test_metrics.py, against
tests/fixtures/e2e-metrics/SCORES*.md); ROUGE-L and CIDEr also equal pycocoevalcap's own code to
1e-12, and METEOR the jar's statistics for every MR (tests/test_meteor.py).

METEOR 1.5 (data/scorers/meteor.py, shared with WebNLG and DART) matches words through a stemmer,
WordNet synonyms and a paraphrase table: it reads the jar's word lists and table from the PyPI
package pycocoevalcap, which ships them (without it, `METEOR: n/a (needs the pycocoevalcap package
for METEOR's word lists)`, and the other four are still scored, exit code 0). No Java is needed;
`--meteor jar` runs the official jar instead (it needs Java too and takes 11 s to start) to check
the port against; `--no-meteor` prints `METEOR: skipped (--no-meteor)`. Timings: BENCHMARKS.md.

Inputs, as the official script takes them: references as CSV/TSV with MR and reference columns
(rows sharing an MR on consecutive lines are one MR's references) or plain text (one reference per
line, MRs separated by an empty line); predictions as CSV/TSV (MR, output) or plain text with one
output per line, in the same MR order. An empty prediction scores as empty.

One deliberate difference: the official script splits CSV lines on '","' and strips a quote
character from both ends of every field, which also deletes a real leading apostrophe (2 of the
4,693 test references start with one). Here CSV is parsed with Python's csv module, so a CSV and
the equivalent text file give the same references.
"""

import argparse
import csv
import io
import math
import os
import re
import subprocess
import sys
from collections import Counter

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.e2e.ptb_tokenizer import ptb_tokenize_lines  # noqa: E402
from data.scorers import meteor as meteor_port  # noqa: E402
from data.scorers.meteor import meteor_jar, meteor_missing, meteor_note  # noqa: E402
from data.scorers.mteval import mteval_tokenize, ngram_counts  # noqa: E402
from plumbing.errors import UserError  # noqa: E402

# -------------------------------------------------------------------------------------------------
# Reading references and predictions


class InputError(UserError):
    """A problem with an input file, worded for the person who made it."""


def _read_text(path: str, blank: bool = False) -> str:
    """The file's text; blank: a file of empty lines is data (outputs that are all empty)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                         f"{e.start}); convert it to UTF-8") from None
    if not (text if blank else text.strip()):
        raise InputError(f"{path} is empty")
    return text.removeprefix("\ufeff")


def _is_table(path: str) -> bool:
    return path.lower().endswith((".csv", ".tsv"))


def _read_table(path: str, what: str) -> list[tuple[str, str]]:
    """(MR, text) rows of a CSV or TSV file, header skipped.

    Python's csv module parses the quoting. (measure_scores.py splits lines on '","' and then
    strips a quote character from both ends of every field, which also removes a real apostrophe:
    2 of the 4,693 test references start with one. Here CSV and text references read the same.)
    """
    text = _read_text(path)
    for bad, good in (("Ł", "£"), ("Â£", "£"), ("Ã©", "é"), ("ã©", "é")):  # mojibake in old files
        text = text.replace(bad, good)
    first_line = text.split("\n", 1)[0]
    rows = [row for row in csv.reader(io.StringIO(text), delimiter="\t" if "\t" in first_line
                                      else ",") if any(cell.strip() for cell in row)]
    if rows and re.match(r'^"?mr', rows[0][0], re.I):  # header
        rows = rows[1:]
    bad = [i for i, row in enumerate(rows, start=2) if len(row) != 2]
    if bad or not rows:
        raise InputError(f"{path}: expected two columns (MR, {what}) on every row; "
                         + (f"row {bad[0]} has {len(rows[bad[0] - 2])}" if bad else "no rows"))
    return [(mr.strip(), out.strip()) for mr, out in rows]


def read_references(path: str) -> tuple[list[str] | None, list[list[str]]]:
    """(MRs or None, references grouped by MR) from a CSV/TSV or a plain-text file."""
    if _is_table(path):
        mrs, refs = [], []
        for mr, ref in _read_table(path, "reference"):
            if not mrs or mr != mrs[-1]:
                mrs.append(mr)
                refs.append([])
            refs[-1].append(ref)
        return mrs, refs
    refs = [[]]
    for line in _read_text(path).splitlines():
        if line.strip():
            refs[-1].append(line.strip())
        elif refs[-1]:
            refs.append([])
    if not refs[-1]:
        refs.pop()
    if len(refs) == 1:  # no empty lines: one reference per line (as the official script reads it)
        refs = [[ref] for ref in refs[0]]
    return None, refs


def read_predictions(path: str) -> tuple[list[str] | None, list[str]]:
    """(MRs or None, one output per MR) from a CSV/TSV or a plain-text file (one per line)."""
    if _is_table(path):
        rows = _read_table(path, "output")
        return [mr for mr, _ in rows], [out for _, out in rows]
    return None, [line.strip() for line in _read_text(path, blank=True).splitlines()]


def load(refs_path: str, preds_path: str) -> tuple[list[list[str]], list[str]]:
    """References and predictions, checked to describe the same MRs in the same order."""
    ref_mrs, refs = read_references(refs_path)
    pred_mrs, preds = read_predictions(preds_path)
    if len(preds) != len(refs):
        raise InputError(f"{preds_path} has {len(preds)} predictions but {refs_path} has "
                         f"{len(refs)} MRs; give one prediction per MR, in the same order")
    if ref_mrs and pred_mrs:
        wrong = [i for i, (a, b) in enumerate(zip(ref_mrs, pred_mrs), start=1) if a != b]
        if wrong:
            raise InputError(f"{preds_path}: the MR of prediction {wrong[0]} is not the MR of "
                             f"reference group {wrong[0]} in {refs_path} ({len(wrong)} differ)")
    return refs, preds


# -------------------------------------------------------------------------------------------------
# BLEU and NIST: NIST mteval-v13a as the E2E challenge runs it (mteval-v13a-sig.pl)
#
# Every MR's references are written as parallel "reference systems", padded with empty strings to
# the largest number of references; the empty ones are skipped. NIST's length penalty compares the
# prediction words with the average reference length: all reference words divided by the average
# number of (non-empty) references per MR, mteval's $cum_ref_count / $cum_seg_count (4,693 / 630
# on the test set), not by the padded count (45). BLEU is corpus BLEU-4 with the
# closest reference length (ties: the shorter); NIST-5 weighs each matched n-gram by its
# information, -log2(count(w1..wn) / count(w1..wn-1)), counted over all references.

def bleu_nist(refs: list[list[str]], preds: list[str]) -> tuple[float, float]:
    """Corpus BLEU-4 and NIST-5 of predictions (one per MR) against each MR's references."""
    refs = [[mteval_tokenize(r) for r in group] for group in refs]
    preds = [mteval_tokenize(p) for p in preds]
    ref_ngrams = [[ngram_counts(ref, 5) for ref in group] for group in refs]

    # n-gram information from all references (Perl quirk kept: an (n-1)-gram that is the single
    # word "0" counts as false, so such n-grams use the unigram formula)
    counts = Counter()
    for group in ref_ngrams:
        for ref in group:
            counts.update(ref)
    total_words = sum(len(ref) for group in refs for ref in group)
    info = {g: -math.log2(c / (counts[g[:-1]] if len(g) > 1 and g[:-1] != ("0",) else total_words))
            for g, c in counts.items()}

    match, hyp_count, ref_count, hyp_info = [0] * 6, [0] * 6, [0] * 6, [0.0] * 6
    ref_length = 0
    for group, grams, hyp in zip(refs, ref_ngrams, preds):
        best = {}  # n-gram -> its largest count in one reference
        for ref in grams:
            for g, c in ref.items():
                if c > best.get(g, 0):
                    best[g] = c
        closest = None
        for ref in group:
            for n in range(1, 6):
                ref_count[n] += max(len(ref) - n + 1, 0)
            if closest is None:
                closest = len(ref)
            elif ref and (abs(len(hyp) - len(ref)), len(ref)) < (abs(len(hyp) - closest), closest):
                closest = len(ref)
        ref_length += closest
        for n in range(1, 6):
            hyp_count[n] += max(len(hyp) - n + 1, 0)
        for g, c in ngram_counts(hyp, 5).items():
            if g in best:
                clipped = min(c, best[g])
                match[len(g)] += clipped
                hyp_info[len(g)] += info[g] * clipped

    # BLEU (mteval's bleu_score, with its smoothing of zero matches, which corpus level never needs)
    log_precision, smooth = 0.0, 1
    for n in range(1, 5):
        if hyp_count[n] == 0:
            continue
        if match[n] == 0:
            smooth *= 2
            log_precision += math.log(1 / (smooth * hyp_count[n]))
        else:
            log_precision += math.log(match[n] / hyp_count[n])
    brevity = math.exp(min(0.0, 1 - ref_length / hyp_count[1])) if hyp_count[1] else 0.0
    bleu = math.exp(log_precision / 4) * brevity

    # NIST, with its length penalty on (prediction words / average reference words)
    refs_per_mr = sum(1 for group in refs for ref in group if ref) / len(refs)
    ratio = hyp_count[1] / (ref_count[1] / refs_per_mr)
    beta = -math.log(0.5) / math.log(1.5) ** 2
    penalty = 1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-beta * math.log(ratio) ** 2)
    nist = sum(hyp_info[n] / max(hyp_count[n], 1) for n in range(1, 6)) * penalty
    return bleu, nist


# -------------------------------------------------------------------------------------------------
# The COCO tokenization: the PTB tokenizer (ptb_tokenizer.py), then the removal of punctuation tokens

# What pycocoevalcap removes after tokenizing. The bracket names are upper case here but lower case
# in the tokenizer's output (-lowerCase), so "-lrb-" and "-rrb-" stay: the official scores keep them.
_COCO_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",",
                     ":", "-", "--", "...", ";"}


def coco_tokenize(lines: list[str]) -> list[str]:
    return [" ".join(t for t in tokens if t not in _COCO_PUNCTUATION)
            for tokens in ptb_tokenize_lines(lines)]


# -------------------------------------------------------------------------------------------------
# ROUGE-L and CIDEr-D, as in the COCO caption code (pycocoevalcap rouge.py and cider_scorer.py)


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(refs: list[list[str]], preds: list[str], beta: float = 1.2) -> float:
    """Mean over MRs of the LCS F-measure (beta 1.2) from the best precision and best recall
    over the MR's references. Inputs are COCO-tokenized strings, split on single spaces."""
    scores = []
    for group, pred in zip(refs, preds):
        hyp = pred.split(" ")
        lcs = [(_lcs(ref.split(" "), hyp), len(ref.split(" "))) for ref in group]
        precision = max(common / len(hyp) for common, _ in lcs)
        recall = max(common / length for common, length in lcs)
        scores.append((1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
                      if precision and recall else 0.0)
    return sum(scores) / len(scores)


def cider_d(refs: list[list[str]], preds: list[str], n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D: tf-idf weighted n-gram cosine similarity (n = 1..4, idf over the references of
    all MRs), clipped, with a Gaussian penalty on the length difference, times 10, averaged."""
    def counts(sentence):
        words = sentence.split()
        return Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                       for i in range(len(words) - k + 1))

    ref_counts = [[counts(r) for r in group] for group in refs]
    document_frequency = Counter(g for group in ref_counts for g in set().union(*group))
    log_n_docs = math.log(len(refs))

    def vector(cnts):
        vec = [{} for _ in range(n)]
        for g, tf in cnts.items():
            vec[len(g) - 1][g] = tf * (log_n_docs - math.log(max(1.0, document_frequency[g])))
        norms = [math.sqrt(sum(v * v for v in vec_n.values())) for vec_n in vec]
        length = sum(tf for g, tf in cnts.items() if len(g) == 2)  # COCO counts bigrams here
        return vec, norms, length

    scores = []
    for group, pred in zip(ref_counts, preds):
        hyp_vec, hyp_norms, hyp_length = vector(counts(pred))
        total = [0.0] * n
        for ref in group:
            ref_vec, ref_norms, ref_length = vector(ref)
            penalty = math.exp(-((hyp_length - ref_length) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                value = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0)
                            for g, w in hyp_vec[k].items())
                if hyp_norms[k] and ref_norms[k]:
                    value /= hyp_norms[k] * ref_norms[k]
                total[k] += value * penalty
        scores.append(sum(total) / n / len(group) * 10.0)
    return sum(scores) / len(scores)


# -------------------------------------------------------------------------------------------------
# METEOR 1.5: the Python port (data/scorers/meteor.py, the default) or the official jar through its
# stdio protocol, which the port equals (tests/test_meteor.py) and which stays here to check it


class MeteorError(UserError, RuntimeError):
    """The METEOR jar started but did not answer (a broken Java, or too little memory)."""


class Meteor:
    """A running METEOR jar. It loads its paraphrase table (about 10 s) as soon as it starts, so
    start it before the other metrics; one process can score several sets. Close it when done."""

    def __init__(self, jar: str):
        self.process = subprocess.Popen(
            ["java", "-jar", "-Xmx2G", jar, "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=os.path.dirname(jar), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, encoding="utf-8")

    def _send(self, line: str):
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except OSError:  # the jar has exited: _receive says so
            pass

    def _receive(self) -> str:
        answer = self.process.stdout.readline().strip()
        if not re.fullmatch(r"[0-9.eE+\- ]+", answer):
            raise MeteorError(f"the METEOR jar did not answer (exit code {self.process.poll()}, "
                              f"output {answer[:60]!r}); check `java -version`, or skip METEOR "
                              "with --no-meteor")
        return answer

    def score(self, refs: list[list[str]], preds: list[str]) -> float:
        """Corpus METEOR of COCO-tokenized predictions, as pycocoevalcap's meteor.py asks it:
        statistics per MR ("SCORE"), then one "EVAL" over all of them."""
        return self.evaluate(self.statistics(refs, preds))[1]

    def statistics(self, refs: list[list[str]], preds: list[str]) -> list[list[float]]:
        """The jar's SCORE answer for each MR: 23 sufficient statistics (meteor.statistics)."""
        stats = []
        for group, pred in zip(refs, preds):
            self._send(" ||| ".join(["SCORE", *group, meteor_port.as_coco_sends(pred)]))
            stats.append([float(x) for x in self._receive().split()])
        return stats

    def evaluate(self, stats: list[list[float]]) -> tuple[list[float], float]:
        """The jar's EVAL answer: the score of each MR's statistics, then the corpus score."""
        self._send(" ||| ".join(["EVAL", *(" ".join(map(repr, s)) for s in stats)]))
        return [float(self._receive()) for _ in stats], float(self._receive())

    def close(self):
        try:
            self.process.stdin.close()
        except OSError:  # what was still buffered could not reach a jar that has exited
            pass
        self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -------------------------------------------------------------------------------------------------
# Everything together

NAMES = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def score(refs: list[list[str]], preds: list[str], meteor: bool | str | Meteor = True) -> dict:
    """The five metrics for predictions (one per MR) against references (a list per MR).
    meteor: True or "python" (data/scorers/meteor.py), "jar" (the official jar, started here), a
    running Meteor jar (to score several sets with one), or False. METEOR is None with False or where
    it cannot run (meteor_missing() says why). A jar that does not answer raises MeteorError."""
    if len(refs) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} MRs")
    if not all(refs):
        raise ValueError("every MR needs at least one reference")
    jar = meteor_jar() if meteor == "jar" else None
    running = Meteor(jar) if jar else (meteor if isinstance(meteor, Meteor) else None)
    try:
        bleu, nist = bleu_nist(refs, preds)
        flat = iter(coco_tokenize([r for group in refs for r in group]))
        coco_refs = [[next(flat) for _ in group] for group in refs]
        coco_preds = coco_tokenize(preds)
        if running:
            meteor_score = running.score(coco_refs, coco_preds)
        elif meteor in (True, "python") and not meteor_missing():
            meteor_score = meteor_port.corpus_score(coco_refs, coco_preds)
        else:
            meteor_score = None
        return {"BLEU": bleu, "NIST": nist, "METEOR": meteor_score,
                "ROUGE_L": rouge_l(coco_refs, coco_preds), "CIDEr": cider_d(coco_refs, coco_preds)}
    finally:
        if jar:
            running.close()


def format_scores(scores: dict, meteor_requested: bool = True, *,
                  implementation: str = "python") -> str:
    """The official script's lines; a missing METEOR says why (meteor_note)."""
    note = meteor_note(meteor_requested, implementation=implementation)
    return "\n".join(f"{name}: {note if scores[name] is None else format(scores[name], '.4f')}"
                     for name in NAMES)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="data.e2e.metrics", allow_abbrev=False, description="Score E2E NLG outputs with the official challenge metrics "
                    "(BLEU, NIST, METEOR, ROUGE-L, CIDEr).")
    parser.add_argument("refs", help="references: CSV/TSV (MR, reference) or text (one per line, "
                                     "MRs separated by an empty line)")
    parser.add_argument("preds", help="predictions: CSV/TSV (MR, output) or text (one per line)")
    parser.add_argument("--meteor", choices=("python", "jar"), default="python",
                        help="METEOR from data/scorers/meteor.py (default; it reads "
                             "pycocoevalcap's word lists) or from the official jar (it also needs "
                             "Java), to check the other")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR")
    args = parser.parse_args(argv)
    try:
        refs, preds = load(args.refs, args.preds)
        scores = score(refs, preds, meteor=not args.no_meteor and args.meteor)
    except (InputError, MeteorError) as e:
        print(f"data.e2e.metrics: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data.e2e.metrics: Ctrl-C: stopped; nothing was written", file=sys.stderr)
        return 130
    if empty := sum(not pred for pred in preds):
        print(f"{empty:,} of {len(preds):,} outputs {'is' if empty == 1 else 'are'} empty, "
              "scored as empty outputs (as the official script scores them)")
    print("SCORES:\n==============")
    print(format_scores(scores, meteor_requested=not args.no_meteor, implementation=args.meteor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
