"""TER, the Translation Edit Rate (Snover et al. 2006), as the two tools that score WebNLG and DART
compute it: the number of edits (insertions, deletions, substitutions of one word, and shifts of
a phrase) that turn an output into its closest reference, over the reference's length.

- tercom 0.7.25 (`java -jar tercom.7.25.jar -h HYP -r REF`), the official scorer of the WebNLG
  2017 challenge and of DART: ter(outputs, references). Case is ignored, the words are split at
  whitespace; each output takes the reference with the fewest edits, divided by the average
  length of its references; the total is edits / words summed over the segments. Shifts are
  found greedily: while some shift of up to 10 words by up to 50 places lowers the edit
  distance, the best one is made (ties: the longer phrase, then the first found), each shift
  costing one edit. The edit distance itself is a beam search (width 20) over the usual
  dynamic program; ported line for line from its Java source (TERcalc.java, TERtest.java).
- pyter3's ter(hyp_words, ref_words), what the paper's released code averages over sentences
  (its eval.py): another greedy, over every pair of equal words, with ties broken by comparing
  the shifted word lists.

Both only ever ask for edit distances to one reference, thousands of times per segment, and so
does this port: plain Levenshtein distances are computed bit-parallel (Hyyro 2003; the columns'
states cached along the current output, so a shifted copy starts where it first differs), which
is what tercom's beam search finds whenever the distance is at most its width. Above it, the
beam search itself runs. tests/test_tercom.py holds both against tercom's own sample output and
the challenge's official scores, and against pyter3.
"""

import re

# tercom's constants (TERcalc.java)
BEAM_WIDTH = 20
MAX_SHIFT_SIZE = 10  # a shifted phrase has at most 10 words
MAX_SHIFT_DIST = 50
_INF = 999999.0

# Java's \s: ASCII whitespace only (str.split would also split at U+00A0 and its kin)
_JAVA_SPACE = re.compile(r"[ \t\n\x0b\f\r]+")


def java_split(text: str) -> list[str]:
    """String.split("\\s+") as Java does it: a leading empty string kept, trailing ones not."""
    words = _JAVA_SPACE.split(text)
    while len(words) > 1 and words[-1] == "":
        words.pop()
    return words


# --- edit distance ---------------------------------------------------------------------------


class Distances:
    """Levenshtein distances from many word sequences to one reference: bit-parallel, one
    machine word of bits per reference word (Hyyro's formulation of Myers' algorithm). along()
    caches the column states of one sequence, so that another one that shares its first k
    words starts from column k."""

    def __init__(self, ref: list):
        self.m = len(ref)
        self.mask, self.top = (1 << self.m) - 1, 1 << max(self.m - 1, 0)
        self.peq = {}
        for i, word in enumerate(ref):
            self.peq[word] = self.peq.get(word, 0) | (1 << i)
        self.states = [(self.mask, 0, self.m)]  # (VP, VN, distance) after each word of `base`
        self.base = []

    def along(self, words: list):
        """Make words the sequence whose prefixes are cached."""
        self.base = list(words)
        self.states = [self.states[0]]
        self.states.extend(self._run(self.states[0], self.base))

    def _run(self, state, words):
        vp, vn, score = state
        mask, top, peq = self.mask, self.top, self.peq
        out = []
        for word in words:
            pm = peq.get(word, 0)
            d0 = (((pm & vp) + vp) ^ vp) | pm | vn
            hp = vn | (~(d0 | vp) & mask)
            hn = d0 & vp
            if hp & top:
                score += 1
            elif hn & top:
                score -= 1
            hp = ((hp << 1) | 1) & mask
            hn = (hn << 1) & mask
            vp = hn | (~(d0 | hp) & mask)
            vn = d0 & hp
            out.append((vp, vn, score))
        return out

    def __call__(self, words: list, same: int = 0) -> int:
        """The distance from words to the reference; its first `same` words are base's."""
        if self.m == 0:
            return len(words)
        state = self.states[same]
        rest = self._run(state, words[same:])
        return rest[-1][2] if rest else state[2]


# --- tercom 0.7.25 ---------------------------------------------------------------------------


class Counters:
    """tercom's own counters, which it prints at the end: a check that a port takes its steps."""

    def __init__(self):
        self.beam_calls, self.segments, self.shifts_tried = 0, 0, 0


_MATCH, _SUB, _INS, _DEL = 1, 2, 3, 4  # the steps of an alignment
_STEP_NAMES = {_MATCH: " ", _SUB: "S", _INS: "I", _DEL: "D"}


def _beam_search(hyp: list, ref: list) -> tuple[float, list[str]]:
    """tercom's MinEditDist: the edit distance by the dynamic program over (reference word i,
    output word j), filled column by column (j), cells more than BEAM_WIDTH above the previous
    column's best left unexpanded; and the alignment (" " match, "S", "I", "D" per step) by its
    traceback. Ties go to the step that wrote the cell first: match or substitution, then
    insertion, then deletion. (The costs are whole numbers here: ints, not Java's doubles.)"""
    n, m = len(ref), len(hyp)
    cols = [[-1] * (n + 1) for _ in range(m + 1)]  # S[i][j] as cols[j][i]; -1: not reached
    steps = [[0] * (n + 1) for _ in range(m + 1)]
    cols[0][0] = 0
    current_best, current_first_good, cur_last_good = int(_INF), 0, 0
    for j in range(m + 1):
        col, step_col, inner = cols[j], steps[j], j < m
        if inner:
            nxt, step_nxt, word = cols[j + 1], steps[j + 1], hyp[j]
        last_best, current_best = current_best, int(_INF)
        first_good, current_first_good = current_first_good, -1
        last_good, cur_last_good = cur_last_good, -1
        limit = last_best + BEAM_WIDTH
        i = first_good
        while i <= n and i <= last_good:
            score = col[i]
            if score < 0 or (inner and score > limit):
                i += 1
                continue
            if current_first_good == -1:
                current_first_good = i
            if inner:
                if i < n:
                    old = nxt[i + 1]
                    if ref[i] == word:
                        if old == -1 or score < old:
                            nxt[i + 1], step_nxt[i + 1] = score, _MATCH
                        if score < current_best:
                            current_best = score
                    elif old < 0 or score + 1 < old:
                        nxt[i + 1], step_nxt[i + 1] = score + 1, _SUB
                        if score + 1 < current_best:
                            current_best = score + 1
                old = nxt[i]
                if old < 0 or old > score + 1:
                    nxt[i], step_nxt[i] = score + 1, _INS
            cur_last_good = i + 1
            if i < n:
                old = col[i + 1]
                if old < 0 or old > score + 1:
                    col[i + 1], step_col[i + 1] = score + 1, _DEL
                    if i >= last_good:
                        last_good = i + 1
            i += 1
    path, i, j = [], n, m
    while i > 0 or j > 0:
        step = steps[j][i]
        path.append(_STEP_NAMES[step])
        if step == _MATCH or step == _SUB:
            i, j = i - 1, j - 1
        elif step == _DEL:
            i -= 1
        elif step == _INS:
            j -= 1
        else:
            raise AssertionError(f"tercom's traceback found no step at ({i}, {j})")
    return float(cols[m][n]), path[::-1]


def _word_matches(hyp: list, ref: list) -> dict:
    """BuildWordMatches: every phrase of up to MAX_SHIFT_SIZE + 1 reference words all found in
    the output -> the sorted places it starts in the reference."""
    in_hyp = set(hyp)
    found = {}
    for start in range(len(ref)):
        end = start
        while end < len(ref) and end - start <= MAX_SHIFT_SIZE and ref[end] in in_hyp:
            found.setdefault(tuple(ref[start:end + 1]), set()).add(start)
            end += 1
    return {phrase: sorted(starts) for phrase, starts in found.items()}


def _align_errors(path: list, n_hyp: int, n_ref: int):
    """FindAlignErr: which output and reference words are wrong, and where each reference
    word's aligned output word is."""
    herr, rerr, ralign = [False] * n_hyp, [False] * n_ref, [0] * n_ref
    h = r = -1
    for step in path:
        if step in (" ", "S"):
            h, r = h + 1, r + 1
            herr[h] = rerr[r] = step == "S"
            ralign[r] = h
        elif step == "I":
            h += 1
            herr[h] = True
        else:  # "D"
            r += 1
            rerr[r] = True
            ralign[r] = h
    return herr, rerr, ralign


def _possible_shifts(cur: list, rloc: dict, herr, rerr, ralign) -> list[list[tuple]]:
    """GatherAllPossShifts: (start, end, newloc) of the phrases worth moving, by length - 1."""
    shifts = [[] for _ in range(MAX_SHIFT_SIZE + 1)]
    for start in range(len(cur)):
        places = rloc.get((cur[start],))
        if places is None or not any(
                start != ralign[m] and ralign[m] - start <= MAX_SHIFT_DIST
                and start - ralign[m] - 1 <= MAX_SHIFT_DIST for m in places):
            continue
        ok, end = True, start
        while ok and end < len(cur) and end < start + MAX_SHIFT_SIZE:
            phrase = tuple(cur[start:end + 1])
            ok = False
            if phrase in rloc:
                if not any(herr[start:end + 1]):
                    ok = True
                else:
                    for moveto in rloc[phrase]:
                        r = ralign[moveto]
                        if not (r != start and (r < start or r > end)
                                and r - start <= MAX_SHIFT_DIST and start - r <= MAX_SHIFT_DIST):
                            continue
                        ok = True
                        if not any(rerr[moveto:moveto + end - start + 1]):
                            continue
                        for roff in range(-1, end - start + 1):
                            if roff == -1 and moveto == 0:
                                shifts[end - start].append((start, end, -1))
                            elif start != ralign[moveto + roff] and (
                                    roff == 0 or ralign[moveto + roff] != ralign[moveto]):
                                shifts[end - start].append((start, end, ralign[moveto + roff]))
            end += 1
    return shifts


def _perform_shift(words: list, start: int, end: int, newloc: int) -> tuple[list, int]:
    """PerformShift: words with [start, end] moved after newloc (-1: to the front), and how
    many of its first words are unchanged."""
    if newloc == -1:
        return words[start:end + 1] + words[:start] + words[end + 1:], 0
    if newloc < start:
        return (words[:newloc + 1] + words[start:end + 1] + words[newloc + 1:start]
                + words[end + 1:]), newloc + 1
    if newloc > end:
        return (words[:start] + words[end + 1:newloc + 1] + words[start:end + 1]
                + words[newloc + 1:]), start
    # moving inside of itself
    cut = end + (newloc - start)
    return words[:start] + words[end + 1:cut + 1] + words[start:end + 1] + words[cut + 1:], start


def _best_shift(cur: list, ref: list, rloc: dict, edits: float, path: list, plain: Distances,
                counters: Counters):
    """CalcBestShift: the shift that lowers the edit distance most (None when none does), with
    the shifted words, their edit distance and their alignment."""
    herr, rerr, ralign = _align_errors(path, len(cur), len(ref))
    shifts = _possible_shifts(cur, rloc, herr, rerr, ralign)
    best_cost, best_edits, best = 0.0, edits, None
    plain.along(cur)
    for i in range(len(shifts) - 1, -1, -1):
        maxfix = 2 * (1 + i)
        curfix = edits - (best_cost + best_edits)
        if curfix > maxfix or (best_cost != 0 and curfix == maxfix):
            break
        for start, end, newloc in shifts[i]:
            curfix = edits - (best_cost + best_edits)
            if curfix > maxfix or (best_cost != 0 and curfix == maxfix):
                break
            shifted, same = _perform_shift(cur, start, end, newloc)
            counters.shifts_tried += 1
            counters.beam_calls += 1
            # Levenshtein's distance is the beam search's when it is at most the beam's width
            # (no cell on a path that cheap is ever left unexpanded), and never more than it:
            # where it already makes the shift no better, the beam search would too
            shifted_edits = float(plain(shifted, same))
            gain = (best_edits + best_cost) - (shifted_edits + 1.0)
            if not (gain > 0 or (best_cost == 0 and gain == 0)):
                continue
            if shifted_edits > BEAM_WIDTH:
                shifted_edits = _beam_search(shifted, ref)[0]
                gain = (best_edits + best_cost) - (shifted_edits + 1.0)
            if gain > 0 or (best_cost == 0 and gain == 0):
                best_cost, best_edits, best = 1.0, shifted_edits, shifted
    return best


def segment_edits(hyp: list, ref: list, counters: Counters | None = None) -> float:
    """TERcalc.TER on two lists of words: the edits (shifts included) from hyp to ref."""
    counters = counters or Counters()
    rloc, plain = _word_matches(hyp, ref), Distances(ref)
    counters.beam_calls += 1
    edits, path = _beam_search(hyp, ref)
    cur, shifts = hyp, 0
    while True:
        shifted = _best_shift(cur, ref, rloc, edits, path, plain, counters)
        if shifted is None:
            break
        shifts += 1
        cur = shifted
        edits, path = _beam_search(cur, ref)
    counters.segments += 1
    return edits + shifts


def sentence_ter(hyp: str, refs: list[str], counters: Counters | None = None) -> tuple[float, float]:
    """tercom on one segment (score_all_refs): (the edits to the closest reference, the average
    length of the references), case ignored. An empty output or reference costs every word of
    the other side."""
    best, words = None, 0
    for ref in refs:
        h, r = hyp.lower(), ref.lower()
        if not h and not r:  # TERnullstr: an empty side costs every word of the other
            edits = n = 0
        elif not h:
            edits = n = len(java_split(r))
        elif not r:
            edits, n = len(java_split(h)), 0
        else:
            hyp_words, ref_words = java_split(h), java_split(r)
            edits, n = segment_edits(hyp_words, ref_words, counters), len(ref_words)
        if best is None or best > edits:
            best = edits
        words += n
    return best, words / len(refs)


def ter(outputs: list[str], references: list[list[str]]) -> list[tuple]:
    """tercom on each segment: (edits, words, its counters) per output. total() sums them as
    tercom's Total TER line does."""
    segments = []
    for hyp, refs in zip(outputs, references, strict=True):
        counters = Counters()
        edits, words = sentence_ter(hyp, refs, counters)
        segments.append((edits, words, counters))
    return segments


def total(segments: list[tuple]) -> dict:
    """What tercom prints at the end, for these segments (ter's): "Total TER: score (edits /
    words)", the calls to its beam search, the segments scored, the shifts tried."""
    edits = words = 0.0
    beam_calls = scored = shifts = 0
    for e, w, counters in segments:  # (summed in order, as tercom sums its doubles)
        edits += e
        words += w
        beam_calls += counters.beam_calls
        scored += counters.segments
        shifts += counters.shifts_tried
    return {"score": edits / words if words else 0.0, "edits": edits, "words": words,
            "beam_calls": beam_calls, "segments_scored": scored, "shifts_tried": shifts}


# --- pyter3 ----------------------------------------------------------------------------------


def pyter(hyp: list, ref: list) -> float:
    """pyter3's ter(hyp, ref) on two lists of words: while some phrase moved to where it also
    starts in the reference lowers the edit distance, the move that lowers it most is made (ties:
    the larger shifted word list); each move costs one edit. (edits + distance) / len(ref)."""
    distance = Distances(ref)
    words, moves = list(hyp), 0
    while True:
        distance.along(words)
        before = distance.states[-1][2] if distance.m else len(words)
        best = None
        seen = set()
        for i1 in range(len(words)):
            for i2 in range(len(ref)):
                if i1 == i2 or words[i1] != ref[i2]:
                    continue
                length = 1
                while (i1 + length < len(words) and i2 + length < len(ref)
                       and words[i1 + length] == ref[i2 + length]):
                    length += 1
                shifted = words[:i1] + words[i1 + length:]
                shifted[i2:i2] = words[i1:i1 + length]
                key = tuple(shifted)
                if key in seen:
                    continue
                seen.add(key)
                candidate = (before - distance(shifted, min(i1, i2)), shifted)
                if best is None or candidate > best:
                    best = candidate
        if best is None or best[0] <= 0:
            break
        moves += 1
        words = best[1]
    distance.along(words)
    final = distance.states[-1][2] if distance.m else len(words)
    return (moves + final) / len(ref)
