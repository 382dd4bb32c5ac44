"""The compiled table equals the chart, on the chart's whole finite abstraction."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from statecharts import compile as chart_compile
from statecharts.decide import decide
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.lot_chart import CONFIGS, EVENTS, FACT_DOMAINS, FACTS, run_chart

COMPILED = Path(chart_compile.__file__).with_name("compiled.py")


def _outcome(fn: object, config: str, event: str, facts: dict[str, bool | str]) -> tuple[str, str]:
    try:
        return ("ok", fn(config, event, facts))  # type: ignore[operator]
    except RuleViolation as violation:
        return ("error", violation.code.value)


@pytest.fixture(scope="module")
def table() -> dict[chart_compile.Key, chart_compile.Outcome]:
    return chart_compile.build_table()


def test_every_configuration_event_and_fact_combination_agrees(
    table: dict[chart_compile.Key, chart_compile.Outcome],
) -> None:
    """``table`` is the chart itself: run_chart on every (config, event, facts)."""
    expected_keys = {
        (config, event, values)
        for config in CONFIGS
        for event in EVENTS
        for values in chart_compile.combinations(event)
    }
    assert set(table) == expected_keys
    assert len(table) == 728
    for (config, event, values), chart_outcome in table.items():
        facts = dict(zip(FACTS[event], values, strict=True))
        assert _outcome(decide, config, event, facts) == chart_outcome, (config, event, facts)


def test_committed_compiled_module_is_the_fresh_compilation(
    table: dict[chart_compile.Key, chart_compile.Outcome],
) -> None:
    assert COMPILED.read_text(encoding="utf-8") == chart_compile.render(table), (
        "statecharts/compiled.py is stale: run `make compile-charts`"
    )


def test_table_covers_exactly_the_abstraction(
    table: dict[chart_compile.Key, chart_compile.Outcome],
) -> None:
    from statecharts.compiled import TABLE

    assert table == TABLE
    for (config, event, values), (kind, value) in TABLE.items():
        assert config in CONFIGS and event in EVENTS
        assert all(v in FACT_DOMAINS[n] for n, v in zip(FACTS[event], values, strict=True))
        if kind == "ok":
            assert value in CONFIGS
        else:
            assert kind == "error" and ErrorCode(value).value == value


def test_compile_entrypoint_prints_the_module(
    table: dict[chart_compile.Key, chart_compile.Outcome],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(chart_compile, "build_table", lambda: table)
    chart_compile.main()
    assert capsys.readouterr().out == COMPILED.read_text(encoding="utf-8")


def test_generated_module_is_ruff_formatted() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    result = subprocess.run(
        [ruff, "format", "--check", "--diff", str(COMPILED)],
        capture_output=True,
        text=True,
        cwd=COMPILED.parent.parent,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_decide_defaults_missing_facts_to_false() -> None:
    assert decide("free", "place") == "one_option"
    assert decide("free", "place", {}) == "one_option"
    assert decide("two_options", "expire", {"rank1_due": True}) == "one_option"
    with pytest.raises(RuleViolation) as refused:
        decide("one_option", "cancel")
    assert refused.value.code is ErrorCode.OPTION_NOT_FOUND


@pytest.mark.parametrize(
    ("config", "event", "facts"),
    [
        ("optioned", "place", None),
        ("nowhere", "place", None),
        ("free", "explode", None),
        ("free", "sync_status", None),
        ("free", "sync_status", {"target": "optioned"}),
        ("free", "place", {"full": "yes"}),
    ],
)
def test_decide_rejects_unknown_inputs(
    config: str, event: str, facts: dict[str, bool | str] | None
) -> None:
    with pytest.raises(ValueError):
        decide(config, event, facts)


@pytest.mark.parametrize(
    ("config", "event", "facts"),
    [
        ("optioned", "place", None),
        ("free", "explode", None),
        ("free", "sync_status", None),
        ("free", "sync_status", {"target": "optioned"}),
    ],
)
def test_run_chart_rejects_unknown_inputs(
    config: str, event: str, facts: dict[str, bool | str] | None
) -> None:
    with pytest.raises(ValueError):
        run_chart(config, event, facts)
