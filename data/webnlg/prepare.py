"""The WebNLG challenge 2017 data (Gardent et al. 2017), as the paper's released code reads it
(Appendix F.1, Table 14): each entry a set of 1 to 7 DBpedia triples, its category, and the texts
people wrote for it (lexicalisations, each with a comment: "good" for the ones trained on).

    Abilene_Regional_Airport : cityServed : Abilene,_Texas<|endoftext|> Abilene Regional Airport serves the city of Abilene in Texas.<|endoftext|>

The released converter (format_converting_webnlg.py) makes one example per "good" text, the
context "subject : property : object" joined with " | "; 10 categories are in the training data
(seen), 5 more only in the test set (unseen): Table 14 reports both, and all. Two copies hold the
same entries, and read_split() takes either (tests/test_webnlg.py holds each against the other):

- the three JSON files the released code reads (train.json, dev.json, test.json, made from the
  challenge's XML by the WebNLG corpus reader): what a first run downloads into data/webnlg/
  from microsoft/LoRA, each checked against its SHA-256;
- the challenge's own XML (train/ and dev/ by triple count, test/testdata_with_lex.xml).

`--data DIR` (train.py, sample.py, reproduce.py; `--data webnlg` for the default), else
$WEBNLG_DATA_DIR, else data/webnlg/, downloaded on first use.
"""

import dataclasses
import glob
import json
import os

from data.files import DataError, fetch, mend, read_text
from data.triples import xml_entries

HERE = os.path.dirname(os.path.abspath(__file__))
SPLITS = ("train", "dev", "test")
# the categories of the training data (seen), and the test set's others (unseen)
SEEN = ("Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument",
        "SportsTeam", "University", "WrittenWork")
UNSEEN = ("Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician")

_RELEASED = ("https://raw.githubusercontent.com/microsoft/LoRA/"
             "c4593f060e6a368d7bb5af5273b8e42810cdef90/examples/NLG/data/webnlg_challenge_2017/")
JSON_FILES = {  # name -> (url, hash kind, hash), as ../shared/data/webnlg-lora/SOURCE.txt lists
    "train.json": (_RELEASED + "train.json", "sha256",
                   "180edb6011360608c8548d4551366a9d55f140cbf9bc9397fbf4d97f6a89c639"),
    "dev.json": (_RELEASED + "dev.json", "sha256",
                 "50f5a2c24d760bc84ba3e852707cd3b43b0cf2da035b425f87945a2440880488"),
    "test.json": (_RELEASED + "test.json", "sha256",
                  "2574896b23b5959d1a0cd4bb501ffbeff1a11790a9996c4cb8efed289149ff4f"),
}
XML_TEST = os.path.join("test", "testdata_with_lex.xml")
XML_FILES = {"train": "train/*triples/*.xml", "dev": "dev/*triples/*.xml", "test": XML_TEST}


@dataclasses.dataclass
class Entry:
    """One input of the data set: its category, its triples and its texts (text, comment)."""
    category: str
    triples: list[tuple[str, str, str]]
    lexs: list[tuple[str, str]]

    @property
    def context(self) -> str:
        """The input as the model reads it, as the released converter writes it."""
        return " | ".join(f"{s} : {p} : {o}" for s, p, o in self.triples)

    @property
    def seen(self) -> bool:
        """Whether its category is one of the training data's."""
        return self.category in SEEN


def path(folder: str, split: str) -> str | None:
    """The split's file in folder: the released JSON (SPLIT.json), else the challenge's XML (the
    test file, or the split's folder of files by triple count), else None."""
    if os.path.isfile(json_file := os.path.join(folder, f"{split}.json")):
        return json_file
    if split == "test":
        return os.path.join(folder, XML_TEST) if os.path.isfile(os.path.join(folder, XML_TEST)) \
            else None
    return os.path.join(folder, split) if glob.glob(os.path.join(folder, split, "*triples",
                                                                 "*.xml")) else None


def files(folder: str, split: str) -> list[str]:
    """The files the split is read from: its JSON, or the challenge's XML files."""
    found = path(folder, split)
    return [found] if os.path.isfile(found) else sorted(
        glob.glob(os.path.join(found, "*triples", "*.xml")))


def locate(data_dir: str | None = None, splits: tuple = SPLITS) -> str:
    """The folder of the data (with the splits asked for): data_dir, else $WEBNLG_DATA_DIR, else
    data/webnlg/ (what it lacks of the released JSON downloaded on first use)."""
    data_dir = data_dir or os.environ.get("WEBNLG_DATA_DIR") or None
    if data_dir is None:
        fetch(HERE, {f"{s}.json": JSON_FILES[f"{s}.json"] for s in splits},
              hint="or pass --data DIR (or set WEBNLG_DATA_DIR): a folder with the released "
                   + ", ".join(f"{s}.json" for s in splits) + ", or the challenge's XML ("
                   + ", ".join(XML_FILES[s] for s in splits) + ")")
        return HERE
    if missing := [s for s in splits if path(data_dir, s) is None]:
        raise DataError(f"{data_dir} lacks WebNLG's " + ", ".join(
            f"{s} split ({s}.json, or the challenge's {XML_FILES[s]})" for s in missing))
    return data_dir


def _json_entries(path: str) -> list[Entry]:
    try:
        data = json.loads(read_text(path))
        entries = []
        for i, item in enumerate(data["entries"]):
            e = item[str(i + 1)]
            entries.append(Entry(e["category"], [(t["subject"], t["property"], t["object"])
                                                 for t in e["modifiedtripleset"]],
                                 [(lex["lex"], lex["comment"]) for lex in e["lexicalisations"]]))
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); {mend(path, HERE)}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is not WebNLG's released JSON (no {e} where an entry should "
                        "have it)") from None
    return entries


def _xml_entries(path: str) -> list[Entry]:
    """The entries of one challenge file that have texts (the challenge's benchmark_reader skips
    the others)."""
    return [Entry(attrib.get("category", ""), triples, lexs)
            for attrib, triples, lexs in xml_entries(path) if lexs]


def read_split(folder: str, split: str) -> list[Entry]:
    """The split's entries, in the released files' order (the challenge's files sorted by name,
    which puts them by triple count, then category)."""
    file = path(locate(folder, (split,)), split)  # (a folder that lacks it: locate says so)
    if file.endswith(".json"):
        return _json_entries(file)
    return [e for xml in files(folder, split) for e in _xml_entries(xml)]


def texts(entry: Entry) -> list[str]:
    """Its "good" texts: the ones the released converter keeps (the rest are marked toFix)."""
    return [text for text, comment in entry.lexs if comment == "good"]


def pairs(entries: list[Entry]) -> list[tuple[str, str]]:
    """(context, text) of every "good" text: the examples the released code trains on."""
    return [(e.context, text) for e in entries for text in texts(e)]
