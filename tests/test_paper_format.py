"""data/e2e/paper_format.py: the E2E text of the paper's released code, rebuilt from the official
CSVs and compared line by line with the released valid.txt and test.txt (../shared/data/e2e-lora,
or $E2E_LORA_DIR, or their download)."""

import collections
import difflib
import os
import subprocess
import sys

import pytest
from conftest import REPO

from data.e2e import paper_format, prepare as e2e


@pytest.mark.parametrize("text, style, expected", [
    ("Cocum is a non-kid-friendly coffee shop, in the £20-25 range.", "dev",
     "Cocum is a non - kid - friendly coffee shop , in the £ 20 - 25 range ."),
    ("Alimentum isn't family-friendly; it's 'The Mill' near Café Rouge...", "dev",
     "Alimentum isn 't family - friendly ; it 's ' The Mill ' near Café Rouge ..."),
    ("It isn't a 5-star place: £20-£25, 20-25.", "test",
     "It is n't a 5-star place : £ 20-£25 , 20 - 25 ."),
    ("Prices of £10.50 and 1,000 seats.", "dev", "Prices of £ 10.50 and 1,000 seats ."),
])
def test_tokenize(text, style, expected):
    assert paper_format.tokenize(text, style) == expected


def test_the_mr_keys_are_renamed():
    items = e2e.parse_mr("name[Cocum], eatType[coffee shop], priceRange[£20-25], "
                         "familyFriendly[no], customer rating[5 out of 5]")
    assert paper_format.context(items) == ("name : Cocum | Type : coffee shop | price : £ 20 - 25 | "
                                           "family friendly : no | customer rating : 5 out of 5")


def compare(printed: list[str], released: list[str]):
    """(contexts that differ, references that differ, the kinds of reference misses)."""
    assert len(printed) == len(released)
    contexts, refs, kinds = 0, 0, collections.Counter()
    for mine, theirs in zip(printed, released):
        (c1, r1), (c2, r2) = mine.split("||"), theirs.split("||")
        contexts += c1 != c2
        if r1 != r2:
            refs += 1
            a, b = r1.split(), r2.split()
            ops = difflib.SequenceMatcher(a=a, b=b).get_opcodes()
            kinds[" / ".join(f"{' '.join(a[i:j])!r} -> {' '.join(b[k:m])!r}"
                             for tag, i, j, k, m in ops if tag != "equal")] += 1
    return contexts, refs, kinds


@pytest.mark.parametrize("split, at_most", [("dev", 1), ("test", 3)])
def test_the_rebuilt_dev_and_test_equal_the_released_files(e2e_data, released_text, split,
                                                           at_most):
    # The command the issue names, run as a user runs it:
    # python data/e2e/prepare.py --format paper --print dev|test --data DIR
    out = subprocess.run([sys.executable, str(REPO / "data" / "e2e" / "prepare.py"), "--format",
                          "paper", "--print", split, "--data", e2e_data], capture_output=True,
                         text=True, encoding="utf-8", check=True).stdout
    contexts, refs, kinds = compare(out.split("\n")[:-1], released_text[split])
    print(f"{split}: {len(released_text[split]) - refs} of {len(released_text[split])} references "
          f"equal ({100 * (1 - refs / len(released_text[split])):.2f}%); misses: {dict(kinds)}")
    assert contexts == 0
    assert refs <= at_most  # dev: 99.98%, test: 99.94% (the goal: at least 97.5%)


def test_the_released_references_are_grouped_as_the_released_decode_script_groups_them(
        e2e_data, released_text):
    groups, source = e2e.eval_groups("test", e2e_data, "paper")
    assert source == "the paper's released test.txt"
    assert len(groups) == 630 and sum(len(refs) for _, _, refs in groups) == 4693
    first = released_text["test"][0].split("||")
    assert groups[0][1] == first[0] and groups[0][2][0] == first[1].strip()
    official, source = e2e.eval_groups("test", e2e_data, "official")
    assert source == "testset_w_refs.csv (as is)"
    assert [mr for mr, _, _ in official] == [mr for mr, _, _ in groups]


def test_without_the_released_file_the_references_are_rebuilt(e2e_data, monkeypatch, tmp_path):
    monkeypatch.setenv("E2E_LORA_DIR", str(tmp_path))  # an empty folder: nothing released here
    groups, source = e2e.eval_groups("test", e2e_data, "paper")
    assert source == "testset_w_refs.csv (rebuilt in the paper format)"
    assert len(groups) == 630


def test_a_wrong_released_file_is_refused(monkeypatch, tmp_path):
    (tmp_path / "test.txt").write_text("name : X||Y \n", encoding="utf-8")
    monkeypatch.setenv("E2E_LORA_DIR", str(tmp_path))
    with pytest.raises(e2e.DataError, match="is not the paper's released test.txt"):
        e2e.released_lines("test")
    assert os.path.exists(tmp_path / "test.txt")  # the user's file is never deleted
