"""The operator page's build-time files: the chart with a mark-able group per state, the
vendored Swagger UI as its note pins it, and the package data that ships them."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

from service.entrypoints.ui.assets import STATIC_DIR, Assets
from service.entrypoints.ui.chart import CHART_FILE, mark, page_svg
from statecharts.lot_chart import STATE_PATH

ROOT = Path(__file__).resolve().parents[2]
VENDOR = STATIC_DIR / "vendor" / "swagger-ui"


def test_the_page_chart_is_the_docs_chart_rewritten() -> None:
    built = page_svg((ROOT / "docs" / "lot-chart.svg").read_text(encoding="utf-8"))
    assert CHART_FILE.read_text(encoding="utf-8") == built  # `make diagrams` is up to date
    assert built.startswith("<svg") and "<!DOCTYPE" not in built and "<script" not in built


def test_every_lot_configuration_has_a_state_to_mark() -> None:
    svg = CHART_FILE.read_text(encoding="utf-8")
    for config, path in STATE_PATH.items():
        marked = mark(svg, path)
        current = set(re.findall(r'<g id="state-([a-z_]+)" class="[a-z]+ state current"', marked))
        assert current == set(path), config
    assert "current" not in svg


def test_swagger_ui_is_vendored_as_its_note_says() -> None:
    note = (VENDOR / "VERSION").read_text(encoding="utf-8")
    pinned = dict(
        (name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", note, re.M)
    )
    assert set(pinned) == {"swagger-ui-bundle.js", "swagger-ui.css"}
    for name, digest in pinned.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert "Apache-2.0" in note and (VENDOR / "LICENSE").exists()


def test_every_static_file_is_package_data_and_served_by_name() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["service.entrypoints.ui"]
    package = STATIC_DIR.parent
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    files = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert files <= shipped
    assert {p for p in (package / "templates").glob("*") if p.is_file()} <= shipped
    assets = Assets()
    for path in files:
        assert assets.text(path.relative_to(STATIC_DIR).as_posix()) is not None


def test_the_page_script_never_writes_markup() -> None:
    for name in ("ui.js", "docs-init.js"):
        script = (STATIC_DIR / name).read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script, (name, sink)
