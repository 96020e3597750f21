"""The E2E text as the paper's released code trains and scores it (Li & Liang's format).

The LoRA paper's Table 3 numbers were trained and scored on a pre-tokenized copy of E2E, released
with its code (microsoft/LoRA, examples/NLG/data/e2e/{train,valid,test}.txt), one line per (MR,
reference) pair:

    name : Cocum | Type : coffee shop | price : £ 20 - 25 | family friendly : no||Cocum is a non - kid - friendly coffee shop . 

The MR keys are renamed (eatType -> Type, priceRange -> price, familyFriendly -> family friendly),
and values and references are tokenized: punctuation split off, "£ 20 - 25", "family - friendly",
apostrophes split off ("isn 't", "there 's"). Scoring tokenized outputs against tokenized
references is not the same as scoring raw text: BLEU moves by about +0.7 on human references,
several times the paper's +-0.1. So the numbers of Table 3 need this format.

The released files were not all tokenized alike: train and valid split "isn't" as "isn 't" and
every hyphen between letters or digits, while test splits it as "is n't" (Penn Treebank style)
and keeps "5-star" and "£ 20-£25" whole. `tokenize(text, style)` reproduces each: the rebuilt
valid.txt and test.txt equal the released lines on every MR and on 99.98% and 99.94% of the
references (tests/test_paper_format.py lists the rest). The released train.txt is not available
here; it is rebuilt from the official training CSV in the style of valid.txt, released with it.

Scoring in this format (sample.py) uses the released references themselves when it can find or
download them (prepare.released_lines), and the rebuilt ones otherwise, saying which.
"""

import re

KEYS = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}

# The released dev and test files, and their SHA-256 (../shared/data/e2e-lora/SOURCE.txt).
RELEASED_URL = "https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG/data/e2e/"
RELEASED = {
    "dev": ("valid.txt", "ba963113c8401d3d26216c0dc0a6dae1ea6ea927de3bf830e32c41f65401c80d"),
    "test": ("test.txt", "81b1bcd40c4f12845ec4eb61a77bf43765d112483cd9b2f91ef10bfc1b3d8f13"),
}


def _word(w: str, style: str) -> list[str]:
    """One whitespace-separated word, split into the released tokens."""
    front, back = [], []
    while len(w) > 1 and w[0] in "'\"(£$€":  # opening quotes, brackets, currency
        front.append(w[0])
        w = w[1:]
    while len(w) > 1 and w[-1] in ".,!?;:)\"'" and (w[-2].isalnum() or w[-2] in ".,!?;:)\"'"):
        if w[-2:] == "..":  # a run of periods stays one token
            break
        back.insert(0, w[-1])
        w = w[:-1]
    if style == "test":  # Penn Treebank's n't; hyphens only between two letters or two digits
        w = re.sub(r"(?<=[a-zA-Z])-(?=[a-zA-Z])|(?<=\d)-(?=\d)", " - ", w)
        w = re.sub(r"(?i)(?<=[a-z])n't$", " n't", w)
    else:  # every hyphen between letters or digits
        w = re.sub(r"(?<=[^\W_])-(?=[^\W_])", " - ", w)
    if "n't" not in w.split():
        w = re.sub(r"(?<=[^\W_])'(?=[^\W_])", " '", w)  # it's -> it 's, isn't -> isn 't
    w = re.sub(r"(?<=[a-zA-Z])([.,])(?=[A-Z])", r" \1 ", w)  # "centre.The"
    return front + w.split() + back


def tokenize(text: str, style: str = "dev") -> str:
    """Text as the released files tokenize it: style "dev" (train and valid) or "test"."""
    if style == "test":
        text = re.sub(r"(^|\s)£", r"\1£ ", text)  # only a word-initial pound sign
    else:
        text = text.replace("£", " £ ")
    text = re.sub(r"(?<!\d),|,(?!\d)", " , ", text)  # commas, except inside 1,000
    text = re.sub(r"(\.\.+)", r" \1 ", text)  # "..", "..."
    return " ".join(t for w in text.split() for t in _word(w, style))


def context(items: list[tuple[str, str]]) -> str:
    """The MR as the released files write it: 'name : Cocum | Type : coffee shop | ...'."""
    return " | ".join(f"{KEYS.get(key, key)} : {tokenize(value)}" for key, value in items)


def style(split: str) -> str:
    return "test" if split == "test" else "dev"
