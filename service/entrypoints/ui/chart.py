"""The lot chart as the operator page shows it: Graphviz's SVG (``docs/lot-chart.svg``,
made by ``make diagrams``) rewritten once at build time so that each state's group has the
id ``state-<name>`` and can be marked by a CSS class; no Graphviz at run time.

``python -m service.entrypoints.ui.chart [docs/lot-chart.svg]`` writes
``static/lot-chart.svg`` beside this module (``make diagrams`` runs it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["CHART_FILE", "mark", "page_svg"]

CHART_FILE = Path(__file__).resolve().parent / "static" / "lot-chart.svg"
_PROLOG = re.compile(r"<\?xml.*?\?>|<!DOCTYPE.*?>|<!--.*?-->", re.S)
_GROUP = re.compile(r'<g id="(?:node|clust)\d+" class="(node|cluster)">\s*<title>([^<]*)</title>')
_SIZE = re.compile(r'(<svg)\s+width="[^"]*"\s+height="[^"]*"')


def page_svg(graphviz_svg: str) -> str:
    """Graphviz's SVG without prolog or comments (it is inlined in the page), its fixed size
    dropped (CSS sizes it), each state's group renamed ``state-<name>``."""

    def rename(match: re.Match[str]) -> str:
        kind, title = match[1], match[2]
        name = title.removeprefix("cluster_")
        return f'<g id="state-{name}" class="{kind} state">\n<title>{title}</title>'

    text = _PROLOG.sub("", graphviz_svg).strip()
    text = _SIZE.sub(r"\1", text, count=1)
    return _GROUP.sub(rename, text) + "\n"


def mark(svg: str, state_path: Iterable[str]) -> str:
    """`svg` (from `page_svg`) with the states of `state_path` given the class ``current``."""
    for name in state_path:
        group = rf'(<g id="state-{re.escape(name)}" class="(?:node|cluster) state)"'
        svg = re.sub(group, r'\1 current"', svg)
    return svg


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    source = Path(args[0] if args else "docs/lot-chart.svg")
    CHART_FILE.write_text(page_svg(source.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {CHART_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
