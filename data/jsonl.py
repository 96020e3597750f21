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
"""

import json
import os

from data.task import (JSON_TYPES, DataError, Examples, Task, check_text, encode_pairs,
                       read_text)

FILES = {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"}


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


def read_file(path: str) -> list[tuple[int, str, list[str]]]:
    """(line number, context, targets) for each line of a JSONL file, every line checked."""
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if line.strip():
            try:
                rows.append((number, *parse_line(line)))
            except ValueError as e:
                raise DataError(f"{path}, line {number}: {e}") from None
    if not rows:
        raise DataError(f"{path} holds no examples")
    return rows


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
        return f"jsonl: context + <|endoftext|> + ' ' + target + <|endoftext|>, {self.folder}"

    def recorded(self) -> dict:
        return {"task": self.folder}

    def examples(self, split: str) -> Examples:
        """One example per (context, target) pair, in the file's order (tokenized once)."""
        if split not in self._examples:
            pairs, lines = [], []
            for number, context, targets in self.rows(split):
                pairs += [(context, t) for t in targets]
                lines += [number] * len(targets)
            if repeated := len(pairs) - len(set(pairs)):
                print(f"note: {self.path(split)}: {repeated} (context, target) "
                      f"pair{'s' if repeated > 1 else ''} repeat an earlier line; kept as written")
            self._examples[split], self._lines[split] = Examples(encode_pairs(pairs)), lines
        return self._examples[split]

    def where(self, split: str, i: int) -> str:
        self.examples(split)
        return f"{self.path(split)}, line {self._lines[split][i]}"

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
        longest = max(len(tokens) - prompt for tokens, prompt in
                      (examples[i] for i in range(len(examples))))
        return {"max_new_tokens": -(-longest // 16) * 16}
