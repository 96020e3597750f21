"""The E2E NLG Challenge data (Novikova et al. 2017): official CSVs -> tokenized training examples.

Each example is one (meaning representation, reference) pair, laid out as

    name : The Vaults | eatType : pub | priceRange : more than £30<|endoftext|> The Vaults is a pub ...<|endoftext|>
    '---------------------- context: the MR, linearised --------------''-- separator, then the reference --'

tokenized with tiktoken's "gpt2" encoding. The loss covers the reference tokens and the final
<|endoftext|> only: the model learns p(reference | MR), and at test time it is given the context and
the separator and writes until <|endoftext|>.

    python data/e2e/prepare.py [--data DIR]     # download (if needed), check, tokenize, print counts

The official CSVs are downloaded into data/e2e/ on first use and checked against their SHA-256;
`--data DIR` (in train.py and sample.py too), or the environment variable E2E_DATA_DIR, reads them
from another folder instead. Token arrays
are cached in data/e2e/cache/, keyed by the format and the CSV's content.
"""

import argparse
import csv
import functools
import hashlib
import io
import os
import re
import sys
import zipfile

import numpy as np
import torch

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

HERE = os.path.dirname(os.path.abspath(__file__))
URL = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip"
SPLITS = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
SHA256 = {  # of the official release files (../shared/data/e2e/SOURCE.txt)
    "trainset.csv": "f27d48df45815288ab15619d47a79028c300fbb7f42e373668aba0b98c1d57c6",
    "devset.csv": "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9",
    "testset_w_refs.csv": "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd",
    "testset.csv": "9b90c8f88feae14d9e1ef37350b14d17294c5958e90a3f1a7846590ee97bdbb9",
}
EOT = 50256  # <|endoftext|>: separates the context from the reference, and ends the reference
FORMAT = "v1: 'key : value | ...' + <|endoftext|> + ' ' + reference + <|endoftext|>"


class DataError(ValueError):
    """A problem with the data files, naming the file (and row) and what to do."""


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
    from checkpoint import download  # the resumable downloader the GPT-2 checkpoints use

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


def read_split(path: str) -> list[tuple[str, str]]:
    """(MR, reference) rows of an E2E CSV, every row checked; errors name the file and row."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 (byte 0x{data[e.start]:02x} on line {line})") from None
    records = list(csv.reader(io.StringIO(text, newline="")))
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
        try:
            parse_mr(mr)
        except ValueError as e:
            raise DataError(f"{path}, row {row_number}: the MR {e}") from None
        rows.append((mr, ref))
    return rows


def group_by_mr(rows: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(MR, all its references) for each distinct MR, in order of first appearance: the unit
    decoded and scored on dev and test (where rows sharing an MR are consecutive anyway)."""
    groups = {}
    for mr, ref in rows:
        groups.setdefault(mr, []).append(ref)
    return list(groups.items())


# --- the format and the tokens -------------------------------------------------------------------


def context(mr: str) -> str:
    """The MR as the model reads it: 'name : The Vaults | eatType : pub | ...'."""
    return " | ".join(f"{key} : {value}" for key, value in parse_mr(mr))


@functools.lru_cache(maxsize=1)
def tokenizer():
    """tiktoken's "gpt2" encoding (GPT-2's BPE), with a clear error when it cannot be fetched."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken fetches its vocabulary files on first use
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
        raise DataError(f"cannot load tiktoken's gpt2 vocabulary ({reason}); without network, set "
                        "TIKTOKEN_CACHE_DIR to a folder that holds it") from None


def prompt_tokens(mr: str) -> list[int]:
    """What the model is given at test time: the context, then the separator."""
    text = context(mr)  # a malformed MR is reported before the vocabulary is needed
    return tokenizer().encode(text) + [EOT]


def encode(rows: list[tuple[str, str]]) -> dict:
    """Token arrays for (MR, reference) rows: all sequences concatenated, with their offsets and
    the length of each prompt (context + separator), where the loss starts."""
    enc = tokenizer()
    prompts = {mr: prompt_tokens(mr) for mr in dict.fromkeys(mr for mr, _ in rows)}
    sequences = [prompts[mr] + enc.encode(" " + ref) + [EOT] for mr, ref in rows]
    return {"tokens": np.array([t for s in sequences for t in s], dtype=np.int32),
            "offsets": np.cumsum([0] + [len(s) for s in sequences]).astype(np.int64),
            "prompt_lengths": np.array([len(prompts[mr]) for mr, _ in rows], dtype=np.int32)}


class Examples:
    """Tokenized examples of one split: examples[i] -> (token ids, prompt length)."""

    def __init__(self, arrays: dict):
        self.tokens, self.offsets = arrays["tokens"], arrays["offsets"]
        self.prompt_lengths = arrays["prompt_lengths"]

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]], int(self.prompt_lengths[i])


def load_examples(split: str, data_dir: str | None = None) -> Examples:
    """The split's examples, tokenized once and cached in data/e2e/cache/ (keyed by the format
    and the CSV's content, so another folder or an edited file gets its own cache)."""
    path = os.path.join(locate(data_dir), SPLITS[split])
    with open(path, "rb") as f:
        key = hashlib.sha256(FORMAT.encode() + f.read()).hexdigest()[:16]
    cache = os.path.join(HERE, "cache", f"{split}-{key}.npz")
    if os.path.isfile(cache):
        with np.load(cache) as arrays:
            return Examples(dict(arrays))
    arrays = encode(read_split(path))
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache + ".tmp", "wb") as f:
        np.savez(f, **arrays)
    os.replace(cache + ".tmp", cache)
    return Examples(arrays)


# --- batches: padding, and where the loss is taken ------------------------------------------------


def collate(examples: list[tuple], pad: int = EOT) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch to its longest example. targets[i, t] is the token after inputs[i, t], or -100
    where no loss is taken: over the context and separator, and over the padding."""
    longest = max(len(tokens) for tokens, _ in examples) - 1
    inputs = torch.full((len(examples), longest), pad, dtype=torch.long)
    targets = torch.full((len(examples), longest), -100, dtype=torch.long)
    for i, (tokens, prompt_length) in enumerate(examples):
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        inputs[i, :len(tokens) - 1] = tokens[:-1]
        # the first position that predicts a reference token is the separator's
        targets[i, prompt_length - 1:len(tokens) - 1] = tokens[prompt_length:]
    return inputs, targets


def loss_positions(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the loss is taken, as flat indices into (B*T), and the labels there. Computed on
    the CPU next to collate, so the GPU never waits to find them."""
    flat = targets.flatten()
    positions = (flat != -100).nonzero().squeeze(1)
    return positions, flat[positions]


def load_mrs(split: str, data_dir: str | None = None) -> list[tuple[str, list[str]]]:
    """The split's distinct MRs, each with its references (for decoding and scoring)."""
    return group_by_mr(read_split(os.path.join(locate(data_dir), SPLITS[split])))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Download (if needed), check and tokenize the "
                                                 "E2E NLG data; print what it holds.")
    parser.add_argument("--data", help="folder with the official CSVs (default: data/e2e/, "
                                       "downloaded when missing)")
    args = parser.parse_args(argv)
    try:
        for split in SPLITS:
            rows = load_mrs(split, args.data)
            lengths = np.diff(load_examples(split, args.data).offsets)
            print(f"{split:5s} {sum(len(refs) for _, refs in rows):6,} examples  {len(rows):5,} "
                  f"MRs  tokens per example: mean {lengths.mean():.1f}, max {lengths.max()}")
    except DataError as e:
        print(f"prepare.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
