"""Drift: Koban's view and the local one disagree. Koban is the authority, so a Koban fact
the local rules refuse is recorded as a ``sync.drift_detected`` event (and the lot queued
for reconciliation by the caller), never answered as an error.

Pure judgements only: what Koban's ``GetLotStatus`` says about the option count, whether
Koban may still lag behind the latest tick, whether an ``Add`` refusal contradicts the lot.
"""

from __future__ import annotations

from statecharts.capacity import lot_full
from statecharts.model import Actor, DomainEvent, Lot
from statecharts.ticks import latest_tick

__all__ = [
    "DRIFT",
    "add_refusal_contradicts",
    "drift_event",
    "in_drift_tolerance",
    "koban_occupancy",
    "rank_verdict",
]

DRIFT = "sync.drift_detected"
_ADD_CODES = frozenset({"01", "02", "03", "04", "05"})
_OPTIONED = ("one_option", "two_options")


def drift_event(now: int, actor: Actor, reason: str, **data: object) -> DomainEvent:
    """A ``koban.sync.drift_detected`` event: `reason` says what disagreed."""
    payload: dict[str, object] = {"reason": reason}
    payload.update(data)
    payload["actor"] = actor
    return DomainEvent(DRIFT, now, payload)


def koban_occupancy(result: int, max_rank: int) -> int | None:
    """How many options Koban's ``GetLotStatus`` (`result`, `max_rank`) reports on the lot;
    None when the answer does not say (-1 unknown lot; -2 pre-reserved, whose MaxRank the
    doc does not define)."""
    if result == 0:
        return 0
    if result == -3:
        return 2
    if result == 1:
        return 2 if max_rank >= 2 else 1
    return None


def in_drift_tolerance(now: int, tolerance_s: float) -> bool:
    """True within `tolerance_s` after the latest tick: Koban may still report options the
    service expired at that tick."""
    return now - latest_tick(now) < tolerance_s


def add_refusal_contradicts(code: str | None, lot: Lot) -> bool:
    """Does Koban's ``Add`` refusal `code` contradict the lot as we hold it?"""
    if code not in _ADD_CODES:
        return True  # undocumented: treat as a contradiction and reconcile
    if code == "05":
        return not lot_full(len(lot.options))
    if code == "02":
        return lot.config in ("free", *_OPTIONED)
    if code == "04":
        return lot.config != "prereserved"
    return False  # 01 / 03: counts on other lots, not this lot's state


def rank_verdict(result: int, max_rank: int, rank: int, held: int) -> str | None:
    """Koban's ``GetLotStatus`` (`result`, `max_rank`) read before an ``Add`` at `rank` on
    a lot holding `held` options: None, go on; ``"wait"``, a placement of ours below that
    rank is still on its way to Koban; otherwise why Koban would refuse: ``full`` |
    ``prereserved`` | ``unknown`` | ``ahead`` (Koban holds an option we do not know, or has
    not expired it yet) | ``behind`` (Koban holds fewer than the ranks below ours)."""
    if result == -1:
        return "unknown"
    if result == -2:
        return "prereserved"
    k = koban_occupancy(result, max_rank)
    if k is None:
        return "unknown"
    if lot_full(k):
        return "full"
    if k == rank - 1:
        return None
    if k > rank - 1:
        return "ahead"
    return "wait" if k >= held else "behind"
