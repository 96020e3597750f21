"""The five E2E NLG Challenge metrics, equal to the official scorer, without Perl or CoreNLP.

    python metrics.py REFS PREDS        ->  BLEU: 0.6616  NIST: 8.5446  METEOR: ...  (one per line)

The official scorer (tuetschek/e2e-metrics, measure_scores.py) computes
- BLEU and NIST with NIST's mteval-v13a Perl script (its own tokenizer, case-insensitive), modified
  for a variable number of references per MR;
- ROUGE-L, CIDEr and METEOR with the MS-COCO caption code, after Stanford CoreNLP's PTBTokenizer
  (Java) and the removal of punctuation tokens.
BLEU, NIST, ROUGE-L and CIDEr below are pure Python, written from those definitions, and equal the
official numbers to all four printed decimals (tests/test_metrics.py). METEOR 1.5 matches words
through WordNet synonyms and a 65 MB paraphrase table, so it runs the official METEOR jar when Java
and the PyPI package pycocoevalcap (which ships the jar and the table) are installed, and is
reported as n/a otherwise.

Inputs, as the official script takes them: references as CSV/TSV with MR and reference columns
(rows sharing an MR on consecutive lines are one MR's references) or plain text (one reference per
line, MRs separated by an empty line); predictions as CSV/TSV (MR, output) or plain text with one
output per line, in the same MR order.
"""

import argparse
import csv
import functools
import io
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

# -------------------------------------------------------------------------------------------------
# Reading references and predictions


class InputError(ValueError):
    """A problem with an input file, worded for the person who made it."""


def _read_text(path: str) -> str:
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
    if not text.strip():
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
    return None, [line.strip() for line in _read_text(path).splitlines()]


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

# mteval lowercases A-Z only, and puts spaces around the ASCII punctuation in its character class
# [{-~[-` -&(-+:-@/], that is all of it but ' - . , (the last two follow below).
_MTEVAL_CHARS = str.maketrans({**{c: c.lower() for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
                               **{c: f" {c} " for c in "{|}~[\\]^_`!\"#$%&()*+:;<=>?@/"}})


def mteval_tokenize(text: str) -> list[str]:
    """mteval-v13a's tokenization() without -c: ASCII lowercase, punctuation split off."""
    text = re.sub(r"\s+", " ", text).replace("<skipped>", "")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = f" {text} ".translate(_MTEVAL_CHARS)
    text = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", text)  # . and , unless preceded by a digit
    text = re.sub(r"([\.,])([^0-9])", r" \1 \2", text)  # . and , unless followed by a digit
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)  # - after a digit
    return text.split()


def _ngrams(words: list[str], max_n: int) -> Counter:
    """Counts of all n-grams of words for n = 1..max_n, as tuples."""
    counts = Counter()
    for n in range(1, max_n + 1):
        counts.update(zip(*(words[i:] for i in range(n))))
    return counts


def bleu_nist(refs: list[list[str]], preds: list[str]) -> tuple[float, float]:
    """Corpus BLEU-4 and NIST-5 of predictions (one per MR) against each MR's references."""
    refs = [[mteval_tokenize(r) for r in group] for group in refs]
    preds = [mteval_tokenize(p) for p in preds]
    ref_ngrams = [[_ngrams(ref, 5) for ref in group] for group in refs]

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
        for g, c in _ngrams(hyp, 5).items():
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
# The COCO tokenization: Stanford PTBTokenizer 3.4.1 run with -preserveLines -lowerCase, then the
# removal of punctuation tokens (pycocoevalcap's ptbtokenizer.py)
#
# PTBTokenizer is a JFlex lexer: at each position every rule is tried, the longest match wins and
# ties go to the earlier rule; a rule's trailing context (JFlex r1/r2, `then` below) counts for the
# length but is scanned again. The rules follow CoreNLP's PTBLexer.flex and were checked token for
# token against the 3.4.1 jar on every E2E reference and system output (50,598 lines); the test
# suite checks again against the jar when Java and pycocoevalcap are installed. Rules for text the
# E2E data never has (URLs, e-mail, fractions) are kept so other English text tokenizes sensibly.

_LETTER, _ALNUM = r"[^\W\d_]", r"[^\W_]"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_SPACENL = r"(?:[ \t\u00A0\u2000-\u200A\u3000]|\r\n?|\n|[\u2028\u2029\u000B\u000C\u0085])"
_SGML = r"<\/?[A-Za-z!][^>]*>"
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|[A-Z]|{_SGML})"  # a space, then a space or a capital
_NUM = r"(?:\d*(?:[.:,\u00AD\u066B\u066C]\d+)+|\d+)"
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOSETC = rf"(?:{_APOS}|[\u0091\u2018\u201B])"
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_WORD = rf"{_LETTER}{_ALNUM}*(?:[.!?]{_LETTER}{_ALNUM}*)*"  # "high.The" stays one token
_ACRO = (r"(?:[A-Za-z](?:\.[A-Za-z])+|(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)"
         r"|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r)))")
# Abbreviations (the lexer is caseless for literals, not for character classes: "Ark" not "ark")
_ABBREV1 = (r"(?:(?i:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thurs|thu|fri"
            r"|ala|ariz|calif|colo|conn|dak|del|fla|ga|ind|kans?|ky|la|md|mich|minn|mo|mont|neb"
            r"|nev|okla|pa|penn|tenn|tex|va|vt|wisc?|wyo|inc|cos?|corp|pp?tys?|ltd|plc|bancorp"
            r"|dept|bhd|assn|univ|intl|sys|ph|tel|est|ext|sq|jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq"
            r"|etc|al|seq)|A(?i:rk)|I(?i:ll)|M(?i:ass|iss)|O(?i:re)|W(?i:ash))\.")
_ABBREV4 = (rf"(?:{_ACRO}|(?i:mrs|mr|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?"
            r"|adm|rev|maj|sgt|cpl|pvt|mt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?"
            r"|det|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ft|invt|elec|natl|m[ft]g)|M(?i:iss)|[A-Za-z])")
_STARTERS = "|".join(w[0] + (f"(?i:{w[1:]})" if len(w) > 1 else "") for w in (
    r"About According Additionally After An A As At But Earlier He Her Here However If In It Last "
    r"Many More Mr\. Ms\. Now Once One Other Our She Since So Some Such That The Then There These "
    r"They This We When While What Yet You").split())
_NEW_SENTENCE = rf"{_SPACENL}+(?:{_STARTERS}){_SPACE}"  # a word that usually starts a sentence
_THING = (rf"(?:[dDoOlL]{_APOSETC}{_ALNUM})?{_ALNUM}+"
          rf"(?:{_HYPHEN}(?:[dDoOlL]{_APOSETC}{_ALNUM})?{_ALNUM}+)*")  # 20-25, family-friendly
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{_ACRO}\.))+"
_THINGA = r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"  # 's 'm 'd 're 've 'll
_SREDAUX = rf"[nN]{_APOSETC}[tT]"  # n't
_APOWORD = (rf"(?:{_APOS}[nN]{_APOS}?|[lLdDjJ]{_APOS}|(?i:dunkin|somethin|ol){_APOS}|{_APOS}(?i:em)"
            rf"|[A-HJ-XZn]{_APOSETC}{_LETTER}{{2}}{_LETTER}*|{_APOS}[2-9]0[sS]|{_APOS}(?i:till?)"
            rf"|{_LETTER}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_LETTER}*|{_APOS}(?i:cause)"
            r"|(?i:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l))")
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$",
             "\u20AC": "$"}  # PTB3 knew only $ and # (for the pound)

_RULES = []  # (compiled pattern, what to emit)


def _rule(pattern: str, then: str | None = None, emit=None):
    """emit: None keeps the text; a string or a function replaces it; "quote" maps quote marks;
    "skip" emits nothing; ("push", k) drops the last k characters, ("dup", k) keeps them, and
    both scan those k characters again (so "etc." before a new sentence also yields ".")."""
    _RULES.append((re.compile(rf"(?:{pattern})(?=({then}))" if then else pattern), emit))


_rule(r"(?i:cannot)", emit=("push", 3))  # can not
_rule(r"(?i:gon|wan)", then=r"(?i:na)(?![^\W_])")  # gon na, wan na
_rule(r"(?i:got)", then=r"(?i:ta)(?![^\W_])")
_rule(r"(?i:lem|gim)", then=r"(?i:me)(?![^\W_])")
_rule(r"[#@][^\W\d_][^\W_]*")  # #hashtag @user
_rule(_SGML)
_rule(r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", emit="--")
_rule(r"&amp;", emit="&")
_rule(r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);")
_rule(_WORD, then=_REDAUX)  # it|'s
_rule(r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*", then=_SREDAUX)  # is|n't, ca|n't
_rule(_WORD)
_rule(_APOWORD)
_rule(rf"[yY]{_APOS}", then=_LETTER)
_rule(r"https?:\/\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]")
_rule(r"(?:(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+"
      r"\.)+(?:com|net|org|edu)))(?:\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?")
_rule(r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0]*@(?:[^ \t\n\f\r\"<>|().\u00A0]+\.)+[a-zA-Z]{2,4}")
_rule(_REDAUX, then=r"[^A-Za-z]", emit="quote")
_rule(_SREDAUX, emit="quote")
_rule(r"\d{1,2}[\-\/]\d{1,2}[\-\/]\d{2,4}")  # dates
_rule(rf"[\-+]?{_NUM}")  # numbers: 3.5, 1,000, -25
_rule(r"(?:\d{1,4}[- \u00A0])?\d{1,4}(?:\\?\/|\u2044)\d{1,4}", emit=lambda t: t.replace(" ", "\u00A0"))
_rule(r"[\u00BC\u00BD\u00BE]", emit=lambda t: {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4"}[t])
_rule(rf"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls"
      rf"|Cap{_APOS}n|c{_APOS}est")
_rule(r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?\/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}")  # a/b
_rule(r"[A-Z]*\$|#")
_rule(r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]",
      emit=lambda t: _CURRENCY.get(t, t))
_rule(rf"{_ACRO}\.", then=_NEW_SENTENCE, emit=("dup", 1))  # "e.g. The" -> e.g. . the
_rule(r"[A-Za-z]\.", then=_NEW_SENTENCE, emit=("push", 1))  # "L. The" -> l . the
_rule(_ABBREV1, then=rf"{_SENTEND}|\Z", emit=("dup", 1))  # "Rd. You" -> rd. . you
_rule(r"(?i:nos?)\.", then=rf"{_SPACENL}*[0-9]")  # "No. 5"; "no." elsewhere is no + .
_rule(_ABBREV1)
_rule(rf"{_ABBREV4}\.")  # St. Mr. e.g. L.
_rule(_ABBREV4, then=_SPACE)
_rule(_ACRO, then=_SPACENL)
_rule(rf"{_APOS}[0-9][0-9]", then=_SPACENL)
_rule(rf"{_WORD}\.", then=r"[,;:]")  # "centre.," keeps its period
_rule(r"(?:\([0-9]{3}\)[ \u00A0]?|[0-9]{3}[\- \u00A0.])[0-9]{3}[\- \u00A0.][0-9]{4}")  # phones
_rule(r"\"|&quot;", then=r"[A-Za-z0-9$]", emit="``")
_rule(r"\"|&quot;", emit="''")
_rule(r"\+|[%&\u2030\u2031]|\~|\^")
_rule(r"\||\\|0x7f", emit="skip")
for _bracket, _name in zip("<>[]{}()", ("-LRB-", "-RRB-", "-LSB-", "-RSB-", "-LCB-", "-RCB-",
                                        "-LRB-", "-RRB-")):
    _rule(re.escape(_bracket), emit=_name)
_rule(r"&lt;", emit="-LRB-")
_rule(r"&gt;", emit="-RRB-")
_rule(r"\-+", emit=lambda t: "--" if 3 <= len(t) <= 4 else t)
_rule(r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", emit="...")
_rule(r"@+|#+|_+|\*+|[,;:]|[?!]+|[.\u00A1\u00BF]|=|\/")
_rule(rf"{_HTHING}\.", then=r"[,;:]")
_rule(_HTHING)  # french,family-friendly
_rule(rf"{_THING}\.", then=r"[,;:]")
_rule(_THING)
_rule(rf"{_THINGA}\.", then=r"[,;:]")
_rule(_THINGA)  # AT&T
_rule(r"'", then=r"[A-Za-z][^ \t\n\r\u00A0]", emit="`")  # probably an opening quote
_rule(_REDAUX, emit="quote")
_rule(rf"''|{_APOS}|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F"
      r"\u2039\u203A\u00AB\u00BB]{1,2}", emit="quote")
_rule(r"[\u00A6-\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u2020-\u2023\u2032-\u2038"
      r"\u2100-\u214F\u2190-\u21FF\u2200-\u22FF\u2600-\u26FF]")
_rule(r"(?:[ \t\u00A0\u2000-\u200A\u3000\u0000\u200B\u200E\u200F\uFEFF]|&nbsp;)+", emit="skip")

# The common tokens take a fast path where no rule above can match anything longer: a plain word
# before a space (or before , ; : or a final period and a space), a number before a space, and
# , ; : or a lone period before a space.
_PLAIN = re.compile(r"(?P<word>[A-Za-z]+)(?=(?P<dot>\.)?(?(dot)|[,;:]?)(?:[ \n]|\Z))"
                    r"|\d+(?=[ \n]|\Z)(?! \d)|[,;:](?=[ \n]|\Z)|\.(?=\n|\Z| (?!\.))")
_SPECIAL_WORD = re.compile(rf"(?:{_ABBREV1}|{_ABBREV4}\.|(?i:nos?)\.|(?i:cannot|gonna|gotta|wanna"
                           r"|lemme|gimme)\.)")
_LATEX_QUOTES = [("&apos;|'", "'"), ('"|&quot;', "''"), ("[\u0091\u2018\u201B\u2039]", "`"),
                 ("[\u0092\u2019\u203A]", "'"), ("[\u0093\u201C\u00AB]", "``"),
                 ("[\u0094\u201D\u00BB]", "''")]


@functools.lru_cache(maxsize=4096)
def _is_plain(word: str) -> bool:
    return not _SPECIAL_WORD.fullmatch(word + ".")


def ptb_tokenize_lines(lines: list[str]) -> list[list[str]]:
    """PTBTokenizer -preserveLines -lowerCase on lines joined by newlines, as COCO runs it (the
    text after a line matters: "Rd." before a capitalised next line becomes "rd. .")."""
    text = "\n".join(line.replace("\n", " ") for line in lines)
    tokens = [[] for _ in lines]
    pos, line = 0, 0
    while pos < len(text):
        char = text[pos]
        if char == " ":
            pos += 1
            continue
        if char in "\r\n":
            line += char == "\n" or not text.startswith("\r\n", pos)
            pos += 1
            continue
        m = _PLAIN.match(text, pos)
        if m and (m["word"] is None or _is_plain(m["word"])):
            tokens[line].append(m.group().lower())
            pos = m.end()
            continue
        best, best_length = None, 0
        for pattern, emit in _RULES:
            m = pattern.match(text, pos)
            if m:
                length = m.end() - pos + (len(m[1]) if pattern.groups else 0)
                if length > best_length:
                    best, best_length = (m, emit), length
        if best is None:  # a character no rule knows: PTBTokenizer deletes it
            pos += 1
            continue
        m, emit = best
        token, pos = m.group(), m.end()
        if emit == "skip":
            continue
        if isinstance(emit, tuple):
            pos -= emit[1]
            if emit[0] == "push":
                token = token[:-emit[1]]
        elif emit == "quote":
            for pattern, replacement in _LATEX_QUOTES:
                token = re.sub(pattern, replacement, token)
        elif callable(emit):
            token = emit(token)
        elif emit is not None:
            token = emit
        tokens[line].append(token.lower())
    return tokens


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
# METEOR 1.5: the official jar (shipped in pycocoevalcap) through its stdio protocol


def meteor_missing() -> str | None:
    """Why the METEOR jar cannot run here (what to install), or None when it can."""
    missing = []
    if shutil.which("java") is None:
        missing.append("Java")
    try:
        import pycocoevalcap  # a namespace package: it ships the jar and its paraphrase table
        folders = list(pycocoevalcap.__path__)
    except ImportError:
        folders = []
        missing.append("the Python package pycocoevalcap")
    if folders and not os.path.isfile(os.path.join(folders[0], "meteor", "meteor-1.5.jar")):
        missing.append("pycocoevalcap's meteor-1.5.jar (reinstall pycocoevalcap)")
    return f"needs {' and '.join(missing)}" if missing else None


def meteor_jar() -> str | None:
    """Path of meteor-1.5.jar when Java and pycocoevalcap are installed, else None."""
    if meteor_missing():
        return None
    import pycocoevalcap
    return os.path.join(list(pycocoevalcap.__path__)[0], "meteor", "meteor-1.5.jar")


def meteor_note(requested: bool = True) -> str:
    """What to print instead of a METEOR score: skipped on request, or n/a and what it needs."""
    return "skipped (--no-meteor)" if not requested else f"n/a ({meteor_missing() or 'not run'})"


class MeteorError(RuntimeError):
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
        stats = []
        for group, pred in zip(refs, preds):
            self._send(" ||| ".join(["SCORE", *group, pred.replace("|||", "").replace("  ", " ")]))
            stats.append(self._receive())
        self._send(" ||| ".join(["EVAL", *stats]))
        for _ in stats:  # one score per MR, then the corpus score
            self._receive()
        return float(self._receive())

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


def score(refs: list[list[str]], preds: list[str], meteor: bool | Meteor = True) -> dict:
    """The five metrics for predictions (one per MR) against references (a list per MR).
    METEOR is None with meteor=False or where the jar cannot run (meteor_missing() says why);
    pass a running Meteor to score several sets with one jar. A jar that starts but does not
    answer raises MeteorError."""
    if len(refs) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} MRs")
    if not all(refs):
        raise ValueError("every MR needs at least one reference")
    jar = meteor_jar() if meteor is True else None
    running = Meteor(jar) if jar else (meteor if isinstance(meteor, Meteor) else None)
    try:
        bleu, nist = bleu_nist(refs, preds)
        flat = iter(coco_tokenize([r for group in refs for r in group]))
        coco_refs = [[next(flat) for _ in group] for group in refs]
        coco_preds = coco_tokenize(preds)
        return {"BLEU": bleu, "NIST": nist,
                "METEOR": running.score(coco_refs, coco_preds) if running else None,
                "ROUGE_L": rouge_l(coco_refs, coco_preds), "CIDEr": cider_d(coco_refs, coco_preds)}
    finally:
        if jar:
            running.close()


def format_scores(scores: dict, meteor_requested: bool = True) -> str:
    """The official script's lines; a missing METEOR says why (meteor_note)."""
    note = meteor_note(meteor_requested)
    return "\n".join(f"{name}: {note if scores[name] is None else format(scores[name], '.4f')}"
                     for name in NAMES)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Score E2E NLG outputs with the official challenge metrics "
                    "(BLEU, NIST, METEOR, ROUGE-L, CIDEr).")
    parser.add_argument("refs", help="references: CSV/TSV (MR, reference) or text (one per line, "
                                     "MRs separated by an empty line)")
    parser.add_argument("preds", help="predictions: CSV/TSV (MR, output) or text (one per line)")
    parser.add_argument("--no-meteor", action="store_true",
                        help="skip METEOR (it needs Java and pycocoevalcap, and about 20 s)")
    args = parser.parse_args(argv)
    try:
        refs, preds = load(args.refs, args.preds)
        scores = score(refs, preds, meteor=not args.no_meteor)
    except (InputError, MeteorError) as e:
        print(f"metrics.py: {e}", file=sys.stderr)
        return 2
    print("SCORES:\n==============")
    print(format_scores(scores, meteor_requested=not args.no_meteor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
