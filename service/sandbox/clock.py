"""The sandbox's Koban clock: an injected clock (UNIX seconds) plus an offset that only
grows, and the instant up to which ticks have run. Which options a tick expires is the
state's business (`SandboxState.catch_up`); this only says which ticks have passed."""

from __future__ import annotations

import time
from collections.abc import Callable

from statecharts.ticks import next_tick, ticks_between

__all__ = ["Clock", "ClockBackwards", "SandboxClock", "real_clock"]

Clock = Callable[[], int]


def real_clock() -> int:
    return int(time.time())


class ClockBackwards(ValueError):
    """The sandbox clock only moves forward."""


class SandboxClock:
    def __init__(self, clock: Clock = real_clock) -> None:
        self._clock = clock
        self._offset = 0
        self._ticked_upto = self.now()

    def now(self) -> int:
        return int(self._clock()) + self._offset

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def ticked_upto(self) -> int:
        """The instant up to which ticks have run."""
        return self._ticked_upto

    def next_tick(self) -> int:
        return next_tick(self.now())

    def move_to(self, ts: int) -> None:
        """Move the clock to `ts`; never backwards (`ClockBackwards`)."""
        now = self.now()
        if ts < now:
            raise ClockBackwards(f"the sandbox clock is at {now}; {ts} is in the past")
        self._offset += ts - now

    def pass_ticks(self) -> tuple[list[int], int]:
        """(the ticks passed since the last call, in order; now), and mark them run."""
        upto = self.now()
        ticks = ticks_between(self._ticked_upto, upto)
        if upto > self._ticked_upto:
            self._ticked_upto = upto
        return ticks, upto
