"""Echoes of the service's own Koban writes, on the wall clock.

The rules are pure (`statecharts.echoes`); this module gives them the real time, since a
webhook's delivery delay does not follow a tenant's test clock. Tests pin `wall_clock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from statecharts import echoes
from statecharts.echoes import ECHO_TTL_S, MAX_ECHOES
from statecharts.model import EchoKind, Lot

__all__ = ["ECHO_TTL_S", "MAX_ECHOES", "await_echo", "take_echo", "wall_clock", "wall_now"]

wall_clock: Callable[[], float] = time.time


def wall_now() -> int:
    """The wall-clock second echoes are stamped and aged with."""
    return int(wall_clock())


def await_echo(lot: Lot, kind: EchoKind, third: str | None, date: int | None = None) -> None:
    """Record, in the transition applying our change, the webhook Koban will send for it."""
    echoes.await_echo(lot, kind, third, date, wall_now=wall_now())


def take_echo(lot: Lot, kind: EchoKind, third: str | None, date: int | None = None) -> bool:
    """Whether a webhook is the echo of one of our own changes (consumed if so)."""
    return echoes.take_echo(lot, kind, third, date, wall_now=wall_now()) is not None
