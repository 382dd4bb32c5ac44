"""Echoes: the webhook Koban still owes for a change the service made through it.

The transition applying our Undo / Prolong / Desist from Koban's answer records an `Echo`
on the lot; the matching webhook, when it comes (maybe late, after the lot moved on),
takes it and is a replay. An echo is awaited `ECHO_TTL_S` of real time: the caller passes
the wall-clock second (`wall_now`), not the tenant's clock. docs/webhooks.md tells why.
"""

from __future__ import annotations

from statecharts.model import Echo, EchoKind, Lot
from statecharts.ticks import ceil_tick

__all__ = ["ECHO_TTL_S", "MAX_ECHOES", "await_echo", "take_echo"]

ECHO_TTL_S = 900  # a webhook later than 15 min is not taken for our echo any more
# Per lot, the oldest going first: a hot lot under a webhook backlog can owe a dozen.
MAX_ECHOES = 64


def _fresh(lot: Lot, wall_now: int) -> list[Echo]:
    return [e for e in lot.echoes if wall_now - e.at <= ECHO_TTL_S]


def await_echo(
    lot: Lot, kind: EchoKind, third: str | None, date: int | None, *, wall_now: int
) -> None:
    """Record, in the transition applying our change, the webhook Koban will send for it."""
    if kind != "reservation_withdrawn" and third is None:
        return  # an opaque placeholder's: Koban's webhook names a prospect we never knew
    kept = _fresh(lot, wall_now)
    kept.append(Echo(kind, third, wall_now, date))
    lot.echoes = kept[-MAX_ECHOES:]


def take_echo(
    lot: Lot,
    kind: EchoKind,
    third: str | None,
    date: int | None,
    *,
    wall_now: int,
    tick: int | None = None,
) -> Echo | None:
    """The echo of one of our own changes this webhook (`kind`, `third`, `date` for a
    prolongation) is, consumed (expired ones are dropped on the way), or None. With `tick`,
    a prolongation whose deadline falls in that tick matches too (Koban's `ExpDate`)."""
    kept = _fresh(lot, wall_now)
    found: Echo | None = None
    for i, echo in enumerate(kept):
        if echo.kind != kind or echo.third != third:
            continue
        dated = echo.date is not None
        if (
            date is None
            or echo.date == date
            or (tick is not None and dated and ceil_tick(echo.date or 0) == tick)
        ):
            del kept[i]
            found = echo
            break
    if found is not None or len(kept) != len(lot.echoes):
        lot.echoes = kept
    return found
