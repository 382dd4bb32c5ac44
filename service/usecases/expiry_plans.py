"""One lot's expiry as a sweep `Plan`: the fast path when it takes the lot, else the
generic path, the reference both are held to.

The generic path is the one every other writer takes: decode the lot, let
`transitions.expire_due` change it, derive the writes with `LotStore.transition` (what
``commit.lua`` would apply); `plan_of` restates that transition in ``sweep.lua``'s terms.
"""

from __future__ import annotations

from service.storage.codec import decode_lot
from service.storage.commit_script import Transition
from service.storage.store import LotStore, view
from service.storage.sweep_script import Plan, new_history
from service.usecases.fast_expiry import ExpiryDecisions, fast_expiry
from statecharts import transitions as tr
from statecharts.decide import COMPILED, DecisionEngine
from statecharts.model import DomainEvent


def plan_expiry(
    store: LotStore,
    code: str,
    raw: bytes,
    tick: int,
    history: bytes | None = None,
    engine: DecisionEngine = COMPILED,
) -> Plan | None:
    """The plan for one lot (stored as `raw`, its history `history`) at `tick`; None when
    nothing of it is due."""
    plan = fast_expiry(store, code, raw, tick, history, ExpiryDecisions(engine))
    if plan is not None:
        return plan
    result = generic_expiry(store, code, raw, tick, engine)
    if result is None:
        return None
    return plan_of(result[0], result[1], raw, tick, history, store.history_cap)


def generic_expiry(
    store: LotStore, code: str, raw: bytes, tick: int, engine: DecisionEngine = COMPILED
) -> tuple[Transition, list[DomainEvent]] | None:
    """The reference: decode, `transitions.expire_due`, `store.transition` (for commit.lua)."""
    lot = decode_lot(code, raw)
    before = view(lot)
    events = tr.expire_due(lot, tick, store.rules, decide=engine.decide)
    if not events:
        return None
    return store.transition(before, lot, events, tick), events


def plan_of(
    transition: Transition,
    events: list[DomainEvent],
    raw: bytes,
    tick: int,
    old_history: bytes | None,
    cap: int,
) -> Plan:
    """A `store.transition` at `tick` of the lot stored as `raw` (its history
    `old_history`, capped at `cap`), as a sweep plan."""
    t = transition
    if t.intent_removals or t.intent_additions or t.lot_score != tick:
        # expiries never add or drop pending intents; lots are scored `now`
        raise ValueError(f"lot {t.extcode}: not a sweep transition at {tick}")
    if any(s != tick for s in t.tombstones[1::2]):  # tombstones are scored `now` too
        raise ValueError(f"lot {t.extcode}: not a sweep transition at {tick}")
    deltas: list[object] = []
    counts = t.count_deltas
    for f, delta, limit in zip(counts[0::3], counts[1::3], counts[2::3], strict=True):
        if limit and delta > 0:
            raise ValueError(f"lot {t.extcode}: a checked count increase in a sweep transition")
        deltas += (f, delta)
    return Plan(
        t.extcode,
        raw[: raw.index(b"|") + 1],
        t.value,
        new_history(old_history, b"\n".join(t.history), cap),
        tuple(t.expiry_removals),
        tuple(t.expiry_additions),
        tuple(deltas),
        tuple(t.tombstones[0::2]),
        tuple(t.stream),
        tuple(e.type for e in events),
    )
