"""Webhooks Koban owes for our own changes: their echoes, awaited on the lot.

Koban fires a webhook for every change made through its API, ours included, and the
webhooks carry no event id and arrive at least once, in any order, sometimes late. When
the service changes a lot through Koban (`service.usecases.flows`: Undo, Prolong, Desist) and
applies the change from Koban's answer before the webhook came, that webhook is still on
its way; by the time it arrives the lot may have moved on, and read at face value it
would act on the lot as it is now:

* ``option-cancelled`` names only (lot, third): after that prospect placed a new option on
  the lot, a late echo of the cancellation of the old one cancelled the new one;
* ``option-prolonged`` names (lot, third, PrgDate): the same, a forced prolongation of the
  new option;
* ``reservation-withdrawn`` names only the lot: after another préréservation, a late echo
  of our Desist withdrew the newer one.

So the transition that applies such a change from Koban's answer records an `Echo` on the
lot (same atomic step), and the webhook handler takes a matching echo first: the webhook is
then a replay. When the webhook comes *before* Koban's answer, it applies the change itself
and the flow finds it done, so no echo is recorded. An echo is awaited for `ECHO_TTL_S` of
real time (delivery delay does not follow a tenant's test clock); an echo whose webhook was
lost is forgotten then, and until then it may take one genuine webhook of the same kind
for its own (reconciliation settles that lot).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from statecharts.model import Echo, EchoKind, Lot

__all__ = ["ECHO_TTL_S", "MAX_ECHOES", "await_echo", "take_echo", "wall_clock"]

ECHO_TTL_S = 900  # a webhook later than 15 min is not taken for our echo any more
# Per lot, the oldest going first: a hot lot under a webhook backlog had 16 outstanding
# (the mixed load, 50 clients, 4 hot lots); 8 dropped echoes still on their way.
MAX_ECHOES = 64

wall_clock: Callable[[], float] = time.time


def _fresh(lot: Lot, now: int) -> list[Echo]:
    return [e for e in lot.echoes if now - e.at <= ECHO_TTL_S]


def await_echo(lot: Lot, kind: EchoKind, third: str | None, date: int | None = None) -> None:
    """Record, in the transition applying our change, the webhook Koban will send for it."""
    if kind != "reservation_withdrawn" and third is None:
        return  # an opaque placeholder's: Koban's webhook names a prospect we never knew
    now = int(wall_clock())
    kept = _fresh(lot, now)
    kept.append(Echo(kind, third, now, date))
    lot.echoes = kept[-MAX_ECHOES:]


def take_echo(lot: Lot, kind: EchoKind, third: str | None, date: int | None = None) -> bool:
    """Whether a webhook (`kind`, `third`, `date` for a prolongation) is the echo of one of
    our own changes; if so the echo is consumed (expired ones are dropped on the way)."""
    now = int(wall_clock())
    kept = _fresh(lot, now)
    found = False
    for i, echo in enumerate(kept):
        if echo.kind == kind and echo.third == third and (date is None or echo.date == date):
            del kept[i]
            found = True
            break
    if found or len(kept) != len(lot.echoes):
        lot.echoes = kept
    return found
