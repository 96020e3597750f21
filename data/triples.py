"""The paper's other two GPT-2 tasks, WebNLG (Table 14) and DART (Table 13), as tasks
(data/task.py's interface): triples in, a text out, both as the released code lays them out.

    Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina<|endoftext|> A school from Mars Hill, North Carolina, joined in 1973.<|endoftext|>

Each task is a folder, data/webnlg/ and data/dart/, with the same three modules: prepare.py (its
files, found or downloaded, and read: entries of triples and texts), metrics.py (its two
protocols of BLEU, METEOR and TER, data/scorers/mt_metrics.py's) and paper_results.py (its table).
TriplesTask puts them together; open_task() picks one by name or by what a folder holds:

- training: one example per text of an entry (prepare.pairs, the released converter's lines);
- decoding: each distinct input once, as the released decode script groups them (metrics.inputs),
  cut at <|endoftext|> or a blank line, with Table 11's length penalty, 0.8;
- scores: the released code's protocol in the table (comparable with the paper's), the official
  challenge's under it (scores.json keeps both);
- Table 11's recipe where it differs from E2E's (DART: no weight decay, dropout or smoothing).
"""

import os
import xml.etree.ElementTree as ET

from data.files import DataError, cached, read_text
from data.scorers import mt_metrics
from data.task import Examples, Task, encode_pairs, open_task, size_of


def xml_entries(path: str) -> list[tuple[dict, list[tuple[str, str, str]], list[tuple[str, str]]]]:
    """Each <entry> of a file in the WebNLG challenge's XML (WebNLG's, DART's): its attributes,
    its triples (modifiedtripleset: 'subject | property | object') and its texts (lex: the text,
    its comment)."""
    try:
        root = ET.fromstring(read_text(path))
    except ET.ParseError as e:
        raise DataError(f"{path} is not valid XML ({e})") from None
    entries = []
    for entry in root.iter("entry"):
        triples = []
        for triple in entry.iterfind("modifiedtripleset/mtriple"):
            parts = (triple.text or "").split(" | ")
            if len(parts) != 3:
                raise DataError(f"{path}: entry {entry.attrib.get('eid')} has the triple "
                                f"{triple.text!r}, not 'subject | property | object'")
            triples.append(tuple(parts))
        lexs = [(lex.text or "", lex.attrib.get("comment", "")) for lex in entry.findall("lex")]
        entries.append((dict(entry.attrib), triples, lexs))
    return entries


def triples_task(data: str | None) -> Task | None:
    """WebNLG's or DART's task when data names it ("webnlg", "dart", a path first) or is a
    folder of its files, else None."""
    from data.dart.task import DartTask
    from data.webnlg.task import WebNLGTask

    for cls in (WebNLGTask, DartTask):
        if data == cls.name and not os.path.exists(data):
            return cls(None)  # (its default folder, or its environment variable's)
        if data and os.path.isdir(data) and cls.holds(data):
            return cls(data)
    return None


def split_entries(name: str, data: str | None, split: str) -> list:
    """The entries of one split of WebNLG's or DART's data (name), for its scoring command:
    data as train.py's --data takes it (the task's name, or a folder; None: its own folder)."""
    task = open_task(data or name)
    if task.name != name:
        called = {"e2e": "E2E's", "webnlg": "WebNLG's", "dart": "DART's"}
        theirs = called.get(task.name, "your own task's")
        raise DataError(f"--data {data} is {theirs} data, not {called[name]}")
    return task.entries(split)


class TriplesTask(Task):
    """A task of prepare (its files) and metrics (its protocols), its table from paper_results;
    data_dir None: the task's own default folder (prepare.locate)."""

    label, unit = "triples", "input"
    blank_line_ends = True  # the released decode cuts outputs at a blank line, as for E2E
    decoding = {"length_penalty": 0.8}  # Table 11 (E2E's is 0.9); beam 10, 4-grams as E2E's
    prepare = metrics = paper_results = None  # the task's modules
    SUFFIXES = {"all": ""}  # a subset's suffix in the table's keys (WebNLG: _U, _S, _A)

    def __init__(self, data_dir: str | None = None):
        self.data, self._entries, self._examples = data_dir, {}, {}

    @classmethod
    def holds(cls, folder: str) -> bool:
        """Whether folder holds this task's files."""
        raise NotImplementedError

    @property
    def format(self) -> str:
        return self.name

    @property
    def table(self):
        return self.paper_results.TABLE

    def folder(self, split: str) -> str:
        """The folder that holds the split (prepare.locate: found, or downloaded); only the
        splits a command reads need be there (../shared has no DART training set)."""
        return self.prepare.locate(self.data, (split,))

    def locate(self) -> str:
        """Every split found (or downloaded): before a long experiment starts."""
        return self.prepare.locate(self.data, self.splits)

    def check_split(self, split: str):
        self.folder(split)

    def describe(self) -> str:
        return (f"{self.name}: subject : property : object | ... + <|endoftext|> + ' ' + text + "
                "<|endoftext|> (the released converter's)")

    def recorded(self) -> dict:
        return {"task": self.name}

    def entries(self, split: str) -> list:
        """The split's entries (prepare.Entry), read once."""
        if split not in self._entries:
            self._entries[split] = self.prepare.read_split(self.folder(split), split)
        return self._entries[split]

    def examples(self, split: str) -> Examples:
        """One example per text of each entry, in the files' order (tokenized once: cached by
        the files' content, data/files.cached)."""
        if split not in self._examples:
            files = self.prepare.files(self.folder(split), split)
            self._examples[split] = Examples(cached(f"{self.name}-{split}", files,
                                                    self.describe(), lambda: self.encode(split)))
        return self._examples[split]

    def encode(self, split: str) -> dict:
        pairs = self.prepare.pairs(self.entries(split))
        if not pairs:
            raise DataError(f"{self.name}'s {split} split in {self.folder(split)} holds no "
                            "texts to train on")
        return encode_pairs(pairs)

    def where(self, split: str, i: int) -> str:
        for n, entry in enumerate(self.entries(split)):
            count = len(self.prepare.texts(entry))
            if i < count:
                return (f"{self.name}'s {split} split ({self.folder(split)}), entry {n + 1}, "
                        f"text {i + 1}")
            i -= count
        raise IndexError(i)

    def eval_groups(self, split: str):
        contexts, references = self.metrics.inputs(self.entries(split))[:2]
        return ([(c, c, refs) for c, refs in zip(contexts, references)],
                f"{self.name}'s {split} split ({self.folder(split)})")

    def paper_size(self, config) -> str | None:
        return size_of(config)

    def score(self, split: str, groups: list, outputs: list[str], meteor: bool) -> dict:
        """Both protocols: the released code's as the table's columns ("scores"), the
        challenge's by subset ("challenge")."""
        results = self.metrics.score(self.entries(split), outputs, meteor=meteor)
        flat = {f"{metric}{self.SUFFIXES[subset]}": scores[metric]
                for subset, scores in results["released"].items() if subset != "segments"
                for metric in ("BLEU", "METEOR", "TER")}
        return {"scores": {key: flat[key] for key in self.table.columns if key in flat},
                "challenge": {subset: {m: scores[m] for m in ("BLEU", "METEOR", "TER")}
                              for subset, scores in results["challenge"].items()
                              if subset != "segments"},
                "protocols": dict(self.metrics.PROTOCOLS)}

    def notes(self, report: dict) -> list[str]:
        lines = [f"the challenge's protocol ({self.metrics.PROTOCOLS['challenge']}):"]
        for subset, scores in report["challenge"].items():
            lines.append(f"  {subset}: " + ", ".join(mt_metrics.format_scores(scores,
                                                                              "challenge")))
        return lines
