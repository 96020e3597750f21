"""Stanford PTBTokenizer 3.4.1 in pure Python: the tokenizer the COCO caption code runs in Java
(with -preserveLines -lowerCase) before ROUGE-L, CIDEr and METEOR of the E2E scorer.

    ptb_tokenize_lines(["Café Sicilia isn't kid friendly."])
    -> [["café", "sicilia", "is", "n't", "kid", "friendly", "."]]

PTBTokenizer is a JFlex lexer: at each position every rule is tried, the longest match wins and
ties go to the earlier rule; a rule's trailing context (JFlex r1/r2, `then` below) counts for the
length but is scanned again. The rules follow CoreNLP's PTBLexer.flex and were checked token for
token against the 3.4.1 jar on every E2E reference and system output (50,598 lines); the test
suite checks again against the jar when Java and pycocoevalcap are installed. Rules for text the
E2E data never has (URLs, e-mail, fractions) are kept so other English text tokenizes sensibly.
"""

import functools
import re

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
