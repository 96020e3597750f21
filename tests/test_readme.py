"""The README stays true to the code: quoted lines exist, and CI runs the documented command."""

import re

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:python|bash)\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("title, source_files", [
    ("GPT-2, as model.py builds it", ["model.py"]),
    ("LoRA in 40 lines", ["lora.py"]),
])
def test_walkthroughs_quote_lines_that_exist_in_the_code(title, source_files):
    source = {line.strip() for name in source_files
              for line in (REPO / name).read_text().splitlines()}
    quoted = [line.strip() for block in code_blocks(section(title))
              for line in block.splitlines() if line.strip()]
    assert len(quoted) >= 10
    assert [line for line in quoted if line not in source] == []


def test_ci_runs_the_readme_test_command():
    quickstart = code_blocks(section("Quickstart"))[0]
    commands = [line.split("#")[0].strip() for line in quickstart.splitlines()]
    assert commands == ["make train", "make test"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in ci]
