"""The README stays short, and its "Where is…" index points at code that exists.

Each entry of the index is ``path/to/module.py::name`` (``Class.method`` for a method);
the module is parsed with `ast`, never imported, so the check needs no Redis and no I/O
beyond reading the files.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

# The repository root, wherever the tests folder puts this module.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = ROOT / "README.md"
MAX_README_LINES = 250
MIN_INDEX_ROWS = 15
REF = re.compile(r"`([\w./-]+\.py)::([\w.]+)`")


def index_rows(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """The index table's rows: (behaviour, [(path, name), ...])."""
    section = re.search(r"^## Where is…\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section is not None, "README has no '## Where is…' section"
    rows = []
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 2 or set(cells[1]) <= {"-", " "}:
            continue
        if cells == ["behaviour", "where"]:
            continue
        rows.append((cells[0], REF.findall(cells[1])))
    return rows


@cache
def module_tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(), filename=path)


def _names_in(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """What a module or class body defines: functions, classes and assigned names."""
    found: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = node
    return found


def defines(tree: ast.Module, dotted: str) -> bool:
    """Whether `dotted` (``name`` or ``Class.member``) is defined in the module."""
    body: list[ast.stmt] = tree.body
    for part in dotted.split("."):
        node = _names_in(body).get(part)
        if node is None:
            return False
        body = node.body if isinstance(node, ast.ClassDef) else []
    return True


ROWS = index_rows(README.read_text())
REFS = sorted({ref for _, refs in ROWS for ref in refs})


def test_readme_is_at_most_250_lines() -> None:
    assert len(README.read_text().splitlines()) <= MAX_README_LINES


def test_the_index_has_enough_entries_and_each_names_code() -> None:
    assert len(ROWS) >= MIN_INDEX_ROWS
    assert [behaviour for behaviour, refs in ROWS if not refs] == []


@pytest.mark.parametrize(("path", "name"), REFS, ids=[f"{p}::{n}" for p, n in REFS])
def test_each_index_entry_names_a_definition_that_exists(path: str, name: str) -> None:
    assert (ROOT / path).is_file(), f"{path} does not exist"
    assert defines(module_tree(path), name), f"{path} defines no {name}"


def test_the_resolver_refuses_what_is_not_defined() -> None:
    tree = ast.parse(
        "class Store:\n    def commit(self): ...\n    rev: int = 0\n"
        "def expire_due(): ...\nKOBAN_CODE = {}\nimport os\n"
    )
    for name in ("Store", "Store.commit", "Store.rev", "expire_due", "KOBAN_CODE"):
        assert defines(tree, name), name
    for name in ("os", "commit", "Store.expire_due", "expire_due.x", "Store.commit.x", "nothing"):
        assert not defines(tree, name), name


def test_the_parser_reads_rows_and_skips_the_header() -> None:
    text = (
        "## Where is…\n\n| behaviour | where |\n|---|---|\n"
        "| a | `x.py::f`, `y/z.py::C.m` |\n| b | nothing |\n\n## Next\n| c | `q.py::g` |\n"
    )
    assert index_rows(text) == [("a", [("x.py", "f"), ("y/z.py", "C.m")]), ("b", [])]
