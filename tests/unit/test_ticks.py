"""Tick arithmetic, ISO-8601 durations and instants (statecharts.ticks). No real clock."""

from __future__ import annotations

import ast
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statecharts import ticks
from statecharts.ticks import (
    TICK_SECONDS,
    IsoDuration,
    add_duration,
    ceil_tick,
    check_zone,
    deadline_from_lifetime,
    effective_expiry,
    latest_tick,
    next_tick,
    parse_duration,
    parse_instant,
    prolongation_cap,
    ticks_between,
    to_iso,
)

PARIS = ZoneInfo("Europe/Paris")
HOUR = 3600


def utc(text: str) -> int:
    """UNIX seconds of an ISO text that carries its offset."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return int(moment.timestamp())


def paris_wall(ts: float) -> str:
    return datetime.fromtimestamp(ts, PARIS).isoformat()


# A tick: 2026-03-29T10:00:00Z.
T = utc("2026-03-29T10:00:00+00:00")


# --------------------------------------------------------------------------- ticks


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (T + 29 * 60 + 59, T + 1800),  # 10:29:59 -> 10:30
        (T + 1800, T + 1800),  # 10:30:00 stays
        (T + 1801, T + 3600),  # 10:30:01 -> 11:00
        (T, T),  # 10:00:00 stays
        (T + 59 * 60 + 59.5, T + 3600),  # 10:59:59.5 -> 11:00
        (T + 29 * 60 + 59.5, T + 1800),  # 10:29:59.5 -> 10:30
        (T + 0.000001, T + 1800),
        (float(T), T),
    ],
)
def test_ceil_tick(ts: float, expected: int) -> None:
    assert ceil_tick(ts) == expected
    assert isinstance(ceil_tick(ts), int)


def test_next_and_latest_tick() -> None:
    assert next_tick(T) == T + 1800  # strictly after, even on a tick
    assert next_tick(T - 0.5) == T
    assert next_tick(T + 1799.9) == T + 1800
    assert latest_tick(T) == T
    assert latest_tick(T + 1799.9) == T
    assert latest_tick(T - 0.5) == T - 1800


def test_ticks_between() -> None:
    assert ticks_between(T, T + 3600) == [T + 1800, T + 3600]  # after < t <= upto
    assert ticks_between(T - 1, T) == [T]
    assert ticks_between(T, T) == []
    assert ticks_between(T, T + 1799) == []
    assert ticks_between(T + 3600, T) == []
    assert ticks_between(T - 10, T + 4 * 1800 + 5) == [T + i * 1800 for i in range(5)]


def test_effective_expiry_is_ceil_tick() -> None:
    assert effective_expiry(T) == T  # a deadline exactly on a tick expires at that tick
    assert effective_expiry(T + 1) == T + 1800


def test_non_finite_timestamps_refused() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            ceil_tick(bad)
        with pytest.raises(ValueError):
            latest_tick(bad)


@given(st.floats(min_value=0, max_value=4.2e9, allow_nan=False, allow_infinity=False))
def test_ceil_tick_property(t: float) -> None:
    tick = ceil_tick(t)
    assert tick % TICK_SECONDS == 0
    assert tick >= t
    assert tick - TICK_SECONDS < t  # tick < t + 1800, without float rounding
    assert latest_tick(t) <= t < next_tick(t)
    assert next_tick(t) - latest_tick(t) == TICK_SECONDS


@given(st.integers(min_value=-(10**10), max_value=10**10))
def test_ceil_tick_property_integers(t: int) -> None:
    tick = ceil_tick(t)
    assert tick % TICK_SECONDS == 0
    assert t <= tick < t + TICK_SECONDS
    assert latest_tick(t) <= t < next_tick(t)
    assert (tick == t) == (t % TICK_SECONDS == 0)


# --------------------------------------------------------------------------- lifetimes across DST


@pytest.mark.parametrize(
    ("placed", "deadline_wall", "elapsed_hours", "expiry_wall"),
    [
        # Saturday before the spring change (Sunday 29 March 2026, 02:00 -> 03:00).
        (
            "2026-03-28T10:17:23+01:00",
            "2026-03-30T10:17:23+02:00",
            47,
            "2026-03-30T10:30:00+02:00",
        ),
        # Saturday before the autumn change (Sunday 25 October 2026, 03:00 -> 02:00).
        (
            "2026-10-24T10:17:23+02:00",
            "2026-10-26T10:17:23+01:00",
            49,
            "2026-10-26T10:30:00+01:00",
        ),
    ],
)
def test_two_day_lifetime_keeps_wall_clock_across_dst(
    placed: str, deadline_wall: str, elapsed_hours: int, expiry_wall: str
) -> None:
    placed_at = utc(placed)
    deadline = deadline_from_lifetime(placed_at, parse_duration("P2D"), PARIS)
    assert paris_wall(deadline) == deadline_wall
    assert deadline - placed_at == elapsed_hours * HOUR
    assert paris_wall(effective_expiry(deadline)) == expiry_wall


def test_lifetime_landing_in_spring_gap_moves_forward_by_the_gap() -> None:
    placed_at = utc("2026-03-27T02:30:00+01:00")
    deadline = deadline_from_lifetime(placed_at, parse_duration("P2D"), PARIS)
    # 2026-03-29T02:30 does not exist in Paris: it becomes 03:30 CEST.
    assert paris_wall(deadline) == "2026-03-29T03:30:00+02:00"
    assert deadline == utc("2026-03-29T01:30:00+00:00")
    assert effective_expiry(deadline) == deadline


def test_lifetime_landing_in_autumn_overlap_takes_first_occurrence() -> None:
    placed_at = utc("2026-10-23T02:30:00+02:00")
    deadline = deadline_from_lifetime(placed_at, parse_duration("P2D"), PARIS)
    # 2026-10-25T02:30 happens twice; the first is CEST (+02:00), i.e. 00:30Z not 01:30Z.
    assert deadline == utc("2026-10-25T02:30:00+02:00")
    assert to_iso(deadline) == "2026-10-25T00:30:00Z"


def test_time_part_from_second_occurrence_of_overlap_is_exact() -> None:
    second = utc("2026-10-25T02:30:00+01:00")  # second 02:30 (CET)
    assert add_duration(second, parse_duration("PT1H"), PARIS) == second + HOUR
    assert add_duration(second, parse_duration("PT0S"), PARIS) == second


@pytest.mark.parametrize(
    ("placed", "difference_hours"),
    [("2026-03-28T12:00:00+01:00", -1), ("2026-10-24T12:00:00+02:00", 1)],
)
def test_calendar_day_versus_24_hours_across_dst(placed: str, difference_hours: int) -> None:
    placed_at = utc(placed)
    calendar = add_duration(placed_at, parse_duration("P1DT2H"), PARIS)
    elapsed = add_duration(placed_at, parse_duration("PT26H"), PARIS)
    assert elapsed - placed_at == 26 * HOUR
    assert calendar - elapsed == difference_hours * HOUR


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        ("2026-01-31T12:00:00+01:00", "P1M", "2026-02-28T12:00:00+01:00"),
        ("2028-01-31T12:00:00+01:00", "P1M", "2028-02-29T12:00:00+01:00"),
        ("2026-01-31T12:00:00+01:00", "P1M1D", "2026-03-01T12:00:00+01:00"),
        ("2028-02-29T12:00:00+01:00", "P1Y", "2029-02-28T12:00:00+01:00"),
        ("2026-11-30T12:00:00+01:00", "P3M", "2027-02-28T12:00:00+01:00"),
        ("2026-03-01T12:00:00+01:00", "P1M", "2026-04-01T12:00:00+02:00"),
    ],
)
def test_month_ends_clamp(start: str, duration: str, expected: str) -> None:
    assert add_duration(utc(start), parse_duration(duration), PARIS) == utc(expected)


def test_add_duration_keeps_fractional_seconds() -> None:
    start = utc("2026-03-28T10:00:00+01:00") + 0.25
    result = add_duration(start, parse_duration("P1DT0.5S"), PARIS)
    assert result == utc("2026-03-29T10:00:00+02:00") + 0.75
    assert deadline_from_lifetime(
        utc("2026-06-01T10:00:00+02:00"), IsoDuration(seconds=0.5), PARIS
    ) == (utc("2026-06-01T10:00:01+02:00"))


def test_prolongation_cap() -> None:
    original = utc("2026-03-28T10:17:23+01:00")
    assert prolongation_cap(original, None, PARIS) is None
    cap = prolongation_cap(original, parse_duration("P7D"), PARIS)
    assert cap is not None
    assert paris_wall(cap) == "2026-04-04T10:17:23+02:00"


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "text",
    ["P2D", "PT2H", "PT15M", "PT5M", "P7D", "P1Y2M3DT4H5M6S", "PT0.5S", "P1DT2H", "PT0S", "P1M"],
)
def test_parse_duration_round_trip(text: str) -> None:
    assert str(parse_duration(text)) == text
    assert parse_duration(str(parse_duration(text))) == parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P2D", IsoDuration(days=2)),
        ("P1W", IsoDuration(days=7)),
        ("P1W2D", IsoDuration(days=9)),
        ("PT26H", IsoDuration(seconds=26 * 3600)),
        ("PT90M", IsoDuration(seconds=5400)),
        ("PT1.5H", IsoDuration(seconds=5400)),
        ("PT0.1H", IsoDuration(seconds=360)),
        ("PT0,5S", IsoDuration(seconds=0.5)),
        ("P1Y2M", IsoDuration(years=1, months=2)),
        ("p2d", IsoDuration(days=2)),
        (" P2D ", IsoDuration(days=2)),
    ],
)
def test_parse_duration_values(text: str, expected: IsoDuration) -> None:
    assert parse_duration(text) == expected


def test_duration_str_normalises() -> None:
    assert str(parse_duration("P1W")) == "P7D"
    assert str(parse_duration("PT90M")) == "PT1H30M"
    assert str(IsoDuration(seconds=5400.1)) == "PT5400.1S"
    assert parse_duration(str(IsoDuration(seconds=5400.1))).seconds == 5400.1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "PT",
        "P1DT",
        "-P1D",
        "P-1D",
        "2D",
        "P1.5D",
        "P1.5W",
        "PT1.5H30M",
        "P2X",
        "PT1H2D",
        "P1H",
        "PT1D",
        "garbage",
        "P1D2Y",
    ],
)
def test_parse_duration_refusals(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_duration(text)


def test_parse_duration_messages_are_clear() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration("-PT5M")
    with pytest.raises(ValueError, match="without any component"):
        parse_duration("P")
    with pytest.raises(ValueError, match="no hours, minutes or seconds"):
        parse_duration("PT")
    with pytest.raises(ValueError, match="only on hours, minutes or seconds"):
        parse_duration("P1.5D")
    with pytest.raises(ValueError, match="last component"):
        parse_duration("PT1.5H30M")
    with pytest.raises(ValueError, match="not an ISO-8601 duration: 'garbage'"):
        parse_duration("garbage")
    with pytest.raises(ValueError, match="must be a string"):
        parse_duration(5)  # type: ignore[arg-type]


def test_iso_duration_invariants() -> None:
    with pytest.raises(ValueError):
        IsoDuration(days=-1)
    with pytest.raises(ValueError):
        IsoDuration(seconds=-0.5)
    with pytest.raises(TypeError):
        IsoDuration(days=1.5)  # type: ignore[arg-type]
    assert IsoDuration().is_zero
    assert str(IsoDuration()) == "PT0S"
    assert IsoDuration(days=1, seconds=60).fixed_seconds() == 86460
    with pytest.raises(ValueError):
        IsoDuration(months=1).fixed_seconds()


@given(
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 400),
    st.integers(0, 10**7),
)
def test_duration_round_trip_property(years: int, months: int, days: int, seconds: int) -> None:
    duration = IsoDuration(years=years, months=months, days=days, seconds=seconds)
    assert parse_duration(str(duration)) == duration


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_fractional_seconds_round_trip_property(seconds: float) -> None:
    duration = IsoDuration(seconds=seconds)
    assert parse_duration(str(duration)) == duration


# --------------------------------------------------------------------------- zones


@pytest.mark.parametrize(
    "name",
    ["Europe/Paris", "UTC", "Asia/Kolkata", "Australia/Lord_Howe", "America/St_Johns"],
)
def test_check_zone_accepts_half_hour_zones(name: str) -> None:
    check_zone(ZoneInfo(name))


@pytest.mark.parametrize(
    ("name", "offset"),
    [("Asia/Kathmandu", "+05:45"), ("Australia/Eucla", "+08:45"), ("Pacific/Chatham", "+12:45")],
)
def test_check_zone_refuses_other_offsets(name: str, offset: str) -> None:
    with pytest.raises(
        ValueError, match=rf"offset \{offset} is not a multiple of 30 minutes"
    ) as info:
        check_zone(ZoneInfo(name))
    assert name in str(info.value)


# --------------------------------------------------------------------------- instants


def test_to_iso() -> None:
    assert to_iso(utc("2026-03-29T01:30:00+00:00")) == "2026-03-29T01:30:00Z"
    assert to_iso(utc("2026-03-29T03:30:00+02:00")) == "2026-03-29T01:30:00Z"
    assert to_iso(utc("2026-03-29T01:30:00+00:00") + 0.5) == "2026-03-29T01:30:00.500000Z"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1774747800, 1774747800.0),
        (1774747800.5, 1774747800.5),
        (1774747800000, 1774747800.0),  # above 1e11: milliseconds
        (1774747800123, 1774747800.123),
        (1774747800000.0, 1774747800.0),
        ("1774747800", 1774747800.0),
        ("1774747800000", 1774747800.0),
        ("2026-03-29T01:30:00Z", 1774747800.0),
        ("2026-03-29T03:30:00+02:00", 1774747800.0),
        ("2026-03-29T01:30:00.250Z", 1774747800.25),
        (99_999_999_999, 99_999_999_999.0),  # just below the threshold: seconds
    ],
)
def test_parse_instant(value: str | int | float, expected: float) -> None:
    assert parse_instant(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value", ["2026-03-29T01:30:00", "2026-03-29", "yesterday", "", True, math.nan, math.inf]
)
def test_parse_instant_refusals(value: str | float) -> None:
    with pytest.raises(ValueError):
        parse_instant(value)


def test_parse_instant_refuses_naive_with_clear_message() -> None:
    with pytest.raises(ValueError, match="without a UTC offset"):
        parse_instant("2026-03-29T01:30:00")


def test_to_iso_parse_instant_round_trip() -> None:
    for ts in (0, T, T + 0.5, utc("2099-12-31T23:30:00+00:00")):
        assert parse_instant(to_iso(ts)) == ts


# --------------------------------------------------------------------------- purity


def test_ticks_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(ticks.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
    assert datetime.fromtimestamp(0, UTC).year == 1970  # sanity: no clock involved above
