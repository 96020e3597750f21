"""NIST mteval-v13a's tokenizer and n-gram counts: what E2E's BLEU and NIST (data/e2e/metrics.py)
and the detokenized BLEU of WebNLG's and DART's released protocol (mt_metrics.multi_bleu, as
multi-bleu-detok.perl) share."""

import re
from collections import Counter

# mteval lowercases A-Z only, and puts spaces around the ASCII punctuation in its character class
# [{-~[-` -&(-+:-@/], that is all of it but ' - . , (the last two follow below).
_MTEVAL_PUNCTUATION = {c: f" {c} " for c in "{|}~[\\]^_`!\"#$%&()*+:;<=>?@/"}
_MTEVAL_CHARS = str.maketrans({**{c: c.lower() for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
                               **_MTEVAL_PUNCTUATION})
_MTEVAL_CHARS_CASED = str.maketrans(_MTEVAL_PUNCTUATION)


def mteval_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """mteval-v13a's tokenization(): punctuation split off, and without its -c ASCII lowercased
    (lowercase=False: the case kept, as multi-bleu-detok.perl tokenizes)."""
    text = re.sub(r"\s+", " ", text).replace("<skipped>", "")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = f" {text} ".translate(_MTEVAL_CHARS if lowercase else _MTEVAL_CHARS_CASED)
    text = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", text)  # . and , unless preceded by a digit
    text = re.sub(r"([\.,])([^0-9])", r" \1 \2", text)  # . and , unless followed by a digit
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)  # - after a digit
    return text.split()


def ngram_counts(words: list[str], max_n: int) -> Counter:
    """Counts of all n-grams of words for n = 1..max_n, as tuples."""
    counts = Counter()
    for n in range(1, max_n + 1):
        counts.update(zip(*(words[i:] for i in range(n))))
    return counts
