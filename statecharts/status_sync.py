"""Koban's status imposed on a lot by the stock sync, and the occupancy invariant tests and
`lot --check` verify."""

from __future__ import annotations

from statecharts import lot_data
from statecharts.decide import decide
from statecharts.lot_data import OPTIONED, optioned_config, set_config
from statecharts.model import (
    Actor,
    DomainEvent,
    Lot,
    Option,
    Rules,
)
from statecharts.option_ends import compact_ranks, expiring_notices
from statecharts.ticks import ceil_tick


def sync_status(
    lot: Lot,
    target: str,
    label: str,
    now: int,
    rules: Rules,
    actor: Actor = "sync",
    rank1_end: int | None = None,
) -> list[DomainEvent]:
    """Koban's status wins: any state to any other, sold included.

    Options that the new state cannot hold end `superseded`; a lot Koban reports in OPTION
    with fewer local options than it says gets opaque placeholders.
    """
    previous = lot.status
    events: list[DomainEvent] = []
    capacity = {"one_option": 1, "two_options": 2, "prereserved": 2}.get(target, 0)
    kept = sorted(lot.options, key=lambda o: o.rank)[:capacity]
    placeholders = 0
    if target in OPTIONED:
        # A pending intent of ours is most likely the option Koban reports: no placeholder
        # for it (the intent's resolution settles it); the configuration follows the
        # options actually held, and the chart is asked about that one.
        placeholders = max(0, capacity - len(kept) - len(lot.intents))
        target = optioned_config(len(kept) + placeholders)
    new_config = decide(lot.config, "sync_status", {"target": target})
    for o in sorted(lot.options, key=lambda o: o.rank)[capacity:]:
        lot.options.remove(o)
        events.append(DomainEvent("option.superseded", now, lot_data.option_data(o, actor)))
    for _ in range(placeholders):
        rank = len(lot.options) + 1
        deadline = rank1_end if rank == 1 else None
        lot.options.append(
            Option(
                id=f"opaque-{lot.extcode}-{lot.sequence + len(events) + 1}",
                rank=rank,
                holder=None,
                partner=None,
                placed_at=now,
                deadline=deadline,
                expiry=ceil_tick(deadline) if deadline is not None else None,
                source="koban",
            )
        )
        events.append(
            DomainEvent(
                "option.placed", now, lot_data.option_data(lot.options[-1], actor, opaque=True)
            )
        )
    if new_config not in ("prereserved", "reserved"):
        lot.prereservation = None
    set_config(lot, new_config)
    events.extend(compact_ranks(lot, now, actor, rules))
    if placeholders:  # a placeholder with Koban's EndDate may be inside the window already
        events.extend(expiring_notices(lot, now, rules, at=now))
    if new_config == "custom":
        lot.status = label
    events.append(
        DomainEvent(
            "lot.status_changed",
            now,
            {"from": previous, "to": lot.status, "actor": actor},
        )
    )
    return events


def occupancy_invariant(lot: Lot) -> list[str]:
    """Broken invariants of one lot (empty when sound); used by tests and `lot --check`."""
    problems = []
    if len(lot.options) > 2:
        problems.append("more than two active options")
    ranks = sorted([o.rank for o in lot.options] + [i.rank for i in lot.intents])
    if ranks != list(range(1, len(ranks) + 1)):
        problems.append(f"ranks not dense from 1: {ranks}")
    holders = [o.holder for o in lot.options if o.holder] + [i.holder for i in lot.intents]
    if len(holders) != len(set(holders)):
        problems.append("a prospect holds two options on the lot")
    if lot.config in OPTIONED and optioned_config(len(lot.options)) != lot.config:
        problems.append(f"config {lot.config} with {len(lot.options)} options")
    if lot.config == "free" and lot.options:
        problems.append("free lot with options")
    return problems
