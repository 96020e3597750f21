"""Your own task: a folder of JSONL files, one example per line (`--data FOLDER` in train.py,
sample.py and reproduce.py).

    FOLDER/train.jsonl   {"context": "city : Oslo | sky : snow", "target": "Snow in Oslo today."}
    FOLDER/dev.jsonl     {"context": "city : Lima | sky : fog", "targets": ["Fog in Lima.", "..."]}
    FOLDER/test.jsonl    the same; optional: what sample.py decodes and scores by default

Each line is a JSON object with "context" (a string) and either "target" (a string) or "targets"
(a list of strings); other keys are ignored, blank lines skipped, text stripped at both ends. Lines
that share a context give it several targets: in training each (context, target) pair is one
example; in decoding the context is decoded once and scored against all its targets, as E2E's
MRs are. The examples are laid out as every task's (data/task.py):
`context<|endoftext|> target<|endoftext|>`, so no text may hold "<|endoftext|>".

Decoding defaults: the paper's (beam 10, length penalty 0.9, no repeated 4-grams), stopping at
<|endoftext|> only, with room for the longest target of train.jsonl (max_new_tokens). A bad line
is refused naming the file and line (DataError); a (context, target) pair written twice is kept,
with one note that counts them.

A file is read a line at a time and tokenized a block at a time (data/task.encode_pairs), so a
million lines never sit in memory as text; its token arrays are cached by its content
(data/files.cached): the next run, every run of an experiment and every rank of torchrun but the
first (which builds them) load them in a second or two.
"""

import array
import json
import os

import numpy as np

from data.files import DataError, cached
from data.task import JSON_TYPES, Examples, Task, check_text, encode_pairs

FILES = {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"}
LAYOUT = "jsonl: context + <|endoftext|> + ' ' + target + <|endoftext|>"  # (the cache's key too)


def parse_line(line: str) -> tuple[str, list[str]]:
    """(context, targets) of one JSONL line; ValueError saying what is wrong."""
    try:
        record = json.loads(line)
    except ValueError as e:
        raise ValueError(f"not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f'{JSON_TYPES.get(type(record), "a value")}, not an object '
                         '{"context": ..., "target": ...}')
    if "context" not in record:
        raise ValueError('no "context"')
    if ("target" in record) == ("targets" in record):
        raise ValueError('give "target" (a string) or "targets" (a list of strings)'
                         + (", not both" if "target" in record else ""))
    targets = [record["target"]] if "target" in record else record["targets"]
    if not isinstance(targets, list) or not targets:
        raise ValueError('"targets" must be a list of one or more strings')
    return (check_text(record["context"], "the context"),
            [check_text(t, "the target") for t in targets])


def stream(path: str):
    """(line number, context, targets) for each line of a JSONL file, every line checked, read a
    line at a time (UTF-8; a byte-order mark dropped)."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    empty = True
    with f:
        for number, raw in enumerate(f, start=1):
            try:
                line = (raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw).decode()
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 (byte 0x{raw[e.start]:02x} on line "
                                f"{number})") from None
            if line.strip():
                try:
                    yield number, *parse_line(line)
                except ValueError as e:
                    raise DataError(f"{path}, line {number}: {e}") from None
                empty = False
    if empty:
        raise DataError(f"{path} holds no examples")


def read_file(path: str) -> list[tuple[int, str, list[str]]]:
    """(line number, context, targets) for each line of a JSONL file, every line checked."""
    return list(stream(path))


def encode(path: str) -> dict:
    """One example per (context, target) pair of the file, in its order: the token arrays
    (encode_pairs), the line of each example ("lines"), and how many pairs repeat an earlier one
    ("repeated"), the file streamed through."""
    lines, keys = array.array("i"), array.array("q")  # 12 bytes a pair, not the pairs

    def pairs():
        for number, context, targets in stream(path):
            for target in targets:
                lines.append(number)
                keys.append(hash((context, target)))  # (64 bits: equal pairs, equal keys)
                yield context, target

    arrays = encode_pairs(pairs())
    keys = np.frombuffer(keys, dtype=np.int64)
    return {**arrays, "lines": np.frombuffer(lines, dtype=np.int32),
            "repeated": np.array(len(keys) - len(np.unique(keys)))}


class JsonlTask(Task):
    """A folder with train.jsonl, dev.jsonl and optionally test.jsonl."""

    format = "jsonl"

    def __init__(self, folder: str):
        self.folder, self.name = folder, os.path.basename(os.path.normpath(folder))
        missing = [FILES[s] for s in ("train", "dev") if not os.path.isfile(self.path(s))]
        if missing:
            raise DataError(f"{folder} lacks {', '.join(missing)} (a task folder holds "
                            "train.jsonl, dev.jsonl and, to score on, test.jsonl)")
        self.splits = ("train", "dev") + (("test",) if os.path.isfile(self.path("test")) else ())
        self._rows, self._examples, self._lines = {}, {}, {}

    def path(self, split: str) -> str:
        return os.path.join(self.folder, FILES[split])

    def check_split(self, split: str):
        if split not in self.splits:
            raise DataError(f"{self.folder} has no {split} split (no {FILES[split]}); decode "
                            "--split dev")

    def rows(self, split: str) -> list[tuple[int, str, list[str]]]:
        """The split's lines, read and checked once."""
        self.check_split(split)
        if split not in self._rows:
            self._rows[split] = read_file(self.path(split))
        return self._rows[split]

    def describe(self) -> str:
        return f"{LAYOUT}, {self.folder}"

    def recorded(self) -> dict:
        return {"task": self.folder}

    def examples(self, split: str) -> Examples:
        """One example per (context, target) pair, in the file's order (tokenized once: cached
        by the file's content)."""
        self.check_split(split)
        if split not in self._examples:
            arrays = cached(f"jsonl-{split}", [self.path(split)], LAYOUT,
                            lambda: encode(self.path(split)))
            if repeated := int(arrays["repeated"]):
                print(f"note: {self.path(split)}: {repeated} (context, target) "
                      f"pair{'s' if repeated > 1 else ''} repeat an earlier line; kept as written")
            self._examples[split], self._lines[split] = Examples(arrays), arrays["lines"]
        return self._examples[split]

    def where(self, split: str, i: int) -> str:
        self.examples(split)
        return f"{self.path(split)}, line {int(self._lines[split][i])}"

    def eval_groups(self, split: str):
        groups = {}  # context -> every target given for it, in order
        for _, context, targets in self.rows(split):
            groups.setdefault(context, []).extend(targets)
        return [(c, c, refs) for c, refs in groups.items()], self.path(split)

    @property
    def decoding(self) -> dict:
        """The paper's settings, with room for the longest target of train.jsonl (and its
        <|endoftext|>), rounded up to a multiple of 16."""
        examples = self.examples("train")
        longest = int((np.diff(examples.offsets) - examples.prompt_lengths).max())
        return {"max_new_tokens": -(-longest // 16) * 16}
