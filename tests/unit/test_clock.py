"""`SystemClock` and `TestClock` read the wall clock: pinned here with freezegun."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from freezegun import freeze_time

from service.clock import SystemClock, TestClock
from tests.support.instants import ts

CHANGE = "2026-10-25T01:00:00Z"  # Europe/Paris leaves summer time: a tick


def test_the_system_clock_is_the_wall_clock_in_whole_seconds() -> None:
    with freeze_time("2026-10-25T00:59:59.999999Z") as frozen:
        clock = SystemClock()
        # Truncated, never rounded: a read just before a tick is not that tick yet.
        assert clock.now() == ts(CHANGE) - 1
        frozen.tick(1e-6)
        assert clock.now() == ts(CHANGE) and ts(CHANGE) % 1800 == 0
        frozen.move_to(datetime(2027, 3, 28, 1, 0, tzinfo=UTC))  # summer time again
        assert clock.now() == ts("2027-03-28T01:00:00Z")


def test_a_sandbox_clock_is_the_wall_clock_plus_an_offset_that_only_grows() -> None:
    with freeze_time(CHANGE) as frozen:
        clock = TestClock(SystemClock())
        clock.advance_to(ts(CHANGE) + 3600)
        frozen.tick(60)
        assert clock.now() == ts(CHANGE) + 3660  # wall time moves it on
        with pytest.raises(ValueError, match="backwards"):
            clock.advance_to(ts(CHANGE) + 3600)
        clock.adopt(0)  # an older offset another process recorded: ignored
        assert clock.now() == ts(CHANGE) + 3660
