"""Mirroring Koban's word on a lot: the stock sync's status and reconciliation's count.

Koban is the authority: a status or an option count it reports moves the lot through the
chart's ``sync_status``, with a drift event in the same transition. Right after a tick
Koban may still report options expired locally (`tolerant`): such a lot is deferred, never
counted as drift. The use cases (`service.usecases.sync`) read Koban and commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from statecharts import transitions as tr
from statecharts.decide import decide
from statecharts.drift import drift_event, koban_occupancy
from statecharts.model import STATUS_OF_CONFIG, Actor, DomainEvent, Lot, Option, Rules
from statecharts.ticks import ceil_tick

__all__ = [
    "COUNTABLE",
    "OPTIONED",
    "LotOutcome",
    "Verdict",
    "follow_koban",
    "mirror_status",
    "optioned_config",
    "reconcile_change",
    "sync_status_events",
    "victims",
]

OPTIONED = ("one_option", "two_options")
COUNTABLE = ("free", "one_option", "two_options")  # configurations whose options we reconcile


def optioned_config(n: int) -> str:
    return ("free", "one_option", "two_options")[max(0, min(2, n))]


def follow_koban(lot: Lot, target: str) -> None:
    """Move the lot to `target` through the chart's ``sync_status`` (Koban's word wins)."""
    lot.config = decide(lot.config, "sync_status", {"target": target})
    if lot.config != "custom":
        lot.status = STATUS_OF_CONFIG[lot.config]


def sync_status_events(
    lot: Lot,
    target: str,
    label: str,
    now: int,
    rules: Rules,
    actor: Actor,
    rank1_end: int | None = None,
) -> list[DomainEvent]:
    """``tr.sync_status`` without a ``lot.status_changed`` whose status did not change."""
    events = tr.sync_status(lot, target, label, now, rules, actor, rank1_end=rank1_end)
    return [
        e
        for e in events
        if not (e.type == "lot.status_changed" and e.data.get("from") == e.data.get("to"))
    ]


@dataclass(slots=True)
class LotOutcome:
    kind: str  # imported | changed | unchanged | deferred
    drift: bool = False
    queue: bool = False  # reconcile it (opaque placeholders, deferred disagreement)


def mirror_status(
    lot: Lot, target: str, label: str, now: int, started: int, rules: Rules, tolerant: bool
) -> tuple[list[DomainEvent], LotOutcome]:
    """A known lot (as of `now`) against the configuration `target` and status `label` a
    ``GetUpdated`` page of run `started` reports; `tolerant`: within the drift tolerance."""
    n = len(lot.options)
    if target == "one_option":
        if lot.config in OPTIONED:
            return [], LotOutcome("unchanged")
        if lot.config == "prereserved" and n:
            target = optioned_config(n)  # the préréservation ended; its options stand
        elif lot.intents or lot.modified_at >= started or (lot.config == "free" and tolerant):
            # Our own placement in flight, a local change newer than this page (Koban's
            # side of it will show in the next run), or Koban still reporting options
            # expired at the latest tick: let reconciliation judge.
            return [], LotOutcome("deferred", queue=True)
    elif target == "free":
        if lot.config == "free":
            return [], LotOutcome("unchanged")
        if lot.config in OPTIONED and (lot.intents or lot.modified_at >= started):
            return [], LotOutcome("deferred", queue=True)
    elif lot.config == target and (target != "custom" or lot.status == label):
        return [], LotOutcome("unchanged")
    previous, options_before = lot.status, n
    events = sync_status_events(lot, target, label, now, rules, "sync")
    events.append(
        drift_event(
            now,
            "sync",
            "status",
            localStatus=previous,
            localOptions=options_before,
            kobanStatus=label,
        )
    )
    opaque = any(o.opaque for o in lot.options)
    return events, LotOutcome("changed", drift=True, queue=opaque or lot.config in OPTIONED)


def victims(options: list[Option], count: int, end: int | None) -> list[Option]:
    """Which local options Koban no longer has: those whose expiry does not match rank 1's
    EndDate first, then opaque placeholders, then the higher rank."""
    end_tick = ceil_tick(end) if end is not None else None

    def key(o: Option) -> tuple[bool, bool, int]:
        return (o.expiry == end_tick, not o.opaque, -o.rank)

    return sorted(options, key=key)[:count]


@dataclass(slots=True)
class Verdict:
    outcome: str  # agreed | fixed | deferred | drift | unknown_lot
    keep_queued: bool = False


def reconcile_change(
    lot: Lot,
    result: int,
    max_rank: int,
    end_date: int | None,
    now: int,
    rules: Rules,
    tolerant: bool,
) -> tuple[list[DomainEvent], Verdict]:
    """Compare one lot (as of `now`) with Koban's GetLotStatus (`result`, `max_rank`,
    `end_date`) and fix it through the chart; `tolerant`: within the drift tolerance."""
    koban = {"kobanResult": result, "kobanMaxRank": max_rank}
    if end_date is not None:
        koban["endDate"] = end_date
    n = len(lot.options)
    local = {"localStatus": lot.status, "localOptions": n}
    if result == -1:
        return [drift_event(now, "reconcile", "koban_unknown_lot", **local, **koban)], Verdict(
            "unknown_lot"
        )
    if lot.modified_at >= now or lot.intents:
        # Changed since we asked Koban, or a placement of ours is in flight: next run.
        return [], Verdict("deferred", keep_queued=True)
    if result == -2:
        if lot.config == "prereserved":
            return [], Verdict("agreed")
        if lot.config in COUNTABLE:
            fixed = sync_status_events(lot, "prereserved", "PRERESV", now, rules, "reconcile")
            fixed.append(drift_event(now, "reconcile", "status", **local, **koban))
            return fixed, Verdict("fixed")
        return [drift_event(now, "reconcile", "status", **local, **koban)], Verdict("drift")
    k = koban_occupancy(result, max_rank)
    if k is None:  # an undocumented result: nothing we can mirror
        return [], Verdict("agreed")
    if lot.config not in COUNTABLE:
        if k == 0:
            return [], Verdict("agreed")
        # Options on a lot we hold as pre-reserved/reserved/blocked/sold/custom: the status
        # is the stock sync's business; record what we saw.
        return [drift_event(now, "reconcile", "status", **local, **koban)], Verdict("drift")
    events: list[DomainEvent] = []
    if k > n:
        if tolerant:
            return [], Verdict("deferred", keep_queued=True)
        events.extend(
            sync_status_events(
                lot, optioned_config(k), "OPTION", now, rules, "reconcile", rank1_end=end_date
            )
        )
        events.append(drift_event(now, "reconcile", "option_count", **local, **koban))
    elif k < n:
        ended = victims(lot.options, n - k, end_date)
        follow_koban(lot, optioned_config(k))
        previous = local["localStatus"]
        events.extend(tr.supersede_options(lot, ended, now, "reconcile", rules))
        if lot.status != previous:
            events.append(
                DomainEvent(
                    "lot.status_changed",
                    now,
                    {"from": previous, "to": lot.status, "actor": "reconcile"},
                )
            )
        events.append(drift_event(now, "reconcile", "option_count", **local, **koban))
    # Counts agree now: rank 1's deadline is Koban's EndDate (the expiry Koban applies).
    first = lot.option_at(1)
    end = end_date
    if (
        first is not None
        and end is not None
        and ceil_tick(end) > now
        and ceil_tick(end) != first.expiry
    ):
        before = {"optionId": first.id, "deadline": first.deadline}
        first.deadline = end
        first.expiry = ceil_tick(end)
        first.source = "koban"
        if first.original_deadline is None:
            first.original_deadline = end
        events.append(drift_event(now, "reconcile", "deadline", **before, **koban))
    if events:
        return events, Verdict("fixed")
    return [], Verdict("agreed")
