"""METEOR 1.5 in Python: the scores of `java -jar meteor-1.5.jar - - -stdio -l en -norm`, no Java.

The COCO caption code (and so the E2E challenge's scorer) runs the METEOR 1.5 jar that
pycocoevalcap ships: for every MR it asks "SCORE ||| ref1 ||| ref2 ... ||| output" and gets 23
sufficient statistics back; then "EVAL ||| stats ||| stats ..." gives a score per MR and the corpus
score from the summed statistics. This file computes the same 23 numbers and the same scores,
written from the jar's public source (cmu-mtlab/meteor: Normalizer, the four matchers, Aligner,
MeteorScorer, MeteorStats). The word lists and tables are the jar's own, read from pycocoevalcap's
copy of it (a zip file) and its data/paraphrase-en.gz; no JVM is started.

    1. normalise each side (`-norm`: the jar's tokenizer rules, punctuation kept), lowercase;
    2. list every candidate match of a reference word (or phrase) with an output word (or phrase),
       module by module: exact, Snowball stem, WordNet synonym, paraphrase table;
    3. choose one set of non-overlapping matches: the jar's beam search (40 paths) prefers more
       matched words (a stem, synonym or paraphrase match counts half: "alignment weights"),
       then fewer chunks, then a smaller total distance between matched positions;
    4. score it: precision and recall over content words (weight delta) and function words
       (1 - delta), each match weighted by its module ("scoring weights": 1.0 0.6 0.8 0.6),
       Fmean = P R / (alpha P + (1 - alpha) R), times 1 - gamma frag^beta, frag = chunks per
       matched word; an MR keeps its best-scoring reference.

What the jar does that a reader might not expect is kept and marked "(jar)" below: the alignment
weights are truncated to whole numbers on every step of the search; a new path's distance is
added to the path it came from; the corpus score leaves out the chunks of exactly matched MRs.
One thing is not copied: the jar compares words by their Java hash codes ("chance of collision
statistically insignificant"); here words are compared as strings.

    from data.scorers import meteor
    meteor.corpus_score(refs, outputs)   # refs: a list of references per MR, already tokenized
"""

import array
import functools
import gzip
import itertools
import math
import os
import re
import shutil
import zipfile

import numpy as np

# The jar's default English task ("rank", Constants.java) and the aligner's settings
ALPHA, BETA, GAMMA, DELTA = 0.85, 0.20, 0.60, 0.75
MODULES = ("exact", "stem", "synonym", "paraphrase")
SCORING_WEIGHTS = (1.0, 0.6, 0.8, 0.6)  # Constants.WEIGHT_RANK, English
ALIGNMENT_WEIGHTS = (1.0, 0.5, 0.5, 0.5)  # what the aligner counts (MeteorScorer's "best
#                                           weights for evaluation"), not the scoring weights
BEAM_SIZE = 40  # Constants.DEFAULT_BEAM_SIZE
# where the parsed paraphrase table is kept (the user's cache folder, as checkpoint.cache_dir)
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                     "lora-gpt2", "meteor")


# -------------------------------------------------------------------------------------------------
# The jar's data: read from pycocoevalcap's copy, never from Java


def resources_missing() -> str | None:
    """Why this METEOR cannot run here (what to install), or None when it can."""
    try:
        folder = data_folder()
    except ImportError:
        return "needs the pycocoevalcap package for METEOR's word lists"
    for name in ("meteor-1.5.jar", os.path.join("data", "paraphrase-en.gz")):
        if not os.path.isfile(os.path.join(folder, name)):
            return f"needs pycocoevalcap's meteor/{name} (reinstall pycocoevalcap)"
    try:
        import snowballstemmer
    except ImportError:
        return "needs the snowballstemmer package (pip install -r requirements.txt)"
    if snowballstemmer.stemmer("english").stemWord("added") != "ad":
        return ("needs snowballstemmer<3 (3.x changed the English stems, e.g. added -> add; the "
                "jar's Snowball gives ad): pip install -r requirements.txt")
    return None


def data_folder() -> str:
    """pycocoevalcap's meteor/ folder: the jar (a zip of classes and word lists) and data/."""
    import pycocoevalcap  # a namespace package
    return os.path.join(list(pycocoevalcap.__path__)[0], "meteor")


@functools.cache
def _jar_file(name: str) -> str:
    with zipfile.ZipFile(os.path.join(data_folder(), "meteor-1.5.jar")) as jar:
        return jar.read(name).decode("utf-8")


@functools.cache
def function_words() -> frozenset[str]:
    """function/english.words: the words weighted 1 - delta."""
    return frozenset(_jar_file("function/english.words").splitlines())


@functools.cache
def nonbreaking_prefixes() -> dict[str, str]:
    """nonbreaking/english.prefixes: abbreviation -> "any" (Mr.) or "number" (its dot stays
    only before a number: No. 5)."""
    prefixes = {}
    for line in _jar_file("nonbreaking/english.prefixes").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            prefixes[fields[0]] = "number" if fields[1:2] == ["#NUMERIC_ONLY#"] else "any"
    return prefixes


@functools.cache
def _wordnet() -> tuple[dict[str, str], dict[str, list[str]]]:
    """(word -> its synset numbers as text, inflected form -> base forms) from synonym/."""
    lines = _jar_file("synonym/english.synsets").splitlines()
    synsets = dict(zip(lines[0::2], lines[1::2]))
    lines = _jar_file("synonym/english.exceptions").splitlines()
    bases = {}
    for base, forms in zip(lines[0::2], lines[1::2]):
        for form in forms.split():
            bases.setdefault(form, []).append(base)
    return synsets, bases


@functools.cache
def _stemmer():
    import snowballstemmer
    return snowballstemmer.stemmer("english")


def paraphrase_table(vocabulary: set[str]) -> dict[tuple, list[tuple]]:
    """The entries of data/paraphrase-en.gz whose phrase and paraphrase use only words of
    `vocabulary` (no other entry can match): phrase -> its paraphrases, in the table's order (the
    order the jar tries them), with every first part of a phrase as a key too (most with no
    paraphrase of their own), so the dict is the jar's trie of phrases."""
    table_words, phrases, paraphrases = _paraphrase_arrays()
    known = np.zeros(len(table_words), dtype=bool)
    known[[i for i, w in enumerate(table_words) if w in vocabulary]] = True
    keep = np.flatnonzero(_all_known(known, *phrases) & _all_known(known, *paraphrases))
    table = {}
    for k in keep.tolist():
        phrase, paraphrase = (tuple(table_words[i] for i in ids[start[k]:start[k + 1]].tolist())
                              for ids, start in (phrases, paraphrases))
        for end in range(1, len(phrase)):
            table.setdefault(phrase[:end], [])
        table.setdefault(phrase, []).append(paraphrase)
    return table


def _all_known(known: np.ndarray, ids: np.ndarray, start: np.ndarray) -> np.ndarray:
    """For each phrase (words ids[start[k]:start[k + 1]]): are all its words known?"""
    return np.logical_and.reduceat(known[ids], start[:-1])


@functools.cache
def _paraphrase_arrays() -> tuple[list[str], tuple, tuple]:
    """The whole table as arrays: its words, then (word ids, where each entry starts) for the
    phrases and for the paraphrases. Parsing the 5.3 million entries (a probability line, a
    phrase line, a paraphrase line) takes 15 to 25 s, so the arrays are cached in CACHE (19 MB;
    0.5 s to load)."""
    source = os.path.join(data_folder(), "data", "paraphrase-en.gz")
    cache = os.path.join(CACHE, f"paraphrase-en-{os.path.getsize(source)}-v1.npz")  # v: layout
    try:
        with np.load(cache) as saved:
            arrays = dict(saved)
    except (OSError, ValueError, zipfile.BadZipFile):  # none yet (or unreadable): parse the table
        arrays = _parse_paraphrases(source)
        try:
            os.makedirs(CACHE, exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"  # parallel processes may build it at once
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.replace(tmp, cache)
        except OSError:  # no writable cache folder: parse again next time
            pass
    starts = {side: np.cumsum(np.r_[0, arrays[side + "_lengths"]], dtype=np.int64)
              for side in ("phrase", "paraphrase")}
    return (arrays["words"].tobytes().decode("utf-8").split("\n"),
            (arrays["phrase"], starts["phrase"]), (arrays["paraphrase"], starts["paraphrase"]))


def _parse_paraphrases(source: str) -> dict[str, np.ndarray]:
    index = {}  # word -> id
    ids = {"phrase": array.array("H"), "paraphrase": array.array("H")}  # (43,139 words)
    lengths = {"phrase": array.array("B"), "paraphrase": array.array("B")}  # (1 to 7 words)
    with gzip.open(source) as f:
        while lines := list(itertools.islice(f, 300_000)):  # 100,000 entries at a time
            for side, column in (("phrase", lines[1::3]), ("paraphrase", lines[2::3])):
                lengths[side].extend(map(len, map(bytes.split, column)))
                ids[side].extend([index.setdefault(w, len(index))
                                  for w in b" ".join(column).split()])
    return {"words": np.frombuffer(b"\n".join(index), dtype=np.uint8),
            **{side: np.array(ids[side], dtype=np.uint16) for side in ids},
            **{side + "_lengths": np.array(lengths[side], dtype=np.uint8) for side in ids}}


# -------------------------------------------------------------------------------------------------
# 1. Normalisation: Normalizer.normalizeLine for English with punctuation kept, then lowercase

_ALPHA = ("A-Za-z\u0160\u017d\u0161\u017e\u0178\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u017e"  # Latin
          "\u0400-\u04ff\u0500-\u0527\ua640-\ua66e\ua67e-\ua697\u1d00-\u1d7f")  # Cyrillic
_ALNUM = "0-9" + _ALPHA
_JAVA_SPACE = " \t\n\x0b\f\r"  # Java's \s (ASCII only, unlike Python's)
_RULES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (f"([^{_ALNUM}{_JAVA_SPACE}.'`,\\-\u2018\u2019])", r" \1 "),  # split off other symbols
    (r"\.(\.+)", r" DOTMULTI\1"),  # escape "..." (undone at the end)
)]
_DOTS = re.compile(r"DOTMULTI\.([^.])")
_COMMAS = [re.compile(p) for p in (r"([^0-9]),([^0-9])", r"([0-9]),([^0-9])", r"([^0-9]),([0-9])")]
_QUOTES = [(re.compile("[`\u2018\u2019]"), "'"), (re.compile("[\u201c\u201d]|''"), ' " ')]
_WORD_DASH = re.compile(f"([{_ALNUM}.])-([{_ALNUM}])")  # U.S.-based -> U.S. based
_APOSTROPHES = [(re.compile(p), r) for p, r in (  # English splits contractions to the right
    (f"([^{_ALPHA}])'([^{_ALPHA}])", r"\1 ' \2"),
    (f"([^{_ALPHA}0-9])'([{_ALPHA}])", r"\1 ' \2"),
    (f"([{_ALPHA}])'([^{_ALPHA}])", r"\1 ' \2"),
    (f"([{_ALPHA}])'([{_ALPHA}])", r"\1 '\2"),  # don't -> don 't
    (r"([0-9])'(s)", r"\1 '\2"))]  # 1990's -> 1990 's
_HAS_LETTER = re.compile(f"[{_ALPHA}]")
_WHITE = re.compile("[ \u2000-\u200a\u202f\u205f\u3000\u00a0]+")
_JAVA_TRIM = "".join(map(chr, range(33)))  # String.trim() strips every character <= U+0020


def _split(line: str) -> list[str]:
    """Java's StringTokenizer: the words between spaces, tabs, line breaks and form feeds."""
    return re.findall(r"[^ \t\n\r\f]+", line)


def words(line: str) -> list[str]:
    """The words METEOR aligns: line normalised as `-norm` does, lowercased, split."""
    return _split(normalize(line.strip(_JAVA_TRIM)).lower())


def normalize(line: str) -> str:
    """Normalizer.normalizeLine for English, punctuation kept: symbols split off, "..." kept
    whole, commas split off outside numbers, quotes and dashes unified, contractions split
    to the right, a final dot split off unless it ends a known abbreviation."""
    line = f" {line} "
    for pattern, replacement in _RULES:
        line = pattern.sub(replacement, line)
    while "DOTMULTI." in line:
        line = _DOTS.sub(r"DOTDOTMULTI \1", line).replace("DOTMULTI.", "DOTDOTMULTI")
    for pattern in _COMMAS:  # commas, except inside numbers
        line = pattern.sub(r"\1 , \2", line)
    for pattern, replacement in _QUOTES:
        line = pattern.sub(replacement, line)
    line = _WORD_DASH.sub(r"\1 \2", line.replace("\u2013", "-").replace("--", "-"))
    for pattern, replacement in _APOSTROPHES:
        line = pattern.sub(replacement, line)
    tokens, prefixes, out = _split(line), nonbreaking_prefixes(), []
    for i, word in enumerate(tokens):  # a final dot is split off unless it ends an abbreviation
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        prefix = word[:-1]
        kind = prefixes.get(prefix)
        if len(word) < 2 or not word.endswith("."):
            out.append(word)
        elif "." in prefix and _HAS_LETTER.search(prefix):  # U.S. -> US
            out.append(word.replace(".", ""))
        elif kind == "any" or re.match("[a-z]", following) or (
                kind == "number" and re.match("[0-9]", following)):
            out.append(word)  # Mr. Smith, Inc. is, No. 5
        else:
            out.append(prefix + " .")
    line = " ".join(out) + " "
    while "DOTDOTMULTI" in line:
        line = line.replace("DOTDOTMULTI", "DOTMULTI.")
    return _WHITE.sub(" ", line.replace("DOTMULTI", ".")).strip(_JAVA_TRIM)


# -------------------------------------------------------------------------------------------------
# 2. Candidate matches. A match pairs words ref[ref_start:ref_start + ref_len] with
#    out[out_start:out_start + out_len]; candidates[j] lists the matches starting at reference
#    word j, in the order the jar finds them (module by module).


class Match:
    """One candidate: which words of each side it pairs, and the module that found it."""
    __slots__ = ("ref_start", "ref_len", "out_start", "out_len", "module", "ref_words", "out_words")

    def __init__(self, ref_start, ref_len, out_start, out_len, module):
        self.ref_start, self.ref_len = ref_start, ref_len
        self.out_start, self.out_len = out_start, out_len
        self.module = module
        self.ref_words = ((1 << ref_len) - 1) << ref_start  # the words it uses, as bit sets
        self.out_words = ((1 << out_len) - 1) << out_start


@functools.cache
def _synsets(word: str) -> frozenset[int]:
    """The WordNet synsets of word and of its base form (SynonymDictionary and its morph())."""
    synsets, bases = _wordnet()
    found = set(map(int, synsets.get(word, "").split()))
    for base in bases.get(word) or [_base_form(word, synsets)]:
        found.update(map(int, synsets.get(base, "").split()))
    return frozenset(found)


@functools.cache
def _stem(word: str) -> str:
    return _stemmer().stemWord(word)


# WordNet 3's morphology: (suffix, ending) for nouns, verbs, adjectives, tried in this order
_DETACHMENTS = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                ("shes", "sh"), ("men", "man"), ("ies", "y"),
                ("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
                ("ing", "e"), ("ing", ""),
                ("er", ""), ("est", ""), ("er", "e"), ("est", "e"))


def _base_form(word: str, synsets: dict) -> str:
    """The first detached form that WordNet knows ("" if none; the word itself if it ends in ss
    or is two letters long). (The jar also keeps a final "ful" aside, but no suffix above can
    follow it, so that branch never changes a result.)"""
    if word.endswith("ss") or len(word) <= 2:
        return word
    for suffix, ending in _DETACHMENTS:
        base = word[:len(word) - len(suffix)] + ending
        if word.endswith(suffix) and base in synsets:
            return base
    return ""


def candidates(out: list[str], ref: list[str], paraphrases: dict) -> list[list[Match]]:
    """Every match the four modules find (only the exact one when the two sides are equal)."""
    found = [[] for _ in ref]
    where = _positions(out)
    for j, r in enumerate(ref):
        found[j] += [Match(j, 1, i, 1, 0) for i in where.get(r, ())]
    if out == ref:
        return found
    stems, synsets = [_stem(o) for o in out], [_synsets(o) for o in out]
    for j, r in enumerate(ref):
        found[j] += [Match(j, 1, i, 1, 1) for i, o in enumerate(out)
                     if o != r and stems[i] == _stem(r)]
    for j, r in enumerate(ref):
        found[j] += [Match(j, 1, i, 1, 2) for i, o in enumerate(out)
                     if o != r and not synsets[i].isdisjoint(_synsets(r))]
    for j in range(len(ref)):  # phrases of the reference paraphrased in the output
        for length, paraphrase in _phrases_at(ref, j, paraphrases):
            for i in _occurrences(paraphrase, out, where):
                found[j].append(Match(j, length, i, len(paraphrase), 3))
    where = _positions(ref)
    for i in range(len(out)):  # then phrases of the output paraphrased in the reference
        for length, paraphrase in _phrases_at(out, i, paraphrases):
            for j in _occurrences(paraphrase, ref, where):
                found[j].append(Match(j, len(paraphrase), i, length, 3))
    return found


def _positions(words: list[str]) -> dict[str, list[int]]:
    where = {}
    for i, w in enumerate(words):
        where.setdefault(w, []).append(i)
    return where


def _phrases_at(words: list[str], start: int, paraphrases: dict):
    """(phrase length, paraphrase) for each table phrase that starts at words[start], shortest
    first: the jar walks a trie of the phrases, and the table is one (see paraphrase_table)."""
    end = start + 1
    while end <= len(words) and tuple(words[start:end]) in paraphrases:
        for paraphrase in paraphrases[tuple(words[start:end])]:
            yield end - start, paraphrase
        end += 1


def _occurrences(phrase: tuple, words: list[str], where: dict) -> list[int]:
    return [i for i in where.get(phrase[0], ()) if tuple(words[i:i + len(phrase)]) == phrase]


# -------------------------------------------------------------------------------------------------
# 3. The alignment: Aligner.align and its beam search (resolve), left to right over the reference


class _Path:
    """A partial alignment: the matches chosen so far (by reference position), the words they use,
    and what the search ranks paths by."""
    __slots__ = ("matches", "out_used", "ref_used", "out_matched", "ref_matched", "chunks",
                 "idx", "last_end", "distance")

    def __init__(self, n_ref: int):
        self.matches = [None] * n_ref
        self.out_used = self.ref_used = 0  # bit sets of the words taken
        self.out_matched = self.ref_matched = 0  # what the search maximizes first
        self.chunks = self.idx = self.distance = 0  # idx: the reference word to decide next
        self.last_end = -1  # where the last match ended in the output (-1: no open chunk)

    def copy(self) -> "_Path":
        new = _Path.__new__(_Path)
        new.matches, new.out_used, new.ref_used = self.matches[:], self.out_used, self.ref_used
        new.out_matched, new.ref_matched = self.out_matched, self.ref_matched
        new.chunks, new.idx, new.last_end, new.distance = (self.chunks, self.idx, self.last_end,
                                                           self.distance)
        return new

    def use(self, m: Match):
        self.ref_used |= m.ref_words
        self.out_used |= m.out_words

    def extend(self, m: Match):
        """Count match m (the distance is added by the caller: see resolve)."""
        weight = ALIGNMENT_WEIGHTS[m.module]
        # matched words times the alignment weight; (jar) kept as ints, so 0.5 is truncated
        self.out_matched = int(self.out_matched + m.out_len * weight)
        self.ref_matched = int(self.ref_matched + m.ref_len * weight)
        if self.last_end != -1 and m.out_start != self.last_end:
            self.chunks += 1  # not contiguous in the output: a new chunk
        self.idx = m.ref_start + m.ref_len
        self.last_end = m.out_start + m.out_len

    def rank(self) -> tuple:
        """Aligner's PARTIAL_COMPARE_TOTAL: more matched words, fewer chunks, less distance."""
        return -(self.out_matched + self.ref_matched), self.chunks, self.distance


def align(out: list[str], ref: list[str], found: list[list[Match]]) -> list[Match | None]:
    """The chosen matches, indexed by the reference position where each starts."""
    out_cover, ref_cover = [0] * len(out), [0] * len(ref)
    for m in (m for ms in found for m in ms):
        for k in range(m.out_len):
            out_cover[m.out_start + k] += 1
        for k in range(m.ref_len):
            ref_cover[m.ref_start + k] += 1
    start = _Path(len(ref))
    for j, ms in enumerate(found):  # a word's only candidate, covering no contested word, is fixed
        m = ms[0] if len(ms) == 1 else None
        if m and all(ref_cover[k] == 1 for k in range(m.ref_start, m.ref_start + m.ref_len)) \
                and all(out_cover[k] == 1 for k in range(m.out_start, m.out_start + m.out_len)):
            start.matches[j] = m
            start.use(m)
    return _resolve(found, start).matches


def _resolve(found: list[list[Match]], start: _Path) -> _Path:
    """The jar's beam search: at each reference word, every path in the beam either takes one of
    the word's candidates or skips the word; the best BEAM_SIZE paths go on."""
    next_paths = [start]
    for current in range(len(found) + 1):
        paths = sorted(next_paths, key=_Path.rank) if len(next_paths) > 1 else next_paths
        next_paths = []  # (sorted is stable, as Java's Collections.sort)
        for path in paths[:BEAM_SIZE]:
            if current == len(found):  # complete: close the open chunk
                if path.last_end != -1:
                    path.chunks += 1
                next_paths.append(path)
            elif path.ref_used >> current & 1:
                if current < path.idx:  # inside a match taken earlier
                    next_paths.append(path)
                elif path.matches[path.idx] is not None:  # a fixed match starts here
                    m = path.matches[path.idx]
                    path.extend(m)
                    path.distance += abs(m.ref_start - m.out_start)
                    next_paths.append(path)
                # (jar) otherwise the path is dropped
            else:
                for m in found[current]:
                    if not (path.ref_used & m.ref_words or path.out_used & m.out_words):
                        new = path.copy()
                        new.use(m)
                        new.matches[current] = m
                        new.extend(m)
                        path.distance += abs(m.ref_start - m.out_start)  # (jar) on the old path
                        next_paths.append(new)
                if path.last_end != -1:  # skip this word: it ends the open chunk
                    path.chunks += 1
                    path.last_end = -1
                path.idx += 1
                next_paths.append(path)
        if not next_paths:  # (jar) "unexpected conditions": keep the best path and go on
            next_paths.append(paths[0])
    return min(next_paths, key=_Path.rank)  # the first of the best, as sorting and taking [0]


def _chunks(matches: list[Match | None]) -> int:
    """Runs of matches contiguous in both sentences (Aligner.getCountAndChunks)."""
    chunks, idx, last_end = 0, 0, -1
    while idx < len(matches):
        m = matches[idx]
        if m is None:
            if last_end != -1:
                chunks += 1
                last_end = -1
            idx += 1
        else:
            if last_end != -1 and m.out_start != last_end:
                chunks += 1
            idx = m.ref_start + m.ref_len
            last_end = m.out_start + m.out_len
    return chunks + (last_end != -1)


# -------------------------------------------------------------------------------------------------
# 4. Statistics and scores (MeteorStats, MeteorScorer.computeMetrics)
#
# A segment's statistics are the 23 numbers the jar's SCORE prints: output length, reference
# length, output function words, reference function words; per module the matched output content
# words, reference content words, output function words, reference function words; chunks; all
# matched output words; all matched reference words.


def statistics(out: list[str], ref: list[str], paraphrases: dict) -> list[float]:
    """The 23 statistics of one output against one reference (normalized words)."""
    matches = align(out, ref, candidates(out, ref, paraphrases))
    fn = function_words()
    out_fn, ref_fn = [w.lower() in fn for w in out], [w.lower() in fn for w in ref]
    per_module = [[0, 0, 0, 0] for _ in MODULES]
    for m in (m for m in matches if m is not None):
        for k in range(m.out_start, m.out_start + m.out_len):
            per_module[m.module][2 if out_fn[k] else 0] += 1
        for k in range(m.ref_start, m.ref_start + m.ref_len):
            per_module[m.module][3 if ref_fn[k] else 1] += 1
    out_matched = sum(c[0] + c[2] for c in per_module)
    ref_matched = sum(c[1] + c[3] for c in per_module)
    return [float(x) for x in (len(out), len(ref), sum(out_fn), sum(ref_fn),
                               *(x for c in per_module for x in c),
                               _chunks(matches), out_matched, ref_matched)]


def _java_divide(a: float, b: float) -> float:
    """a / b with IEEE semantics, as Java divides doubles: x / 0 is +-inf and 0 / 0 is NaN."""
    if b:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)


def _perfect(stats: list[float]) -> bool:
    """Every word of both sides matched, in one chunk."""
    out_matched = sum(stats[4 + 4 * i] + stats[6 + 4 * i] for i in range(len(MODULES)))
    ref_matched = sum(stats[5 + 4 * i] + stats[7 + 4 * i] for i in range(len(MODULES)))
    return out_matched == stats[0] and ref_matched == stats[1] and stats[20] == 1


def score_of(stats: list[float]) -> float:
    """METEOR from 23 statistics (one segment's, or their sum over a corpus)."""
    out_len, ref_len, out_fn, ref_fn = stats[:4]
    chunks, out_words, ref_words = stats[20:23]
    out_weighted = ref_weighted = 0.0  # summed in the jar's order, for the same rounding
    for offset, share in ((0, DELTA), (2, 1.0 - DELTA)):  # content words, then function words
        for i, weight in enumerate(SCORING_WEIGHTS):
            out_weighted += stats[4 + 4 * i + offset] * weight * share
            ref_weighted += stats[5 + 4 * i + offset] * weight * share
    precision = _java_divide(out_weighted, DELTA * (out_len - out_fn) + (1.0 - DELTA) * out_fn)
    recall = _java_divide(ref_weighted, DELTA * (ref_len - ref_fn) + (1.0 - DELTA) * ref_fn)
    f_mean = _java_divide(1.0, _java_divide(1.0 - ALPHA, precision) + _java_divide(ALPHA, recall))
    frag = 0.0 if _perfect(stats) else _java_divide(chunks, (out_words + ref_words) / 2)
    score = f_mean * (1.0 - GAMMA * math.pow(frag, BETA))
    return 0.0 if math.isnan(score) else max(score, 0.0)


def add(total: list[float], stats: list[float]) -> list[float]:
    """Corpus statistics: sums, except that (jar) an exactly matched segment adds no chunk."""
    summed = [a + b for a, b in zip(total, stats)]
    if _perfect(stats):
        summed[20] = total[20]
    return summed


# -------------------------------------------------------------------------------------------------
# Everything together, as the COCO code asks the jar


def as_coco_sends(output: str) -> str:
    """An output as pycocoevalcap's meteor.py writes it to the jar: "|||" (the protocol's
    separator) removed, double spaces made single."""
    return output.replace("|||", "").replace("  ", " ")


def segment_statistics(refs: list[list[str]], outputs: list[str],
                       coco: bool = True) -> list[list[float]]:
    """For each segment, the statistics of its best-scoring reference (the first on a tie): what
    the jar's SCORE answers. refs: a list of reference strings per segment (an empty one scores
    nothing). coco: the outputs as the COCO code sends them (as_coco_sends); False: as the jar
    reads them from a file (`java -jar meteor-1.5.jar HYP REF -l en -norm -r N`)."""
    out_words = [words(as_coco_sends(out) if coco else out) for out in outputs]
    ref_words = [[words(ref) for ref in group] for group in refs]
    vocabulary = {w for ws in out_words for w in ws}
    vocabulary.update(w for group in ref_words for ws in group for w in ws)
    paraphrases = paraphrase_table(vocabulary)
    return [max((statistics(out, ref, paraphrases) for ref in group), key=score_of)
            for out, group in zip(out_words, ref_words)]  # (max keeps the first of equals)


def corpus_score(refs: list[list[str]], outputs: list[str]) -> float:
    """Corpus METEOR, the number pycocoevalcap reports: from the summed statistics (EVAL)."""
    total = [0.0] * 23
    for stats in segment_statistics(refs, outputs):
        total = add(total, stats)
    return score_of(total)


# -------------------------------------------------------------------------------------------------
# Whether METEOR can run here: this port (pycocoevalcap's word lists), or the official jar (Java
# too), which the E2E scorer can run instead to check the port (data/e2e/metrics.Meteor)


def meteor_missing(implementation: str = "python") -> str | None:
    """Why METEOR cannot run here (what to install), or None when it can. implementation:
    "python" (meteor.py: pycocoevalcap's word lists) or "jar" (also Java)."""
    if implementation == "python":
        return resources_missing()
    missing = [] if shutil.which("java") else ["Java"]
    try:
        if not os.path.isfile(os.path.join(data_folder(), "meteor-1.5.jar")):
            missing.append("pycocoevalcap's meteor-1.5.jar (reinstall pycocoevalcap)")
    except ImportError:
        missing.append("the Python package pycocoevalcap")
    return f"needs {' and '.join(missing)}" if missing else None


def meteor_jar() -> str | None:
    """Path of meteor-1.5.jar when Java and pycocoevalcap are installed, else None."""
    return None if meteor_missing("jar") else os.path.join(data_folder(), "meteor-1.5.jar")


def meteor_note(requested: bool = True, *, implementation: str = "python") -> str:
    """What to print instead of a METEOR score: skipped on request, or n/a and what it needs."""
    return "skipped (--no-meteor)" if not requested else \
        f"n/a ({meteor_missing(implementation) or 'not run'})"
