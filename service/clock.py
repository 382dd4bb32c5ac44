"""Time is asked, never read directly: every component takes a `Clock`.

Inside the service instants are int UNIX seconds (UTC). Tests pin them with `FixedClock`
(or freezegun, which `SystemClock` follows); sandbox tenants use a `TestClock`: real time
plus an offset that only grows, shared by processes through Redis
(service.usecases.sandbox_clock).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> int: ...


class SystemClock:
    def now(self) -> int:
        return int(time.time())


class FixedClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, now: int) -> None:
        self._now = now

    def now(self) -> int:
        return self._now

    def set(self, now: int) -> None:
        self._now = now

    def advance(self, seconds: int) -> None:
        self._now += seconds


class TestClock:
    """Real time plus an offset that only grows: a sandbox tenant's clock."""

    __test__ = False  # not a pytest class

    def __init__(self, base: Clock | None = None, offset: int = 0) -> None:
        self.base = base or SystemClock()
        self.offset = offset

    def now(self) -> int:
        return self.base.now() + self.offset

    def advance_to(self, instant: int) -> None:
        if instant < self.now():
            raise ValueError("a test clock never moves backwards")
        self.offset = instant - self.base.now()

    def adopt(self, offset: int) -> None:
        """Take an offset another process recorded (`sandbox_clock`), never going back."""
        self.offset = max(self.offset, offset)
