"""The layout's floors face one way (the README's reading order depends on it): read from every
import statement of the project's code (at the top of a file or inside a function), an arrow
never runs up.

    entry scripts   train.py, sample.py, reproduce.py; scripts/ (benchmarks)  may import anything
    harness/        what the scripts stand on                                 not the entry scripts
    paper/          the paper's next read, above LoRA                         not the harness
    model.py, lora.py, data/                                                  the ground floor only
    plumbing/       the ground floor                                          nothing but itself

The one circle allowed is the task registry's: data/task.py's open_task imports each task's
module when asked for it, and each imports task.py's Task."""

import ast

import pytest
from conftest import REPO

pytestmark = pytest.mark.fast

FLOORS = {  # a part of the project -> what it may import
    "plumbing": {"plumbing"},
    "model": {"plumbing"},
    "lora": {"model", "plumbing"},
    "data": {"data", "plumbing"},
    "paper": {"paper", "model", "lora", "data", "plumbing"},
    "harness": {"harness", "paper", "model", "lora", "data", "plumbing"},
}
PARTS = {*FLOORS, "train", "sample", "reproduce", "scripts"}


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path) -> set[str]:
    """The project's modules a file imports, each as the longest name that is a module of ours."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {name for name in found if name.split(".")[0] in PARTS}


def project() -> dict[str, set[str]]:
    files = [p for p in REPO.rglob("*.py")
             if p.relative_to(REPO).parts[0] in PARTS | {f"{name}.py" for name in PARTS}]
    graph = {module_name(p): imports(p) for p in files}
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def test_every_import_faces_down():
    graph = project()
    assert {"model", "lora", "plumbing.cli", "paper.decoding", "harness.bookkeeping",
            "data.task", "scripts.bench"} <= set(graph)  # (the walk found the project)
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.split(".")[0] in FLOORS
                    for d in deps if d.split(".")[0] not in FLOORS[m.split(".")[0]])
    assert upward == []


def test_the_only_circle_is_the_task_registry():
    graph = project()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(m):  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        on.add(m)
        for d in graph[m]:
            if d not in index:
                visit(d)
                low[m] = min(low[m], low[d])
            elif d in on:
                low[m] = min(low[m], index[d])
        if low[m] == index[m]:
            part = set()
            while not part or m not in part:
                part.add(stack.pop())
            on.difference_update(part)
            if len(part) > 1:
                circles.append(part)

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert len(circles) == 1 and "data.task" in circles[0], circles
    assert all(m.startswith("data.") for m in circles[0]), circles
