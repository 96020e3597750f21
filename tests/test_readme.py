"""The README, docs/ and data/*/README.md stay true to the code: quoted lines exist, every command
shown parses with its script's own parser, the README's first screen is the lesson, and CI runs
the documented command."""

import re
import shlex

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
         *sorted((REPO / "data").glob("*/README.md"))]


def section(title: str, text: str = README) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:python|bash)\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("title, source_files", [
    ("GPT-2, as model.py builds it", ["model.py"]),
    ("LoRA, as lora.py writes it", ["lora.py"]),
    ("Training: train.py", ["train.py"]),
])
def test_walkthroughs_quote_lines_that_exist_in_the_code(title, source_files):
    source = {line.strip() for name in source_files
              for line in (REPO / name).read_text().splitlines()}
    quoted = [line.strip() for block in code_blocks(section(title))
              for line in block.splitlines() if line.strip()]
    assert len(quoted) >= 8
    assert [line for line in quoted if line not in source] == []


def test_ci_runs_the_readme_test_command():
    quickstart = code_blocks(section("Quickstart"))[0]
    commands = [line.split("#")[0].strip() for line in quickstart.splitlines()]
    assert commands == ["make train", "make test"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in ci]


def test_the_readme_opens_with_the_lesson_within_its_budget():
    lines = README.splitlines()
    assert len(lines) <= 300
    first_screen = "\n".join(lines[:40])
    for command in ("python train.py", "python sample.py", "python reproduce.py", "make train"):
        assert command in first_screen, command
    assert "Read `model.py`, then `lora.py`, then `train.py`, then `sample.py`" in first_screen


def shown_commands() -> list[tuple[str, str, list[str]]]:
    """(page, script, argv) of every command a page shows for one of the project's scripts
    (python SCRIPT, python -m MODULE, torchrun ... SCRIPT): lines joined at a trailing \\,
    comments dropped."""
    found = []
    for page in PAGES:
        for block in code_blocks(page.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if not words or words[0] not in ("python", "torchrun"):
                    continue
                if words[:2] == ["python", "-m"]:
                    script, argv = words[2], words[3:]
                else:
                    at = next(i for i, w in enumerate(words) if w.endswith(".py"))
                    script, argv = words[at], words[at + 1:]
                found.append((page.name, script, argv))
    return found


def parser_of(script: str):
    """The function that parses the script's command line (and only parses it)."""
    if script in ("train.py", "sample.py", "reproduce.py"):
        module = __import__(script.removesuffix(".py"))
        return module.parse_args
    if script in ("scripts.bench", "paper.analysis", "data.webnlg.metrics", "data.dart.metrics"):
        import importlib
        return importlib.import_module(script).parse_args
    return None  # data/ scripts: no separate parser (their own tests run them)


def test_every_command_the_docs_show_parses_with_its_scripts_own_parser():
    commands = shown_commands()
    scripts = {script for _, script, _ in commands}
    assert {"train.py", "sample.py", "reproduce.py", "paper.analysis"} <= scripts
    for page, script, argv in commands:
        parse = parser_of(script)
        if parse is None:
            assert script in ("data.e2e.metrics", "data/e2e/metrics.py", "data/e2e/prepare.py",
                              "data/toy/make.py"), (page, script)
            continue
        try:
            parse(argv)
        except SystemExit as e:  # a flag or a subcommand that does not exist
            pytest.fail(f"{page}: {script} {' '.join(argv)}: exit {e.code}")


def test_the_docs_link_to_pages_that_exist():
    for page in PAGES:
        for link in re.findall(r"\]\(([^)#]+\.md)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / link).is_file(), (page.name, link)
