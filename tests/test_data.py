"""data/e2e/prepare.py: the official E2E CSVs, parsed, checked, tokenized and batched."""

import csv
import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from data.e2e import prepare as e2e


@pytest.fixture(scope="module")
def data(e2e_data, gpt2_vocab):
    """The E2E folder (a Path), with the vocabulary known to load."""
    return Path(e2e_data)


@pytest.mark.parametrize("split, rows, mrs", [("train", 42_061, 4_862), ("dev", 4_672, 547),
                                              ("test", 4_693, 630)])
def test_counts_of_the_official_files(data, split, rows, mrs):
    groups = e2e.load_mrs(split, str(data))
    assert sum(len(refs) for _, refs in groups) == rows == len(e2e.load_examples(split, str(data)))
    assert len(groups) == mrs


@pytest.mark.parametrize("format", ["paper", "official"])
def test_every_training_example_is_context_separator_reference_end(data, format):
    rows = e2e.read_split(str(data / "trainset.csv"))
    examples = e2e.load_examples("train", str(data), format)
    enc = e2e.tokenizer()
    for i, (mr, ref) in enumerate(rows):
        tokens, prompt_length = examples[i]
        assert tokens[prompt_length - 1] == e2e.EOT and tokens[-1] == e2e.EOT
        assert enc.decode(list(tokens[:prompt_length - 1])) == e2e.context(mr, format)
        assert enc.decode(list(tokens[prompt_length:-1])) == " " + e2e.reference(ref, "train",
                                                                                 format)
        assert e2e.EOT not in tokens[prompt_length:-1]
    if format == "official":
        assert enc.decode(list(examples[0][0][examples[0][1]:-1])) == " " + rows[0][1]


@pytest.mark.fast
def test_the_loss_mask_covers_exactly_the_reference_and_the_end_token(data):
    examples = e2e.load_examples("dev", str(data))
    batch = [examples[i] for i in (0, 5, 77, 4000)]  # different lengths: padding in between
    inputs, targets = e2e.collate(batch)
    positions, labels = e2e.loss_positions(targets)
    for row, (tokens, prompt_length) in enumerate(batch):
        T = len(tokens)
        assert inputs[row, :T - 1].tolist() == tokens[:-1].tolist()
        scored = (targets[row] != -100).nonzero().squeeze(1).tolist()
        assert scored == list(range(prompt_length - 1, T - 1))  # predicting tokens p .. T-1
        assert targets[row, scored].tolist() == tokens[prompt_length:].tolist()
    assert labels.tolist() == targets.flatten()[targets.flatten() != -100].tolist()
    assert torch.equal(positions, (targets.flatten() != -100).nonzero().squeeze(1))


def test_context_is_the_linearised_mr(gpt2_vocab):
    mr = "name[The Vaults], eatType[pub], priceRange[more than £30], near[Café Adriatic]"
    assert e2e.context(mr, "official") == ("name : The Vaults | eatType : pub | priceRange : "
                                           "more than £30 | near : Café Adriatic")
    assert e2e.context(mr, "paper") == ("name : The Vaults | Type : pub | price : more than £ 30 | "
                                        "near : Café Adriatic")
    assert e2e.prompt_tokens(mr)[-1] == e2e.EOT


# --- bad data: each error names the file and the row -----------------------------------------


def damaged_copy(data, tmp_path, row, new_row=None, header=None):
    """devset.csv with one record replaced (row numbers count the header as row 1)."""
    with open(data / "devset.csv", encoding="utf-8", newline="") as f:
        records = list(csv.reader(f))
    if header:
        records[0] = header
    if new_row is not None:
        records[row - 1] = new_row
    buffer = io.StringIO()
    csv.writer(buffer).writerows(records)
    (tmp_path / "devset.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return str(tmp_path / "devset.csv")


@pytest.mark.parametrize("row, new_row, header, message", [
    (None, None, ["mr", "text"], r"devset.csv: no 'ref' column"),
    (7, ["", "A reference."], None, r"devset.csv, row 7: the MR is empty"),
    (9, ["name[The Eagle]", "   "], None, r"devset.csv, row 9: the reference is empty"),
    (12, ["name[The Eagle], eatType pub", "x"], None,
     r"devset.csv, row 12: the MR does not parse as key\[value\]"),
    (15, ["name[The Eagle]"], None, r"devset.csv, row 15: 1 fields, expected 2"),
])
def test_malformed_rows_name_file_and_row(data, tmp_path, row, new_row, header, message):
    path = damaged_copy(data, tmp_path, row, new_row, header)
    with pytest.raises(e2e.DataError, match=message):
        e2e.read_split(path)


def test_not_utf8_names_file_and_line(data, tmp_path):
    raw = (data / "devset.csv").read_bytes().replace("£".encode(), b"\xa3", 1)
    (tmp_path / "devset.csv").write_bytes(raw)
    line = raw[:raw.index(b"\xa3")].count(b"\n") + 1
    with pytest.raises(e2e.DataError, match=rf"devset.csv is not UTF-8 \(byte 0xa3 on line {line}\)"):
        e2e.read_split(str(tmp_path / "devset.csv"))


def test_a_folder_without_the_files(tmp_path, monkeypatch):
    with pytest.raises(e2e.DataError, match="lacks trainset.csv, devset.csv, testset_w_refs.csv"):
        e2e.locate(str(tmp_path))
    monkeypatch.setenv("E2E_DATA_DIR", str(tmp_path))  # the environment variable, same check
    with pytest.raises(e2e.DataError, match=f"{tmp_path} lacks trainset.csv"):
        e2e.locate()


# --- the cache -------------------------------------------------------------------------------


def test_tokens_are_cached_and_a_changed_file_gets_its_own(data, tmp_path, monkeypatch):
    for name in e2e.SPLITS.values():
        shutil.copy(data / name, tmp_path / name)
    monkeypatch.setattr(e2e, "HERE", str(tmp_path / "repo_data"))  # where the cache lives
    first = e2e.load_examples("dev", str(tmp_path))
    assert len(list((tmp_path / "repo_data" / "cache").glob("dev-*.npz"))) == 1

    def no_tokenizing(rows, *args):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(e2e, "encode", no_tokenizing)
    again = e2e.load_examples("dev", str(tmp_path))
    assert (again.tokens == first.tokens).all() and len(again) == len(first)
    damaged_copy(data, tmp_path, 3, ["name[The Eagle]", "A new reference."])
    with pytest.raises(AssertionError, match="tokenized again"):
        e2e.load_examples("dev", str(tmp_path))


# --- the download (served locally: this machine has no network) ------------------------------


def release_zip(data, tweak=None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name in e2e.SHA256:
            raw = (data / name).read_bytes()
            z.writestr(f"e2e-dataset/{name}", tweak(name, raw) if tweak else raw)
    return buffer.getvalue()


@pytest.fixture
def serve(file_server):
    """A function: serve(payload) -> the URL the payload is served at."""
    server, handler = file_server

    def start(payload):
        handler.payload = payload
        return f"http://127.0.0.1:{server.server_port}/e2e-dataset.zip"
    return start


def test_download_extracts_and_checks_the_release(data, tmp_path, monkeypatch, serve):
    monkeypatch.setattr(e2e, "URL", serve(release_zip(data)))
    monkeypatch.setattr(e2e, "HERE", str(tmp_path))
    monkeypatch.delenv("E2E_DATA_DIR", raising=False)
    assert e2e.locate() == str(tmp_path)
    for name, digest in e2e.SHA256.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest


def test_download_with_a_wrong_sha256_deletes_the_files(data, tmp_path, monkeypatch, serve):
    def tweak(name, raw):
        return raw + b"\n" if name == "devset.csv" else raw  # one byte more
    monkeypatch.setattr(e2e, "URL", serve(release_zip(data, tweak)))
    monkeypatch.setattr(e2e, "HERE", str(tmp_path))
    monkeypatch.delenv("E2E_DATA_DIR", raising=False)
    with pytest.raises(e2e.DataError, match="devset.csv from .* has SHA-256 .* not fc26b78c.*deleted"):
        e2e.locate()
    assert list(tmp_path.iterdir()) == []


def test_no_data_and_no_network_says_how_to_pass_a_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(e2e, "URL", "http://127.0.0.1:9/e2e-dataset.zip")  # nothing listens
    monkeypatch.setattr(e2e, "HERE", str(tmp_path))
    monkeypatch.delenv("E2E_DATA_DIR", raising=False)
    with pytest.raises(e2e.DataError, match="cannot download .*no network.*pass --data DIR"):
        e2e.locate()
    assert not (tmp_path / "e2e-dataset.zip").exists()
