"""The E2E NLG Challenge data (Novikova et al. 2017): official CSVs -> tokenized training examples.

Each example is one (meaning representation, reference) pair, laid out as every task's examples
are (data/task.py):

    name : The Vaults | Type : pub | price : more than £ 30<|endoftext|> The Vaults is a pub ...<|endoftext|>
    '---------------- context: the MR, linearised -----------''-- separator, then the reference --'

tokenized with tiktoken's "gpt2" encoding. The loss covers the reference tokens and the final
<|endoftext|> only: the model learns p(reference | MR), and at test time it is given the context and
the separator and writes until <|endoftext|>. Two formats of the text:

- paper (the default): the pre-tokenized text the paper's released code trains and scores on
  (paper_format.py), rebuilt from the CSVs; what Table 3 needs.
- official: the CSVs' own text, as the E2E challenge scores it.

    python data/e2e/prepare.py [--data DIR] [--format paper|official]   # check, tokenize, count
    python data/e2e/prepare.py --print dev|test|train                   # 'context||reference ' lines

The official CSVs are downloaded into data/e2e/ on first use and checked against their SHA-256;
`--data DIR` (in train.py and sample.py too), or the environment variable E2E_DATA_DIR, reads them
from another folder instead. Token arrays are cached in data/e2e/cache/, keyed by the format and
the CSV's content. The paper's released dev and test text (the references Table 3 was scored
against) comes from $E2E_LORA_DIR, else is downloaded into data/e2e/released/.
"""

import argparse
import csv
import hashlib
import io
import os
import re
import sys
import zipfile

import numpy as np

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.e2e import paper_format  # noqa: E402
# the pipeline every task shares (E2E is one task), known here by its old names too
from data.files import DataError, cached, read_text  # noqa: E402, F401
from data.task import (EOT, Examples, collate, encode_pairs, loss_positions,  # noqa: E402, F401
                       tokenizer)

HERE = os.path.dirname(os.path.abspath(__file__))
URL = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip"
SPLITS = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
SHA256 = {  # of the official release files (../shared/data/e2e/SOURCE.txt)
    "trainset.csv": "f27d48df45815288ab15619d47a79028c300fbb7f42e373668aba0b98c1d57c6",
    "devset.csv": "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9",
    "testset_w_refs.csv": "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd",
    "testset.csv": "9b90c8f88feae14d9e1ef37350b14d17294c5958e90a3f1a7846590ee97bdbb9",
}
# --- finding (and downloading) the CSVs ----------------------------------------------------------


def locate(data_dir: str | None = None) -> str:
    """The folder holding the CSVs: data_dir as given, else $E2E_DATA_DIR, else data/e2e/
    (downloaded if missing)."""
    data_dir = data_dir or os.environ.get("E2E_DATA_DIR") or None
    if data_dir is not None:
        missing = [name for name in SPLITS.values() if not os.path.isfile(os.path.join(data_dir, name))]
        if missing:
            raise DataError(f"{data_dir} lacks {', '.join(missing)} (the official E2E release files)")
        return data_dir
    if not all(os.path.isfile(os.path.join(HERE, name)) for name in SPLITS.values()):
        download_release(HERE)
    return HERE


def download_release(folder: str):
    """Download the official zip, extract the four CSVs into folder, check their SHA-256."""
    from plumbing.checkpoint import download  # the resumable downloader the GPT-2 checkpoints use

    archive = os.path.join(folder, "e2e-dataset.zip")
    if not os.path.isfile(archive):
        try:
            download(URL, archive, hint=f"or pass --data DIR (or set E2E_DATA_DIR), a folder with "
                                        f"{', '.join(SPLITS.values())}")
        except RuntimeError as e:
            raise DataError(str(e)) from None
    try:
        with zipfile.ZipFile(archive) as z:
            for name in SHA256:
                target = os.path.join(folder, name)
                with z.open(f"e2e-dataset/{name}") as src, open(target + ".tmp", "wb") as dst:
                    dst.write(src.read())
                os.replace(target + ".tmp", target)
    except (zipfile.BadZipFile, KeyError) as e:
        os.remove(archive)
        raise DataError(f"{archive} is not the E2E release ({e}); deleted it, run again to "
                        "download it afresh") from None
    for name, expected in SHA256.items():
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != expected:
            for other in [archive] + [os.path.join(folder, n) for n in SHA256]:
                if os.path.exists(other):
                    os.remove(other)
            raise DataError(f"{name} from {URL} has SHA-256 {got}, not {expected}: the download "
                            "is damaged or not the official release; deleted it, run again")


# --- reading and checking a split ----------------------------------------------------------------

_MR_ITEM = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*(?:,|$)")


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """'name[The Vaults], eatType[pub]' -> [('name', 'The Vaults'), ('eatType', 'pub')]."""
    items, pos = [], 0
    while pos < len(mr):
        m = _MR_ITEM.match(mr, pos)
        if m is None:
            raise ValueError(f"does not parse as key[value], key[value], ...: {mr!r}")
        items.append((m[1], m[2].strip()))
        pos = m.end()
    if not items:
        raise ValueError("is empty")
    return items


# The eight attributes of every E2E MR (Novikova et al. 2017, Table 1).
ATTRIBUTES = ("name", "eatType", "food", "priceRange", "customer rating", "area",
              "familyFriendly", "near")


def check_mr(mr: str) -> list[tuple[str, str]]:
    """parse_mr for an MR a user typed (sample.py --mr), which the model only understands in
    E2E's terms: E2E's attributes, each once and with a value, and no control characters or
    <|endoftext|> (the separator). Raises ValueError saying what is wrong."""
    if "<|endoftext|>" in mr:
        raise ValueError("holds '<|endoftext|>', which separates the MR from the text here")
    if bad := sorted({repr(c) for c in mr if ord(c) < 32 or ord(c) == 127}):
        raise ValueError(f"holds control characters ({', '.join(bad)})")
    items = parse_mr(mr)
    keys = [key for key, _ in items]
    if unknown := [key for key in keys if key not in ATTRIBUTES]:
        raise ValueError(f"has attributes E2E does not know ({', '.join(map(repr, unknown))}); "
                         f"use {', '.join(ATTRIBUTES)}")
    if twice := sorted({key for key in keys if keys.count(key) > 1}):
        raise ValueError(f"gives {', '.join(twice)} more than once")
    if empty := [key for key, value in items if not value]:
        raise ValueError(f"leaves {', '.join(f'{key}[]' for key in empty)} empty")
    return items


def read_split(path: str) -> list[tuple[str, str]]:
    """(MR, reference) rows of an E2E CSV, every row checked; errors name the file and row."""
    records = list(csv.reader(io.StringIO(read_text(path), newline="")))
    if not records:
        raise DataError(f"{path} is empty")
    header = [h.strip().lower() for h in records[0]]
    for column in ("mr", "ref"):
        if column not in header:
            raise DataError(f"{path}: no '{column}' column (the header is {records[0]})")
    mr_col, ref_col = header.index("mr"), header.index("ref")
    rows = []
    for row_number, record in enumerate(records[1:], start=2):  # row 1 is the header
        if len(record) != len(header):
            raise DataError(f"{path}, row {row_number}: {len(record)} fields, expected "
                            f"{len(header)}")
        mr, ref = record[mr_col].strip(), " ".join(record[ref_col].split())
        if not ref:
            raise DataError(f"{path}, row {row_number}: the reference is empty")
        if "<|endoftext|>" in mr + ref:
            raise DataError(f"{path}, row {row_number}: holds '<|endoftext|>', GPT-2's end of "
                            "text marker, which separates MR and reference here; remove it")
        try:
            parse_mr(mr)
        except ValueError as e:
            raise DataError(f"{path}, row {row_number}: the MR {e}") from None
        rows.append((mr, ref))
    if not rows:
        raise DataError(f"{path} holds no examples, only a header; use the official release"
                        + (" (delete the file to download it again)"
                           if os.path.dirname(os.path.abspath(path)) == HERE else ""))
    return rows


def group_by_mr(rows: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(MR, all its references) for each distinct MR, in order of first appearance: the unit
    decoded and scored on dev and test (where rows sharing an MR are consecutive anyway)."""
    groups = {}
    for mr, ref in rows:
        groups.setdefault(mr, []).append(ref)
    return list(groups.items())


# --- the two text formats -----------------------------------------------------------------------
# "paper": the pre-tokenized text the paper's released code trains and scores on (paper_format.py),
# what Table 3 needs; "official": the CSVs' own text, as the E2E challenge scores it.

FORMATS = {  # the layout of each format; part of the cache key
    "paper": "v2 paper: 'name : X | Type : Y' + <|endoftext|> + ' ' + tokenized ref + <|endoftext|>",
    "official": "v1: 'key : value | ...' + <|endoftext|> + ' ' + reference + <|endoftext|>",
}


def check_format(format: str):
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r}: choose paper (the released text the paper's "
                        "Table 3 used) or official (the raw E2E CSVs)")


def context(mr: str, format: str = "paper") -> str:
    """The MR as the model reads it: 'name : The Vaults | Type : pub | ...' (paper) or
    'name : The Vaults | eatType : pub | ...' (official)."""
    items = parse_mr(mr)
    if format == "paper":
        return paper_format.context(items)
    return " | ".join(f"{key} : {value}" for key, value in items)


def reference(ref: str, split: str, format: str = "paper") -> str:
    """A reference as the model learns it (and, rebuilt, as it is scored)."""
    return paper_format.tokenize(ref, paper_format.style(split)) if format == "paper" else ref


def prompt_tokens(mr: str, format: str = "paper") -> list[int]:
    """What the model is given at test time: the context, then the separator."""
    text = context(mr, format)  # a malformed MR is reported before the vocabulary is needed
    return tokenizer().encode(text) + [EOT]


def encode(rows: list[tuple[str, str]], split: str = "train", format: str = "paper") -> dict:
    """Token arrays for (MR, reference) rows (data/task.py's encode_pairs of their contexts and
    references as the format writes them)."""
    return encode_pairs([(context(mr, format), reference(ref, split, format)) for mr, ref in rows])


def load_examples(split: str, data_dir: str | None = None, format: str = "paper") -> Examples:
    """The split's examples, tokenized once and cached in data/e2e/cache/ (keyed by the format
    and the CSV's content, so another folder or an edited file gets its own cache)."""
    check_format(format)
    path = os.path.join(locate(data_dir), SPLITS[split])
    return Examples(cached(f"{split}-{format}", [path], f"{FORMATS[format]} ({split})",
                           lambda: encode(read_split(path), split, format),
                           os.path.join(HERE, "cache")))


def load_mrs(split: str, data_dir: str | None = None) -> list[tuple[str, list[str]]]:
    """The split's distinct MRs, each with its official references."""
    return group_by_mr(read_split(os.path.join(locate(data_dir), SPLITS[split])))


def print_lines(split: str, data_dir: str | None = None, format: str = "paper") -> list[str]:
    """The split as 'context||reference ' lines, the layout of the released files."""
    check_format(format)
    return [f"{context(mr, format)}||{reference(ref, split, format)} "
            for mr, ref in read_split(os.path.join(locate(data_dir), SPLITS[split]))]


# --- what is decoded and scored ------------------------------------------------------------------


def released_lines(split: str) -> list[str] | None:
    """The lines of the paper's released dev or test file ("context||reference "), from
    $E2E_LORA_DIR, else data/e2e/released/ (downloaded on first use, checked against its
    SHA-256); None when neither works (no network)."""
    name, digest = paper_format.RELEASED[split]
    here = os.path.join(HERE, "released")
    folder = os.environ.get("E2E_LORA_DIR") or here
    path = os.path.join(folder, name)
    if not os.path.isfile(path) and folder == here:
        from plumbing.checkpoint import DownloadError, download
        try:
            download(paper_format.RELEASED_URL + name, path, hint="")
        except DownloadError:
            return None
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != digest:
        raise DataError(f"{path} is not the paper's released {name} (its SHA-256 differs); "
                        "delete it, or point E2E_LORA_DIR at the released files")
    return data.decode("utf-8").split("\n")[:-1]


def eval_groups(split: str, data_dir: str | None = None,
                format: str = "paper") -> tuple[list[tuple[str, str, list[str]]], str]:
    """What is decoded and scored, one entry per distinct context: (its first MR, the context the
    model reads, the references), and where the references come from. In the paper format the
    references are the released file's, grouped by context as the released decode script groups
    them (rebuilt from the CSV when that file cannot be had); in the official format, the CSV's."""
    check_format(format)
    rows = read_split(os.path.join(locate(data_dir), SPLITS[split]))
    groups = {}  # context -> [first MR, references]
    for mr, ref in rows:
        groups.setdefault(context(mr, format), [mr, []])[1].append(reference(ref, split, format))
    source = f"{SPLITS[split]} ({'rebuilt in the paper format' if format == 'paper' else 'as is'})"
    released = released_lines(split) if format == "paper" else None
    if released is not None:
        by_context = {}
        for line in released:
            ctx, completion = line.split("||", 1)
            by_context.setdefault(ctx, []).append(
                completion.split("<|endoftext|>")[0].split("\n\n")[0].strip())
        if set(by_context) != set(groups):
            raise DataError(f"the released {paper_format.RELEASED[split][0]} describes other MRs "
                            f"than {SPLITS[split]}")
        for ctx, group in groups.items():
            group[1] = by_context[ctx]
        source = f"the paper's released {paper_format.RELEASED[split][0]}"
    return [(mr, ctx, refs) for ctx, (mr, refs) in groups.items()], source


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Download (if needed), "
                                     "check and tokenize the E2E NLG data; print what it holds.")
    parser.add_argument("--data", help="folder with the official CSVs (default: $E2E_DATA_DIR, "
                                       "else data/e2e/, downloaded when missing)")
    parser.add_argument("--format", default="paper", choices=list(FORMATS),
                        help="paper: the released pre-tokenized text (default); official: the CSVs")
    parser.add_argument("--print", choices=list(SPLITS), dest="split",
                        help="print the split as 'context||reference' lines, as the released "
                             "files lay them out")
    args = parser.parse_args(argv)
    try:
        if args.split:
            sys.stdout.write("".join(line + "\n" for line in print_lines(args.split, args.data,
                                                                        args.format)))
            return 0
        for split in SPLITS:
            rows = load_mrs(split, args.data)
            lengths = np.diff(load_examples(split, args.data, args.format).offsets)
            print(f"{split:5s} {sum(len(refs) for _, refs in rows):6,} examples  {len(rows):5,} "
                  f"MRs  tokens per example: mean {lengths.mean():.1f}, max {lengths.max()}")
    except DataError as e:
        print(f"prepare.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the cache is written whole or not at all
        print("prepare.py: Ctrl-C: stopped; what was cached stays cached", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
