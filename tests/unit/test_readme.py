"""The README and docs/ stay true: the diagram is the chart's, the error table the
catalogue's, the tour uses what `run` serves, and every link resolves."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import Settings
from service.entrypoints.run import DEV
from statecharts.diagram import mermaid
from statecharts.errors import HTTP_STATUS, KOBAN_CODE, ErrorCode

# The repository root, wherever the tests folder puts this module.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings (lower case, punctuation dropped)."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        missing_anchor = (
            file.is_file()
            and bool(anchor)
            and file.suffix == ".md"
            and anchor not in anchors(file.read_text())
        )
        if not file.is_file() or missing_anchor:
            broken.append(target)
    return broken


def test_architecture_diagram_is_generated_from_the_chart() -> None:
    page = (DOCS / "architecture.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", page, re.S)
    assert block is not None
    assert block.group(1).strip() == mermaid().strip()


def test_api_error_table_matches_the_catalogue() -> None:
    page = (DOCS / "api.md").read_text()
    rows = dict(
        (m.group(1), (int(m.group(2)), m.group(3)))
        for m in re.finditer(r"^\| `([A-Z_]+)` \| (\d{3}) \| (\d\d|—) \|", page, re.M)
    )
    for code in ErrorCode:
        if code is ErrorCode.NOTHING_DUE:
            continue  # internal: an expire/promote with nothing to do never reaches a caller
        assert rows[code.value] == (HTTP_STATUS[code], KOBAN_CODE[code] or "—"), code


def test_the_readme_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", README, re.M):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert re.findall(r"^make (\w+)", README, re.M)[:2] == ["run", "test"]


def test_the_tour_uses_what_run_serves() -> None:
    tour = re.search(r"^## A five-minute tour\n(.*?)^## ", README, re.M | re.S)
    assert tour is not None
    text = tour.group(1)
    assert f"Bearer {DEV.token}" in text
    assert f"http://127.0.0.1:{Settings().api_port}/v1/tenants/{DEV.tenant}" in text
    assert f"/lots/{DEV.lot}/options" in text and f'"thirdGuid": "{DEV.third}"' in text


def test_links_in_the_readme_and_docs_resolve() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    assert {page.name: broken_links(page) for page in pages} == {page.name: [] for page in pages}


def test_the_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A title\n[ok](#a-title) [gone](missing.md) [no anchor](#nowhere)\n")
    assert broken_links(page) == ["missing.md", "#nowhere"]


CODE_PATH = re.compile(r"`((?:service|statecharts|bench|config|docs|\.ci)/[\w./-]*?)(?:::[\w.]+)?`")


def missing_paths(markdown: str) -> list[str]:
    return [p for p in CODE_PATH.findall(markdown) if not (ROOT / p.rstrip("/")).exists()]


def test_paths_named_in_the_readme_and_docs_exist() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    named = {page.name: missing_paths(page.read_text()) for page in pages}
    assert named == {page.name: [] for page in pages}
    assert missing_paths("`service/nowhere.py` `statecharts/ticks.py::x`") == ["service/nowhere.py"]
