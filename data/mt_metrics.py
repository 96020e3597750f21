"""The metrics of the paper's WebNLG and DART tables (13 and 14) in pure Python, each equal to the
tool the published numbers come from; data/webnlg/metrics.py and data/dart/metrics.py put them
together as each task's two protocols (the paper's released code, and the official challenge's).

- BLEU: multi_bleu(), as multi-bleu.perl (the WebNLG 2017 challenge's, with -lc; DART's) and
  multi-bleu-detok.perl (GenerationEval's, which the released code runs): corpus BLEU-4 over
  the words as given (detok: over mteval-v13a's tokens, data/e2e/metrics.py's, case kept), each
  output against its closest reference length (on a tie the shorter), where an empty reference
  line counts as a reference of no words, as the scripts read it.
- METEOR 1.5 as the jar scores two files (`java -jar meteor-1.5.jar HYP REF -l en -norm -r N`):
  data/e2e/meteor.py, the E2E metrics' port, with each output as the file holds it.
- TER: tercom 0.7.25 and pyter3, data/tercom.py.

And the ways the protocols prepare text: split_nonword(), the re.split('(\\W)') that the
challenge scripts call "detokenise" and the released decode script "tokenize" (every non-word
character a word of its own); nltk_tokens(), what nltk.word_tokenize then changes in such text
(the released eval.py tokenizes with it before METEOR and TER); ascii() (unidecode), which the
WebNLG challenge applies to both sides.
"""

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import re

from data import tercom
from data.e2e import meteor as meteor_port
from data.e2e.metrics import mteval_tokenize, ngram_counts

# --- preparing text ------------------------------------------------------------------------------

_NONWORD = re.compile(r"(\W)")


def split_nonword(text: str) -> str:
    """' '.join(re.split('(\\W)', text)), whitespace collapsed: 'Five-O.' -> 'Five - O .'"""
    return " ".join(" ".join(_NONWORD.split(text)).split())


def ascii(text: str) -> str:
    """unidecode(text): the WebNLG challenge's transliteration to ASCII ('Piñero' -> 'Pinero')."""
    from unidecode import unidecode

    return unidecode(text)


# nltk.word_tokenize on text that split_nonword() made and lower() lowercased: every word is
# already apart, so all its rules but two change nothing. A double quote, always after a space
# here, is a starting quote (``); its CONTRACTIONS2 split six words (the others need an
# apostrophe inside a word, which this text never has).
_NLTK_SPLITS = {"cannot": ["can", "not"], "gimme": ["gim", "me"], "gonna": ["gon", "na"],
                "gotta": ["got", "ta"], "lemme": ["lem", "me"], "wanna": ["wan", "na"]}


def nltk_tokens(text: str) -> str:
    """' '.join(nltk.word_tokenize(text)) for text split at non-word characters and lowercased."""
    out = []
    for word in text.split():
        out.extend(["``"] if word == '"' else _NLTK_SPLITS.get(word, [word]))
    return " ".join(out)


# --- BLEU ----------------------------------------------------------------------------------------

_PERL_SPACE = re.compile(r"[ \t\n\r\f\v]+")  # perl's \s on bytes: ASCII whitespace
_PERL_LC = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _perl_split(text: str) -> list[str]:
    return [w for w in _PERL_SPACE.split(text) if w]


@dataclasses.dataclass
class Bleu:
    """What multi-bleu(-detok).perl prints: BLEU and its n-gram precisions (fractions), the
    brevity penalty, and the output and reference lengths in words."""
    score: float
    precisions: list[float]
    bp: float
    hyp_len: int
    ref_len: int

    def __str__(self) -> str:
        p = self.precisions
        return (f"BLEU = {100 * self.score:.2f}, {100 * p[0]:.1f}/{100 * p[1]:.1f}/"
                f"{100 * p[2]:.1f}/{100 * p[3]:.1f} (BP={self.bp:.3f}, ratio="
                f"{self.hyp_len / self.ref_len:.3f}, hyp_len={self.hyp_len}, "
                f"ref_len={self.ref_len})")


def multi_bleu(refs: list[list[str]], outputs: list[str], lowercase: bool = False,
               detok: bool = False) -> Bleu:
    """Corpus BLEU-4 of outputs against each one's references (a list per output, empty
    strings included), as multi-bleu.perl [-lc] computes it; detok=True: as
    multi-bleu-detok.perl [-lc], on mteval-v13a's tokens."""
    correct, total = [0] * 5, [0] * 5
    hyp_len = ref_len = 0
    for out, group in zip(outputs, refs, strict=True):
        if lowercase:
            out = out.translate(_PERL_LC)
        words = mteval_tokenize(out, lowercase=False) if detok else _perl_split(out)
        best = {}  # n-gram -> its largest count in one reference
        closest_diff, closest = 9999, 9999
        for ref in group:
            ref_words = mteval_tokenize(ref, lowercase=False) if detok else [ref]
            ref_words = _perl_split((" ".join(ref_words)).translate(_PERL_LC) if lowercase
                                    else " ".join(ref_words))
            diff = abs(len(words) - len(ref_words))
            if diff < closest_diff:
                closest_diff, closest = diff, len(ref_words)
            elif diff == closest_diff:
                closest = min(closest, len(ref_words))
            for g, c in ngram_counts(ref_words, 4).items():
                if c > best.get(g, 0):
                    best[g] = c
        hyp_len += len(words)
        ref_len += closest
        for g, c in ngram_counts(words, 4).items():
            total[len(g)] += c
            if g in best:
                correct[len(g)] += min(c, best[g])
    precisions = [correct[n] / total[n] if total[n] else 0.0 for n in range(1, 5)]
    if ref_len == 0 or hyp_len == 0:  # (the perl scripts stop, or divide by zero)
        return Bleu(0.0, precisions, 0.0, hyp_len, max(ref_len, 1))
    bp = math.exp(1 - ref_len / hyp_len) if hyp_len < ref_len else 1.0
    logs = [math.log(p) if p else -9999999999 for p in precisions]
    return Bleu(bp * math.exp(sum(logs) / 4), precisions, bp, hyp_len, ref_len)


# --- METEOR and TER ------------------------------------------------------------------------------


def meteor_statistics(*jobs: tuple[list[list[str]], list[str]]) -> list[list[list[float]]]:
    """For each job (references per output, outputs): each output's METEOR statistics against
    its best reference (the first of equals), as the jar finds them when it reads the outputs and
    N references per output (empty lines too) from files with -norm. A pair of texts that several
    jobs share is scored once, and the pairs are spread over the machine's cores."""
    words = {}  # text -> its normalized words
    for refs, outputs in jobs:
        for text in (*outputs, *(ref for group in refs for ref in group)):
            if text not in words:
                words[text] = tuple(meteor_port.words(text))
    pairs = list(dict.fromkeys((words[out], words[ref]) for refs, outputs in jobs
                               for out, group in zip(outputs, refs, strict=True) for ref in group))
    stats = dict(zip(pairs, parallel(_meteor_part, pairs)))
    return [[max((stats[words[out], words[ref]] for ref in group), key=meteor_port.score_of)
             for out, group in zip(outputs, refs)] for refs, outputs in jobs]


def _meteor_part(pairs: list[tuple]) -> list[list[float]]:
    vocabulary = {w for out, ref in pairs for w in (*out, *ref)}
    table = meteor_port.paraphrase_table(vocabulary)
    return [meteor_port.statistics(list(out), list(ref), table) for out, ref in pairs]


def meteor(statistics: list[list[float]]) -> float:
    """The jar's Final score from the segments' statistics (meteor_statistics)."""
    total = [0.0] * 23
    for stats in statistics:
        total = meteor_port.add(total, stats)
    return meteor_port.score_of(total)


def tercom_segments(refs: list[list[str]], outputs: list[str]) -> list[tuple]:
    """tercom.ter, its segments spread over the machine's cores."""
    return parallel(_tercom_part, list(zip(outputs, refs, strict=True)))


def _tercom_part(items: list[tuple]) -> list[tuple]:
    return tercom.ter([out for out, _ in items], [refs for _, refs in items])


def pyter_segments(refs: list[list[str]], outputs: list[str]) -> list[float]:
    """The released eval.py's TER of each output: pyter3's against each reference (an empty one
    scores 1), the lowest; the outputs spread over the machine's cores."""
    return parallel(_pyter_part, list(zip(outputs, refs, strict=True)))


def _pyter_part(items: list[tuple]) -> list[float]:
    return [min(tercom.pyter(out.split(), ref.split()) if ref else 1.0
                for ref in dict.fromkeys(refs)) for out, refs in items]


# --- on every core ---------------------------------------------------------------------------


def parallel(fn, items: list) -> list:
    """fn(part) -> results, over parts of items, on every core (in processes: each segment's
    score is its own), the results in items' order. Small jobs stay in this process."""
    workers = min(os.cpu_count() or 1, 8)
    if workers == 1 or len(items) < 200:
        return fn(items)
    size = -(-len(items) // (4 * workers))  # small parts: the segments' costs differ
    parts = [items[i:i + size] for i in range(0, len(items), size)]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return [result for part in pool.map(fn, parts) for result in part]
