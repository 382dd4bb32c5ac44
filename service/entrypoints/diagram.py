"""Write the lot chart's diagrams: ``python -m service.entrypoints.diagram OUTDIR [--format ...]``.

Always writes ``OUTDIR/lot-chart.mmd`` (Mermaid, renders on GitHub without any tool).
With ``--format svg`` (default) or ``png`` it also renders ``lot-chart.<fmt>`` through
Graphviz ``dot`` when it is installed, and says so plainly when it is not.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from statecharts.diagram import dot, mermaid

FORMATS = ("mermaid", "svg", "png")
BASENAME = "lot-chart"


def write_diagrams(outdir: Path, fmt: str = "svg") -> list[Path]:
    """Write the diagrams into ``outdir``; return the files written.

    Raises ``FileNotFoundError`` when ``fmt`` needs Graphviz and ``dot`` is not on PATH
    (the Mermaid file is written first), ``subprocess.CalledProcessError`` if dot fails.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    mmd = outdir / f"{BASENAME}.mmd"
    mmd.write_text(mermaid(), encoding="utf-8")
    written.append(mmd)
    if fmt == "mermaid":
        return written
    dot_program = shutil.which("dot")
    if dot_program is None:
        raise FileNotFoundError("dot")
    rendered = subprocess.run(
        [dot_program, f"-T{fmt}"],
        input=dot().encode("utf-8"),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    image = outdir / f"{BASENAME}.{fmt}"
    image.write_bytes(rendered)
    written.append(image)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.entrypoints.diagram", description="Render the lot statechart."
    )
    parser.add_argument("outdir", nargs="?", default="docs", help="output directory (docs)")
    parser.add_argument("--format", choices=FORMATS, default="svg", help="default: svg")
    args = parser.parse_args(argv)
    outdir = Path(args.outdir)
    try:
        written = write_diagrams(outdir, args.format)
    except FileNotFoundError:
        print(f"wrote {outdir / (BASENAME + '.mmd')}")
        print(
            f"Graphviz 'dot' is not installed: no {args.format.upper()} written. "
            "Install it (Debian: apt-get install -y graphviz) or use the Mermaid file.",
            file=sys.stderr,
        )
        return 0
    except subprocess.CalledProcessError as err:
        detail = err.stderr.decode("utf-8", "replace").strip()
        print(f"dot failed (exit {err.returncode}): {detail}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
