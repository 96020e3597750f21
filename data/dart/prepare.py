"""DART v1.1.1 (Nan et al. 2021), as the paper's released code reads it (Appendix F.1, Table 13):
each entry a set of triples from Wikipedia tables and WebNLG/E2E-style sources, with the texts
written for it.

    Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina<|endoftext|> A school from Mars Hill, North Carolina, joined in 1973.<|endoftext|>

The released converter (format_converting_dart.py) makes one example per text, the context
"subject : property : object" joined with " | ", the property lowercased. The files, in JSON as
the released code reads them or in the same entries' XML (read_split() takes either; the tests
hold the XML reader against the released dev JSON):

- dart-v1.1.1-full-train.json and -dev.json: the paper's, Yale-LILY/dart at b5dfcab (2020; the
  same files microsoft/LoRA copied), downloaded into data/dart/ on first use and checked by the
  id git gives their content (the repository's own record of them);
- dart-v1.1.1-full-test.xml: the 2021 revision (Yale-LILY/dart at 34b3c87), 5,097 entries and
  4,159 distinct inputs, the test set DART's own evaluation scripts score. The 2020 test file the
  paper scored has 6,959 entries: the 2021 revision removed 1,862 entries that repeated others,
  so the distinct inputs, the ones decoded, are the same.

`--data DIR` (`--data dart` for the default), else $DART_DATA_DIR, else data/dart/.
"""

import dataclasses
import json
import os

from data.files import DataError, fetch, mend, read_text
from data.triples import xml_entries

HERE = os.path.dirname(os.path.abspath(__file__))
SPLITS = ("train", "dev", "test")
_PAPER = "https://raw.githubusercontent.com/Yale-LILY/dart/b5dfcab18b30b5de6986d89bb77952e83df7d48a/"
_REVISED = "https://raw.githubusercontent.com/Yale-LILY/dart/34b3c872da4811523e334f1631e54ca8105dffab/"
FILES = {  # split -> (name, url, hash kind, hash): git blob ids, from the repository's history
    "train": ("dart-v1.1.1-full-train.json", _PAPER + "data/v1.1.1/dart-v1.1.1-full-train.json",
              "git", "66d6ce4aeb5d01c318c7fc15d7747ef39ea320be"),
    "dev": ("dart-v1.1.1-full-dev.json", _PAPER + "data/v1.1.1/dart-v1.1.1-full-dev.json",
            "git", "e3a7a497677e7edd9c45a3aaadb3ab8fd5493f75"),
    "test": ("dart-v1.1.1-full-test.xml", _REVISED + "data/v1.1.1/dart-v1.1.1-full-test.xml",
             "git", "73b526ff793c0c61d22c2b4e6d2f8a0009c39709"),
}


@dataclasses.dataclass
class Entry:
    """One input of the data set: its triples and its texts (text, source)."""
    triples: list[tuple[str, str, str]]
    lexs: list[tuple[str, str]]

    @property
    def context(self) -> str:
        """The input as the model reads it, as the released converter writes it."""
        return " | ".join(f"{s} : {p.lower()} : {o}" for s, p, o in self.triples)


def path(folder: str, split: str) -> str | None:
    """The split's file in folder: its JSON, else its XML, else None."""
    stem = os.path.join(folder, FILES[split][0].rsplit(".", 1)[0])
    return next((stem + ext for ext in (".json", ".xml") if os.path.isfile(stem + ext)), None)


def files(folder: str, split: str) -> list[str]:
    """The file the split is read from (its JSON or XML)."""
    return [path(folder, split)]


def locate(data_dir: str | None = None, splits: tuple = SPLITS) -> str:
    """The folder of the data (with the splits asked for): data_dir, else $DART_DATA_DIR, else
    data/dart/ (downloaded on first use)."""
    data_dir = data_dir or os.environ.get("DART_DATA_DIR") or None
    if data_dir is None:
        fetch(HERE, {FILES[s][0]: FILES[s][1:] for s in splits},
              hint="or pass --data DIR (or set DART_DATA_DIR): a folder with "
                   + ", ".join(FILES[s][0] for s in splits) + " (JSON or XML)")
        return HERE
    if missing := [FILES[s][0] for s in splits if path(data_dir, s) is None]:
        raise DataError(f"{data_dir} lacks {', '.join(missing)} (DART v1.1.1's files, JSON or "
                        "XML)")
    return data_dir


def _json_entries(file: str) -> list[Entry]:
    try:
        return [Entry([tuple(t) for t in item["tripleset"]],
                      [(a["text"], a.get("source", "")) for a in item["annotations"]])
                for item in json.loads(read_text(file))]
    except ValueError as e:
        raise DataError(f"{file} is not valid JSON ({e}); {mend(file, HERE)}") from None
    except (KeyError, TypeError) as e:
        raise DataError(f"{file} is not DART's JSON (no {e} where an entry should have "
                        "it)") from None


def _xml_entries(file: str) -> list[Entry]:
    return [Entry(triples, lexs) for _, triples, lexs in xml_entries(file)]


def read_split(folder: str, split: str) -> list[Entry]:
    """The split's entries, in the file's order."""
    file = path(folder, split)
    if file is None:
        raise DataError(f"{folder} has no {FILES[split][0]} (JSON or XML)")
    return _json_entries(file) if file.endswith(".json") else _xml_entries(file)


def texts(entry: Entry) -> list[str]:
    """Its texts: the released converter keeps them all."""
    return [text for text, _ in entry.lexs]


def pairs(entries: list[Entry]) -> list[tuple[str, str]]:
    """(context, text) of every text: the examples the released code trains on."""
    return [(e.context, text) for e in entries for text in texts(e)]
