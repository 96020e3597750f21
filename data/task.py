"""A task: context -> target pairs, Z = {(x_i, y_i)} (Sec. 2), and the one pipeline every task
goes through: GPT-2's tokens, the training sequences, the batches, and what is decoded and scored.

Every example is laid out as the paper's released E2E code lays it out:

    context<|endoftext|> target<|endoftext|>
    '--- the prompt ---''--- the loss ---'

in tiktoken's "gpt2" encoding, the target with a leading space. The loss covers the target and
the final <|endoftext|> only (collate): the model learns p(target | context). At test time it is
given the prompt and writes until <|endoftext|>; each distinct context is decoded once and scored
against all its targets with the E2E metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr:
data/e2e/metrics.py, which work on any text).

The tasks behind one interface (Task), picked by open_task(--data):
- `webnlg` or `dart`, or a folder of their files: the paper's other two tables (14 and 13),
  data/webnlg/ and data/dart/, scored with BLEU, METEOR and TER (data/triples.py);
- a folder with train.jsonl: your own task (data/jsonl.py, the format is there);
- anything else (no --data, `e2e`, or a folder with the official CSVs): E2E (data/e2e/task.py).

Each prints its scores beside its rows of the paper (PaperTable: Table 3, 13 or 14).
"""

import dataclasses
import difflib
import functools
import itertools
import os

import numpy as np
import torch

from data.files import DataError

EOT = 50256  # <|endoftext|>: separates the context from the target, and ends the target


JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number",
              float: "a number", bool: "true or false", type(None): "null"}


def check_text(text, what: str = "") -> str:
    """text stripped; ValueError, its subject `what` ("the context"), when it is not a non-empty
    string free of the separator."""
    subject = f"{what} " if what else ""
    if not isinstance(text, str):
        raise ValueError(f"{subject}is {JSON_TYPES.get(type(text), 'a value')}, not a string")
    if not text.strip():
        raise ValueError(f"{subject}is empty")
    try:  # a lone surrogate ("\ud800" is valid JSON) is no character: it cannot be written out
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{subject}holds {text[e.start]!r} at character {e.start + 1}, half of "
                         "a UTF-16 pair (a lone surrogate), which is no character") from None
    if "<|endoftext|>" in text:
        raise ValueError(f"{subject}holds '<|endoftext|>', GPT-2's end-of-text marker, which "
                         "separates context and target here; remove it")
    return text.strip()


@dataclasses.dataclass(frozen=True)
class Column:
    """A score as a table of the paper prints it: its header, the factor it is shown at (BLEU
    x100), the digits after the point, and bare: '.38' for 0.38 (Tables 13 and 14's METEOR)."""
    header: str
    scale: int = 1
    digits: int = 2
    bare: bool = False

    def text(self, value: float, digits: int) -> str:
        text = f"{value * self.scale:.{digits}f}"
        return text[1:] if self.bare and text.startswith("0.") else text


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """A table of the paper that a task's scores print beside: its columns (a score's key, as
    the task's score() names it -> Column), its rows ((GPT-2 size, train.py --method) -> {"name",
    "params", "scores": {key: (mean, +- or None), as the paper prints them}}), and the score
    that picks a run's best epoch (higher is better)."""
    name: str
    columns: dict
    rows: dict
    select_by: str = "BLEU"

    def cell(self, key: str, mean: float, std: float | None = None, extra: int = 0) -> str:
        """A value (as score() gives it: BLEU in [0, 1]) as the table prints it, e.g.
        '70.4+-.1', '8.85+-.02', '.41'; extra: digits more than the paper's."""
        column = self.columns[key]
        text = column.text(mean, column.digits + extra)
        if std is None:
            return text
        spread = f"{std * column.scale:.{column.digits + extra}f}"
        return f"{text}+-{spread[1:] if spread.startswith('0.') else spread}"

    def paper_cell(self, key: str, mean: float, std: float | None) -> str:
        """A cell of `rows` (as the paper prints it: BLEU x100) printed as the paper prints it."""
        scale = self.columns[key].scale
        return self.cell(key, mean / scale, None if std is None else std / scale)

    def paper_row(self, size: str | None, method: str | None) -> str | None:
        """The row's cells, ' | '-joined, or None where the table has no such row."""
        row = self.rows.get((size, method))
        return row and " | ".join(self.paper_cell(k, *row["scores"][k]) for k in self.columns)


# The official GPT-2 sizes, by shape (n_layer, n_head, n_embd), with GPT-2's vocabulary and
# positions: the paper's rows are found by a model's shape, so a local copy counts.
SIZES = {(12, 12, 768): "gpt2", (24, 16, 1024): "gpt2-medium", (36, 20, 1280): "gpt2-large",
         (48, 25, 1600): "gpt2-xl"}


def size_of(config) -> str | None:
    """The official GPT-2 size a model has the shape of (a local copy of gpt2-medium counts,
    whatever its folder is called), or None."""
    if (config.vocab_size, config.block_size) != (50257, 1024):
        return None
    return SIZES.get((config.n_layer, config.n_head, config.n_embd))


class Task:
    """What train.py, sample.py and reproduce.py know of a task; E2ETask, JsonlTask and the
    triples tasks (WebNLG, DART) fill it in. splits: those it has (train and dev always, test to
    score on). label, unit: the first column of predictions.tsv, and what one decoded input is
    called. blank_line_ends: whether a blank line ends an output, as <|endoftext|> does (the
    released decode). decoding: default decoding settings (evaluation.Decoding's fields) where
    the paper's do not fit; recipe: train.py's, where Table 11 gives this task other values than
    E2E's (train.py's defaults)."""

    name, format, label, unit = "task", "", "context", "context"
    splits = ("train", "dev", "test")
    blank_line_ends = False
    decoding: dict = {}
    recipe: dict = {}
    suffix = ""  # what predictions' file names add (E2E's official text: "-official")

    @property
    def stop_tokens(self) -> tuple:
        return (EOT, 628) if self.blank_line_ends else (EOT,)  # 628: "\n\n"

    def locate(self):
        """Find (or download) the task's files: a DataError when they cannot be had."""

    def describe(self) -> str:
        """The layout of the text, recorded with a run (config.json's data_format)."""
        raise NotImplementedError

    def recorded(self) -> dict:
        """What tells this task's data apart in a decode's settings, beyond its format."""
        return {}

    def examples(self, split: str) -> "Examples":
        """The split's training sequences: examples[i] -> (token ids, prompt length)."""
        raise NotImplementedError

    def where(self, split: str, i: int) -> str:
        """Where example i of the split comes from: 'FILE, line N'."""
        raise NotImplementedError

    def eval_groups(self, split: str) -> tuple[list[tuple[str, str, list[str]]], str]:
        """What is decoded and scored: (label, context, references) per distinct context, and
        where the references come from."""
        raise NotImplementedError

    def check_input(self, text: str, mr: bool = False):
        """ValueError, saying what is wrong, for what a user typed: a context as the model reads
        it (sample.py --context), or with mr an E2E meaning representation (--mr)."""
        if mr:
            raise ValueError(f"is E2E's input (a meaning representation); this task ({self.name}) "
                             "reads --context TEXT")
        check_text(text)

    def check_split(self, split: str):
        """A DataError when the task has no such split (a JSONL task may lack test.jsonl)."""

    def prompt(self, text: str, mr: bool = False) -> list[int]:
        """What the model is given for text (checked by check_input): the context, then the
        separator."""
        self.check_input(text, mr)
        return tokenizer().encode(text) + [EOT]

    @property
    def table(self) -> PaperTable:
        """The table its scores print as: E2E's metrics and Table 3's columns, unless the task
        has its own (with the paper's rows where it has them: paper_size)."""
        from data.e2e import paper_results
        return paper_results.TABLE

    def paper_size(self, config) -> str | None:
        """The GPT-2 size whose rows of the paper's table this task prints beside a model of this
        shape, or None (a task of your own has none)."""
        return None

    def score(self, split: str, groups: list, outputs: list[str], meteor: bool) -> dict:
        """What a decode's scores.json adds: {"scores": {key: value}} (the keys of `table`'s
        columns; METEOR None without meteor, or where it cannot run), and what else the task
        reports. groups: eval_groups' first len(outputs), outputs one for each. Here: the five
        E2E metrics (data/e2e/metrics.py), on any text."""
        from data.e2e import metrics
        return {"scores": metrics.score([refs for _, _, refs in groups], outputs, meteor=meteor)}

    def notes(self, report: dict) -> list[str]:
        """Lines that sample.py prints under the table (another protocol's scores)."""
        return []


def open_task(data: str | None = None, format: str | None = None) -> Task:
    """The task in `data`: WebNLG or DART by name (`webnlg`, `dart`) or where a folder holds
    their files, a JSONL task where it holds train.jsonl, else E2E (`e2e`, its CSVs in data, or
    found as data/e2e/prepare.py finds them). format: E2E's text, paper (None) or official;
    every other task has one (its name, or "jsonl")."""
    from data.triples import triples_task

    if data == "e2e" and not os.path.exists(data):
        data = None
    check_data(data)
    if task := triples_task(data):  # WebNLG or DART
        if format not in (None, task.format):
            raise DataError(f"--format {format} is a layout of E2E's text; {data} is "
                            f"{task.name}'s data, which has one (drop --format)")
        return task
    if format == "jsonl" or (data and os.path.isfile(os.path.join(data, "train.jsonl"))):
        from data.jsonl import JsonlTask
        if format not in (None, "jsonl"):
            raise DataError(f"--format {format} is a layout of E2E's text; {data} is a JSONL "
                            "task, which has one (drop --format)")
        if not data:
            raise DataError("a JSONL task needs --data FOLDER")
        return JsonlTask(data)  # (which says what the folder lacks)
    from data.e2e.task import E2ETask
    if data and not any(os.path.isfile(os.path.join(data, name)) for name in E2ETask.FILES):
        raise DataError(f"{data} holds none of a task's files: {FILES}")
    return E2ETask(data, format or "paper")  # (which says what the folder lacks)


NAMES = ("e2e", "webnlg", "dart")  # the tasks --data finds by name (their own folders)
FILES = ("E2E's CSVs (trainset.csv, devset.csv, testset_w_refs.csv), WebNLG's (train.json, "
         "dev.json, test.json, or the challenge's XML), DART's (dart-v1.1.1-full-*.json or "
         ".xml), or your own train.jsonl (docs/your-own-data.md)")


def check_data(data: str | None):
    """A DataError for a --data that is no task: a name mistyped (with the known ones), a folder
    that does not exist, a file, an empty folder, or one with none of the tasks' files."""
    if data is None or (data in NAMES and not os.path.exists(data)):
        return
    if not os.path.exists(data):
        if near := difflib.get_close_matches(data.lower(), NAMES, n=1, cutoff=0.7):
            raise DataError(f"{data}: no such task or folder; did you mean {near[0]}? (the tasks "
                            f"by name: {', '.join(NAMES)})")
        raise DataError(f"{data}: no such folder (a task by name: {', '.join(NAMES)})")
    if not os.path.isdir(data):
        raise DataError(f"{data} is a file: give the folder that holds the task's files, or a "
                        f"task by name ({', '.join(NAMES)})")
    if not os.listdir(data):
        raise DataError(f"{data} is an empty folder: a task's folder holds {FILES}")


# --- tokens ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def tokenizer():
    """tiktoken's "gpt2" encoding (GPT-2's BPE), with a clear error when it cannot be fetched."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken fetches its vocabulary files on first use
        raise DataError(f"cannot load GPT-2's vocabulary (tiktoken: {type(e).__name__}; it "
                        "downloads the files on first use): offline, set TIKTOKEN_CACHE_DIR to a "
                        "folder that holds them") from None


def encode_pairs(pairs, block: int = 20_000) -> dict:
    """Token arrays for (context, target) pairs laid out as above: all sequences concatenated,
    with their offsets and the length of each prompt (context + separator), where the loss
    starts. pairs may be any iterable (a file read as it goes): they are taken a block at a time
    into arrays, so a million pairs never exist as Python lists of tokens at once, and the blocks
    are joined without a second copy of the whole; a context the block repeats is encoded once.
    (The text is checked to hold no <|endoftext|>, so ordinary encoding equals encode().
    tiktoken's batch encoding, with threads, is slower than this loop on short texts.)"""
    enc = tokenizer()
    tokens, lengths, prompts, rest = [], [], [], iter(pairs)
    while part := list(itertools.islice(rest, block)):
        encoded = {c: enc.encode_ordinary(c) for c in dict.fromkeys(c for c, _ in part)}
        sequences = [encoded[c] + [EOT] + enc.encode_ordinary(" " + t) + [EOT] for c, t in part]
        tokens.append(np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int32))
        lengths.append(np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences)))
        prompts.append(np.fromiter((len(encoded[c]) + 1 for c, _ in part), dtype=np.int32,
                                   count=len(part)))
    lengths = joined(lengths, np.int64)
    return {"tokens": joined(tokens, np.int32),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "prompt_lengths": joined(prompts, np.int32)}


def joined(parts: list, dtype) -> np.ndarray:
    """np.concatenate(parts), each part let go once copied: the peak is the whole plus a part,
    not twice the whole."""
    out, at = np.empty(sum(len(p) for p in parts), dtype=dtype), 0
    while parts:
        part = parts.pop(0)
        out[at:at + len(part)] = part
        at += len(part)
    return out


class Examples:
    """Tokenized examples of one split: examples[i] -> (token ids, prompt length)."""

    def __init__(self, arrays: dict):
        self.tokens, self.offsets = arrays["tokens"], arrays["offsets"]
        self.prompt_lengths = arrays["prompt_lengths"]

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]], int(self.prompt_lengths[i])


# --- batches: padding, and where the loss is taken ------------------------------------------


def collate(examples: list[tuple], pad: int = EOT,
            multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch to its longest example (rounded up to a multiple of `multiple`). targets[i, t]
    is the token after inputs[i, t], or -100 where no loss is taken: over the context and
    separator, and over the padding."""
    longest = -(-(max(len(tokens) for tokens, _ in examples) - 1) // multiple) * multiple
    inputs = torch.full((len(examples), longest), pad, dtype=torch.long)
    targets = torch.full((len(examples), longest), -100, dtype=torch.long)
    for i, (tokens, prompt_length) in enumerate(examples):
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        inputs[i, :len(tokens) - 1] = tokens[:-1]
        # the first position that predicts a target token is the separator's
        targets[i, prompt_length - 1:len(tokens) - 1] = tokens[prompt_length:]
    return inputs, targets


def loss_positions(targets: torch.Tensor, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the loss is taken, as flat indices into (B*T), and the labels there. Computed on
    the CPU next to collate, so the GPU never waits to find them. `multiple` pads their number
    up to a multiple (position 0, label -100: no loss), so compiled code sees fewer shapes."""
    flat = targets.flatten()
    positions = (flat != -100).nonzero().squeeze(1)
    extra = -len(positions) % multiple
    if not extra:
        return positions, flat[positions]
    return (torch.cat([positions, positions.new_zeros(extra)]),
            torch.cat([flat[positions], flat.new_full((extra,), -100)]))
