"""The README stays true: its diagram is the chart's, its error table the catalogue's."""

from __future__ import annotations

import re
from pathlib import Path

from statecharts.diagram import mermaid
from statecharts.errors import HTTP_STATUS, KOBAN_CODE, ErrorCode

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_diagram_is_generated_from_the_chart() -> None:
    block = re.search(r"```mermaid\n(.*?)```", README, re.S)
    assert block is not None
    assert block.group(1).strip() == mermaid().strip()


def test_readme_error_table_matches_the_catalogue() -> None:
    rows = dict(
        (m.group(1), (int(m.group(2)), m.group(3)))
        for m in re.finditer(r"^\| `([A-Z_]+)` \| (\d{3}) \| (\d\d|—) \|", README, re.M)
    )
    for code in ErrorCode:
        if code is ErrorCode.NOTHING_DUE:
            continue  # internal: an expire/promote with nothing to do never reaches a caller
        assert rows[code.value] == (HTTP_STATUS[code], KOBAN_CODE[code] or "—"), code
