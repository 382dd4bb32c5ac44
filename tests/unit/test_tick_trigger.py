"""The tick trigger alone: :00 and :30 in UTC, at the boundaries, across Paris's DST changes."""

from __future__ import annotations

import itertools
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from service.entrypoints.scheduler import tick_trigger
from tests.support.instants import at

PARIS = ZoneInfo("Europe/Paris")


def test_the_tick_trigger_fires_at_00_and_30_only() -> None:
    trigger = tick_trigger()
    fires = []
    previous = None
    now = at("2026-11-23T09:47:13Z")
    for _ in range(200):
        fire = trigger.get_next_fire_time(previous, now)
        fires.append(fire)
        previous = now = fire
    assert fires[0] == at("2026-11-23T10:00:00Z")
    assert all(f.minute in (0, 30) and f.second == 0 and f.microsecond == 0 for f in fires)
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(fires))


@pytest.mark.parametrize(
    ("now", "first"),
    [
        ("2026-11-23T10:29:59Z", "2026-11-23T10:30:00Z"),
        ("2026-11-23T10:29:59.999999Z", "2026-11-23T10:30:00Z"),
        ("2026-11-23T10:30:00Z", "2026-11-23T10:30:00Z"),  # due now
        ("2026-11-23T10:30:00.000001Z", "2026-11-23T11:00:00Z"),
        ("2026-11-23T10:30:01Z", "2026-11-23T11:00:00Z"),
    ],
)
def test_the_tick_trigger_at_the_boundaries(now: str, first: str) -> None:
    assert tick_trigger().get_next_fire_time(None, at(now)) == at(first)


def test_after_firing_at_a_tick_the_next_one_is_half_an_hour_later() -> None:
    fired = at("2026-11-23T10:30:00Z")
    assert tick_trigger().get_next_fire_time(fired, fired) == at("2026-11-23T11:00:00Z")


@pytest.mark.parametrize(
    ("start", "local_hours"),
    [("2026-03-28T23:00:00Z", 23), ("2026-10-24T22:00:00Z", 25)],  # Paris: spring, autumn
)
def test_ticks_stay_on_00_and_30_in_paris_across_a_dst_change(start: str, local_hours: int) -> None:
    trigger = tick_trigger()
    fires = []
    previous = None
    now = at(start) - timedelta(seconds=1)
    day_end = at(start) + timedelta(hours=local_hours)  # the local day, in UTC
    while True:
        fire = trigger.get_next_fire_time(previous, now)
        if fire >= day_end:
            break
        fires.append(fire)
        previous = now = fire
    local = [f.astimezone(PARIS) for f in fires]
    assert {f.minute for f in local} == {0, 30} and all(f.second == 0 for f in local)
    assert len(fires) == local_hours * 2  # 46 ticks on the short day, 50 on the long one
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(fires))
    assert local[0].hour == 0 and local[0].minute == 0  # local midnight
    assert local[-1].hour == 23 and local[-1].minute == 30
