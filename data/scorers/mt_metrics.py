"""The metrics of the paper's WebNLG and DART tables (13 and 14) in pure Python, each equal to the
tool the published numbers come from; data/webnlg/metrics.py and data/dart/metrics.py put them
together as each task's two protocols (the paper's released code, and the official challenge's).

- BLEU: multi_bleu(), as multi-bleu.perl (the WebNLG 2017 challenge's, with -lc; DART's) and
  multi-bleu-detok.perl (GenerationEval's, which the released code runs): corpus BLEU-4 over
  the words as given (detok: over mteval-v13a's tokens, data/e2e/metrics.py's, case kept), each
  output against its closest reference length (on a tie the shorter), where an empty reference
  line counts as a reference of no words, as the scripts read it.
- METEOR 1.5 as the jar scores two files (`java -jar meteor-1.5.jar HYP REF -l en -norm -r N`):
  data/scorers/meteor.py, the E2E metrics' port, with each output as the file holds it.
- TER: tercom 0.7.25 and pyter3, data/scorers/tercom.py.

And the ways the protocols prepare text: split_nonword(), the re.split('(\\W)') that the
challenge scripts call "detokenise" and the released decode script "tokenize" (every non-word
character a word of its own); nltk_tokens(), what nltk.word_tokenize then changes in such text
(the released eval.py tokenizes with it before METEOR and TER); ascii() (unidecode), which the
WebNLG challenge applies to both sides.
"""

import argparse
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import re

from data.scorers import meteor as meteor_port
from data.scorers import tercom
from data.scorers.meteor import meteor_missing
from data.scorers.mteval import mteval_tokenize, ngram_counts

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


# --- the two protocols ---------------------------------------------------------------------------

PROTOCOLS = {  # (each task's metrics.py says what its challenge protocol is)
    "released": "the paper's released code: GenerationEval's eval.py, 6 references",
    "challenge": "the official challenge scripts: 3 references, multi-bleu.perl, tercom",
}
TER_NAMES = {"released": "pyter3, the mean over sentences", "challenge": "tercom 0.7.25"}


@dataclasses.dataclass
class Protocol:
    """One protocol's inputs: per input its references and output; the subsets scored (name ->
    the inputs' rows); kind "released" or "challenge", and the challenge's options."""
    kind: str
    references: list[list[str]]
    outputs: list[str]
    subsets: dict[str, list[int]]
    transliterate: bool = False  # challenge: unidecode both sides (WebNLG's evaluation.py)
    bleu_lc: bool = False  # challenge: multi-bleu.perl -lc
    meteor_refs: int = 3  # challenge: METEOR's -r, empty lines padding the references
    ter_drops_empty: bool = False  # challenge: tercom reads no empty 2nd or 3rd reference (DART)


def prepared(protocol: Protocol) -> tuple[list[list[str]], list[str]]:
    """The protocol's texts, as its scripts hand them to BLEU: (references, outputs).

    released: gpt2_decode.py --tokenize --lower: lowercased, split at non-word characters, the
    first 6 references (a missing one is the first again). challenge: split at non-word
    characters, lowercased (and transliterated), the first 3 references, the missing ones empty
    lines."""
    lower, split = str.lower, split_nonword
    if protocol.kind == "released":
        refs = [[split(lower(ref.strip())) for ref in group] for group in protocol.references]
        return ([[group[k] if k < len(group) else group[0] for k in range(6)] for group in refs],
                [split(lower(out)) for out in protocol.outputs])
    if protocol.transliterate:  # (evaluation.py: unidecode(line.strip()), then on .lower())
        hyps = [split(ascii(lower(ascii(out.strip())))) for out in protocol.outputs]
        refs = [[ascii(lower(split(ref))) for ref in group[:3]] for group in protocol.references]
    else:
        hyps = [split(lower(out.strip())) for out in protocol.outputs]
        refs = [[lower(split(ref)) for ref in group[:3]] for group in protocol.references]
    return [group + [""] * (3 - len(group)) for group in refs], hyps


def score(protocols: dict[str, Protocol], meteor: bool = True) -> dict:
    """Each protocol's BLEU, METEOR and TER on each of its subsets, {name: {subset: {"BLEU",
    "METEOR", "TER"}}} as fractions (METEOR None without meteor; a challenge's also "bleu", the
    Bleu, and "tercom", tercom's totals), with each input's own under "segments" ("METEOR", and
    "TER": the released protocol's pyter score, the challenge's (edits, words)). METEOR is
    None too where it cannot run here (meteor_missing() says why)."""
    meteor = meteor and not meteor_missing()
    texts = {name: prepared(p) for name, p in protocols.items()}
    jobs = {}  # name -> what METEOR and TER read: (references, outputs)
    for name, p in protocols.items():
        refs, hyps = texts[name]
        if p.kind == "released":  # eval.py tokenizes with nltk for METEOR and TER
            jobs[name] = ([[nltk_tokens(r) for r in group] for group in refs],
                          [nltk_tokens(h) for h in hyps])
        elif p.ter_drops_empty:  # (DART's prepare_files.py: a 2nd or 3rd reference line that
            jobs[name] = ([group[:1] + [r for r in group[1:] if r] for group in refs], hyps)
        else:  # is empty is not written for tercom; WebNLG's evaluation.py writes every text)
            jobs[name] = ([group[:len(given[:3])] for group, given in zip(refs, p.references)],
                          hyps)
    meteor_jobs = {name: ([group + [""] * (p.meteor_refs - len(group)) for group in jobs[name][0]]
                          if p.kind == "challenge" else jobs[name][0], jobs[name][1])
                   for name, p in protocols.items()}
    stats = dict(zip(protocols, meteor_statistics(*meteor_jobs.values()))) if meteor else {}
    results = {}
    for name, p in protocols.items():
        (refs, hyps), (ter_refs, ter_hyps) = texts[name], jobs[name]
        segment_meteor = ([meteor_port.score_of(s) for s in stats[name]] if meteor else None)
        if p.kind == "released":
            ter = pyter_segments(ter_refs, ter_hyps)
            results[name] = {"segments": {"METEOR": segment_meteor, "TER": ter}}
            for subset, rows in p.subsets.items():
                results[name][subset] = {
                    "BLEU": multi_bleu([refs[i] for i in rows], [hyps[i] for i in rows],
                                       detok=True).score,
                    "METEOR": meteor_of(stats, name, rows),
                    "TER": sum(ter[i] for i in rows) / len(rows)}
        else:
            ter = tercom_segments(ter_refs, ter_hyps)
            results[name] = {"segments": {"METEOR": segment_meteor,
                                          "TER": [s[:2] for s in ter]}}
            for subset, rows in p.subsets.items():
                bleu = multi_bleu([refs[i] for i in rows], [hyps[i] for i in rows],
                                  lowercase=p.bleu_lc)
                totals = tercom.total([ter[i] for i in rows])
                results[name][subset] = {"BLEU": bleu.score, "METEOR": meteor_of(stats, name, rows),
                                         "TER": totals["score"], "bleu": bleu, "tercom": totals}
    return results


def parser(prog: str, what: str, outputs: str, data: str) -> argparse.ArgumentParser:
    """The scoring command of a triples task (data.webnlg.metrics, data.dart.metrics): the
    outputs file, --data, --split, --protocol and --no-meteor (protocol_names reads it)."""
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False,
                                description=f"Score {what} outputs: BLEU, METEOR and TER.")
    p.add_argument("outputs", help=outputs)
    p.add_argument("--data", help=data)
    p.add_argument("--split", default="test", choices=("test", "dev"),
                   help="the split the outputs are for")
    p.add_argument("--protocol", default="both", choices=(*PROTOCOLS, "both"),
                   help="released: the paper's released code's (comparable with its table); "
                        "challenge: the official challenge's scripts; both (default)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR")
    return p


def protocol_names(choice: str) -> tuple[str, ...]:
    """--protocol's protocols: one, or both."""
    return tuple(PROTOCOLS) if choice == "both" else (choice,)


def meteor_of(stats: dict, name: str, rows: list[int]) -> float | None:
    return meteor([stats[name][i] for i in rows]) if name in stats else None


def format_scores(scores: dict, kind: str, missing: str = "n/a") -> list[str]:
    """'BLEU: 45.13', 'METEOR: 0.3764', 'TER: 0.4744 (tercom 0.7.25)': the rounding of the
    tools' own output (BLEU x100 with 2 digits); missing: what METEOR's line says without one
    (the commands: why, meteor_note)."""
    meteor_text = missing if scores["METEOR"] is None else f"{scores['METEOR']:.4f}"
    return [f"BLEU: {100 * scores['BLEU']:.2f}", f"METEOR: {meteor_text}",
            f"TER: {scores['TER']:.4f} ({TER_NAMES[kind]})"]


def grouped(entries: list, texts) -> tuple[list[str], list[list[str]], list[int | None]]:
    """A data set's distinct inputs, as the released decode script (gpt2_decode.py) groups the
    converter's lines by their context: each context in the order it first comes, the texts of
    all its entries (texts(entry): those the converter writes; as the script reads them, cut at
    a blank line and stripped), and for each entry the row of its context (None for an entry
    without texts: it has no line)."""
    rows, references, of_entry = {}, [], []
    for e in entries:
        mine = texts(e)
        if not mine:
            of_entry.append(rows.get(e.context))
            continue
        if e.context not in rows:
            rows[e.context] = len(references)
            references.append([])
        references[rows[e.context]].extend(text.split("\n\n")[0].strip() for text in mine)
        of_entry.append(rows[e.context])
    return list(rows), references, of_entry


def first_inputs(entries: list, texts, n: int) -> list:
    """The entries of the first n distinct inputs (grouped()): what a decode of the first n
    scores."""
    contexts = set(grouped(entries, texts)[0][:n])
    return [e for e in entries if e.context in contexts]


def read_outputs(path: str, contexts: list[str]) -> list[str]:
    """The outputs of a UTF-8 file for the split's distinct inputs (their contexts, in order):
    one per line, an output for each input; or sample.py's predictions (a .tsv: a header, then
    context and output per row, for all the inputs or the first ones; each row's context is
    checked). An empty output is an output, as the official scripts score it: empty."""
    import csv
    import io

    from data.files import read_text
    from plumbing.cli import plural
    from plumbing.errors import UserError

    text = read_text(path)
    if not str(path).lower().endswith(".tsv"):
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) != len(contexts):
            raise UserError(f"{path} has {plural(len(lines), 'line')}, but the split has "
                            f"{plural(len(contexts), 'input')}: one output per line, in the "
                            "data's order")
        return [line.removesuffix("\r") for line in lines]
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    if not rows or rows[0][1:] != ["output"]:
        raise UserError(f"{path} is not sample.py's predictions (a header 'triples<TAB>output', "
                        "then an input and its output per row): give a .tsv in that form, or a "
                        "text file with one output per line")
    rows = rows[1:]
    if len(rows) > len(contexts):
        raise UserError(f"{path} has {plural(len(rows), 'row')} of predictions, but the split "
                        f"has {plural(len(contexts), 'input')}")
    for n, (row, context) in enumerate(zip(rows, contexts), start=2):
        if len(row) != 2:
            raise UserError(f"{path}, row {n}: {len(row)} columns; sample.py writes two (the "
                            "input, its output)")
        if row[0] != context:
            raise UserError(f"{path}, row {n}: its input is not the split's input {n - 1} "
                            f"({context[:60]!r}): predictions for another split or data set?")
    return [output for _, output in rows]


def describe_outputs(outputs: list[str], inputs: int, split: str) -> str:
    """What a scoring command scores: '1,862 outputs for the test split's 1,862 inputs', with
    how many are empty (each is scored as an empty output, as the official scripts score it)."""
    from plumbing.cli import plural

    line = (f"{plural(len(outputs), 'output')} for the {split} split's "
            + (f"{inputs:,} inputs" if len(outputs) == inputs
               else f"first {len(outputs):,} of {inputs:,} inputs"))
    if empty := sum(not out.strip() for out in outputs):
        line += (f"; {empty:,} {'is' if empty == 1 else 'are'} empty, scored as empty outputs "
                 "(as the official scripts score them)")
    return line


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
