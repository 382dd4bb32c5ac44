"""What each of Koban's webhooks does to a lot: one pure step per webhook.

A step takes the lot (as of now) and what was read with it (`Seen`: the third's
tombstones, the tail of the lot's history) and returns the events and an outcome name. A
Koban fact the local rules refuse is drift, not an error. The use case
(`service.usecases.koban_webhooks`) reads, runs the step in one store mutation, commits;
docs/webhooks.md tells the rules in full.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from statecharts import transitions as tr
from statecharts.capacity import lot_full
from statecharts.decide import decide
from statecharts.drift import drift_event
from statecharts.echoes import take_echo
from statecharts.errors import RuleViolation
from statecharts.intent_resolution import webhook_resolution
from statecharts.model import DomainEvent, Lot, Option, Rules
from statecharts.ticks import ceil_tick, deadline_from_lifetime, latest_tick, to_iso

__all__ = [
    "Applied",
    "Ctx",
    "NeedTombstones",
    "RecentEvent",
    "Seen",
    "Step",
    "Tombstone",
    "decide_webhook",
    "option_cancelled",
    "option_check_answer",
    "option_expired",
    "option_placed",
    "option_prolonged",
    "prolonged_deadline",
    "reservation_validated",
    "reservation_withdrawn",
]

# An entry of the lot's recent history: (event type, data with the long key names).
RecentEvent = tuple[str, Mapping[str, object]]


@dataclass(frozen=True, slots=True)
class Tombstone:
    """An option of (lot, third) that ended at `ended` with deadline `deadline`."""

    deadline: int | None
    ended: int
    option_id: str


@dataclass(frozen=True, slots=True)
class Seen:
    """What a step reads besides the lot, at the same attempt as the lot."""

    tombstones: tuple[Tombstone, ...] = ()
    recent: Iterable[RecentEvent] = ()  # the lot's last history entries, oldest first
    tombstones_read: bool = False  # False: `tombstones` was not read (see NeedTombstones)


class NeedTombstones(Exception):
    """Raised by a step that reads tombstones only in a rare case, when they were not read:
    the caller runs the step again with them (reading them walks the tenant's whole set,
    too costly for the usual case)."""


@dataclass(slots=True)
class Applied:
    events: list[DomainEvent]
    outcome: str
    drift: bool = False
    resync: bool = False  # queue the lot for reconciliation even without drift


@dataclass(frozen=True, slots=True)
class Ctx:
    """One webhook's delivery: its name, the tenant's now, the wall-clock second (echoes
    age on real time) and where new option ids come from."""

    webhook: str
    now: int
    rules: Rules
    wall_now: int
    new_id: Callable[[], str]


Step = Callable[[Lot, Seen], Applied]


# --------------------------------------------------------------------------- pre-check


def option_check_answer(lot: Lot | None) -> dict[str, object]:
    """Koban's pre-check from the lot as of now (lazy expiry applied by the caller).

    False while any intent on the lot is pending or the chart refuses a placement
    (PRERESV, RESV, BLOQUE, sold, custom, two options); else true with the next free rank.
    A lot the service has not imported yet gets ``{"status": true, "rank": null}``: Koban
    knows its own stock, and the service has nothing against it.
    """
    if lot is None:
        return {"status": True, "rank": None}
    if lot.intents:
        return {"status": False, "rank": None}
    try:
        decide(lot.config, "place", {"full": lot_full(len(lot.options))})
    except RuleViolation:
        return {"status": False, "rank": None}
    return {"status": True, "rank": len(lot.options) + 1}


# --------------------------------------------------------------------------- running a step


def _restore(lot: Lot, snapshot: Lot) -> None:
    """Undo a partial change (a transition refused after touching the lot)."""
    for f in dataclasses.fields(Lot):
        setattr(lot, f.name, getattr(snapshot, f.name))


def decide_webhook(step: Step, lot: Lot, seen: Seen, ctx: Ctx, third: str | None) -> Applied:
    """Run `step`; a refusal of the local rules leaves the lot as it was and is drift."""
    snapshot = copy.deepcopy(lot)
    try:
        return step(lot, seen)
    except RuleViolation as exc:
        _restore(lot, snapshot)
        drift = _drift(
            ctx, "refused_locally", code=exc.code.value, localStatus=lot.status, thirdGuid=third
        )
        return Applied([drift], "drift", drift=True)


# --------------------------------------------------------------------------- helpers


def _iso(ts: int | None) -> str | None:
    # Instants under `data` keys the event builder does not know go out as ISO here.
    return to_iso(ts) if ts is not None else None


def _drift(ctx: Ctx, reason: str, **data: object) -> DomainEvent:
    return drift_event(ctx.now, "koban", reason, webhook=ctx.webhook, **data)


def _set_koban_deadline(o: Option, deadline: int) -> None:
    o.deadline = deadline
    o.expiry = ceil_tick(deadline)
    o.original_deadline = deadline
    o.source = "koban"


def _identify(o: Option, third: str, deadline: int, ctx: Ctx) -> Applied:
    """An opaque placeholder turns out to be this third's option."""
    o.holder = third
    _set_koban_deadline(o, deadline)
    data = tr.option_data(o, "koban", wasOpaque=True)
    return Applied([DomainEvent("option.placed", ctx.now, data)], "placeholder identified")


def _learn_deadline(own: Option, deadline: int, ctx: Ctx) -> Applied:
    if own.deadline == deadline and own.source == "koban":
        return Applied([], "replay")
    if own.prolonged:
        return Applied([], "stale: prolonged since")
    before, before_expiry = own.deadline, own.expiry
    _set_koban_deadline(own, deadline)
    data = tr.option_data(
        own, "koban", previousDeadline=_iso(before), previousEffectiveExpiry=_iso(before_expiry)
    )
    return Applied([DomainEvent("option.deadline_confirmed", ctx.now, data)], "deadline learned")


def _ended_already(seen: Seen, deadline: int, rules: Rules) -> bool:
    """A tombstone of this (lot, third) that the placed webhook describes, or outlived.

    An ExpDate on a tick (the sandbox sends the effective expiry) is that of every option
    placed in one half hour: it describes the ended option when its tick is not after
    the one an option placed at the end would have had. The exact comparisons alone missed
    an option ended within the half hour it was placed in (its tombstone holds the
    service's estimate, or its prolonged date), and the late webhook placed it again, or
    settled a newer pending intent of that prospect that Koban had not placed."""
    on_tick = ceil_tick(deadline) == deadline
    for t in seen.tombstones:
        outlived = deadline_from_lifetime(t.ended, rules.option_lifetime, rules.zone)
        if t.deadline == deadline or deadline < outlived:
            return True
        if on_tick and deadline <= ceil_tick(outlived):
            return True
    return False


def _reserved_before(recent: Iterable[RecentEvent], prereservation: str) -> bool:
    """Whether the lot's recent history has a ``lot.reserved`` for this préréservation."""
    return any(
        kind == "lot.reserved" and data.get("prereservationGuid") == prereservation
        for kind, data in recent
    )


# --------------------------------------------------------------------------- the steps


def option_placed(ctx: Ctx, third: str, deadline: int, rank_hint: int | None) -> Step:
    """Koban placed an option for `third` expiring at `deadline` (ExpDate)."""

    def step(lot: Lot, seen: Seen) -> Applied:
        if ceil_tick(deadline) <= ctx.now:
            return Applied([], "stale: expiry tick passed")
        if _ended_already(seen, deadline, ctx.rules):
            return Applied([], "stale: option ended")
        own = lot.option_of(third)
        if own is not None:
            return _learn_deadline(own, deadline, ctx)
        resolved = webhook_resolution(
            lot, third, deadline, ctx.now, ctx.rules, option_id=ctx.new_id()
        )
        if resolved is not None:  # a pending intent of that third: now settled
            events, resolution = resolved
            outcome = resolution.outcome
            return Applied(events, f"intent {outcome}", drift=outcome == "dropped")
        occupied = lot.occupied
        hint = rank_hint if rank_hint is not None and rank_hint <= occupied + 1 else None
        at_hint = lot.option_at(hint) if hint is not None else None
        if at_hint is not None and at_hint.opaque:
            return _identify(at_hint, third, deadline, ctx)
        snapshot = copy.deepcopy(lot)
        try:
            events = tr.place_option(
                lot,
                option_id=ctx.new_id(),
                holder=third,
                partner=None,
                placed_at=ctx.now,
                rules=ctx.rules,
                koban_deadline=deadline,
                actor="koban",
                rank=hint,
            )
        except RuleViolation as exc:
            _restore(lot, snapshot)
            placeholder = next((o for o in lot.options if o.opaque), None)
            if placeholder is not None:
                return _identify(placeholder, third, deadline, ctx)
            drift = _drift(
                ctx,
                "option_not_placeable",
                code=exc.code.value,
                localStatus=lot.status,
                thirdGuid=third,
                kobanRank=rank_hint,
                expDate=_iso(deadline),
            )
            return Applied([drift], "drift", drift=True)
        return Applied(events, "placed")

    return step


def option_cancelled(ctx: Ctx, third: str) -> Step:
    """Koban cancelled `third`'s option (the rank it names is only a hint)."""

    def step(lot: Lot, seen: Seen) -> Applied:
        if take_echo(lot, "option_cancelled", third, None, wall_now=ctx.wall_now):
            return Applied([], "replay: echo of our Undo")
        own = lot.option_of(third)
        if own is None:
            return Applied([], "replay: nothing active")
        events = tr.cancel_option(lot, own.rank, third, ctx.now, ctx.rules, "koban")
        return Applied(events, "cancelled")

    return step


def prolonged_deadline(prg_date: int, exp_date: int | None) -> int:
    """The new deadline an option-prolonged webhook tells. `PrgDate` is the deadline (as
    `DateProlongation` is when we send it) unless `ExpDate`'s tick is later than
    `PrgDate`'s: then `PrgDate` was the moment of prolongation and `ExpDate` the deadline."""
    if exp_date is not None and ceil_tick(exp_date) > ceil_tick(prg_date):
        return exp_date
    return prg_date


def _confirm_echo(
    lot: Lot, third: str, sent: int | None, exp_date: int | None, ctx: Ctx
) -> Applied:
    """Our own Prolong (to `sent`) came back; Koban's `ExpDate` is the authority on its
    tick, as long as the third's option is still the one we prolonged (a late echo may
    find a newer option of the same third, which it does not concern)."""
    own = lot.option_of(third)
    if (
        exp_date is None
        or own is None
        or not own.prolonged
        or own.deadline != sent
        or ceil_tick(exp_date) == own.expiry
    ):
        return Applied([], "replay: echo of our Prolong")
    before, before_expiry = own.deadline, own.expiry
    own.deadline, own.expiry, own.source = exp_date, ceil_tick(exp_date), "koban"
    data = tr.option_data(
        own, "koban", previousDeadline=_iso(before), previousEffectiveExpiry=_iso(before_expiry)
    )
    events = [DomainEvent("option.deadline_confirmed", ctx.now, data)]
    events.extend(tr.expire_due(lot, ctx.now, ctx.rules, actor="koban"))
    return Applied(events, "echo of our Prolong: Koban's expiry differs")


def option_prolonged(ctx: Ctx, third: str, prg_date: int, exp_date: int | None = None) -> Step:
    """Koban prolonged `third`'s option (`prolonged_deadline` reads the two dates)."""
    until = prolonged_deadline(prg_date, exp_date)

    def step(lot: Lot, seen: Seen) -> Applied:
        # Our echo: the deadline we sent is PrgDate (Koban echoes DateProlongation), or it
        # falls in ExpDate's tick (a Koban whose PrgDate is the moment of prolongation).
        tick = None if exp_date is None else ceil_tick(exp_date)
        echo = take_echo(lot, "option_prolonged", third, until, wall_now=ctx.wall_now, tick=tick)
        if echo is not None:
            return _confirm_echo(lot, third, echo.date, exp_date, ctx)
        own = lot.option_of(third)
        if own is None:
            return Applied([], "replay: nothing active")
        if own.prolonged and own.deadline == until:
            return Applied([], "replay")
        snapshot = copy.deepcopy(lot)
        try:
            events = tr.prolong_option(lot, own.rank, until, third, ctx.now, ctx.rules, "koban")
            return Applied(events, "prolonged")
        except RuleViolation as exc:
            _restore(lot, snapshot)
            refused = exc
        own = lot.option_of(third)
        assert own is not None
        before = own.deadline
        if own.original_deadline is None:
            own.original_deadline = own.deadline
        own.deadline, own.expiry = until, ceil_tick(until)
        own.prolonged, own.source = True, "koban"
        events = [
            DomainEvent("option.prolonged", ctx.now, tr.option_data(own, "koban", forced=True)),
            _drift(
                ctx,
                "prolongation_refused_locally",
                code=refused.code.value,
                optionId=own.id,
                thirdGuid=third,
                prgDate=_iso(until),
                localDeadline=_iso(before),
            ),
        ]
        # Koban's date may already be due: expire it as of its own tick.
        events.extend(tr.expire_due(lot, ctx.now, ctx.rules, actor="koban"))
        return Applied(events, "prolonged (forced)", drift=True)

    return step


def option_expired(ctx: Ctx, third: str) -> Step:
    """Koban expired `third`'s option (Koban expires only at ticks)."""
    tick = latest_tick(ctx.now)

    def step(lot: Lot, seen: Seen) -> Applied:
        own = lot.option_of(third)
        if own is None:
            return Applied([], "replay: nothing active")
        if own.placed_at >= tick:
            return Applied([], "stale: placed after Koban's latest tick")
        if not seen.tombstones_read:
            raise NeedTombstones
        if any(t.ended <= own.placed_at for t in seen.tombstones):
            # An earlier option of that third on this lot ended before this one was
            # placed: the webhook is that one's, late (had Koban really expired this one
            # early, reconciliation finds it).
            return Applied([], "stale: an earlier option's expiry", resync=True)
        # Anything due by now was expired by the store's lazy expiry already: the local
        # expiry is later than Koban's tick. Koban wins, as of that tick.
        local = own.expiry
        own.expiry = tick
        events = tr.expire_due(lot, tick, ctx.rules, actor="koban")
        events.append(
            _drift(
                ctx,
                "expired_by_koban_earlier",
                optionId=own.id,
                thirdGuid=third,
                localExpiry=_iso(local),
                kobanTick=_iso(tick),
            )
        )
        return Applied(events, "expired", drift=True)

    return step


def reservation_validated(ctx: Ctx, third: str | None, prereservation: str | None) -> Step:
    """Koban validated a reservation (`prereservation`: the préréservation's guid)."""

    def step(lot: Lot, seen: Seen) -> Applied:
        if lot.config == "reserved":
            return Applied([], "replay")
        if prereservation is not None and _reserved_before(seen.recent, prereservation):
            return Applied([], "replay: withdrawn since")
        previous = lot.status
        events, drift = tr.validate_reservation(lot, ctx.now, ctx.rules, "koban")
        for e in events:
            if e.type == "lot.reserved":
                if e.data.get("thirdGuid") is None:
                    e.data["thirdGuid"] = third
                e.data["prereservationGuid"] = prereservation
        if not drift:
            return Applied(events, "reserved")
        events.append(
            _drift(ctx, "reserved_without_prereservation", previousStatus=previous, thirdGuid=third)
        )
        return Applied(events, "reserved", drift=True)

    return step


def reservation_withdrawn(ctx: Ctx) -> Step:
    """Koban withdrew the lot's reservation (the webhook names no third)."""

    def step(lot: Lot, seen: Seen) -> Applied:
        if take_echo(lot, "reservation_withdrawn", None, None, wall_now=ctx.wall_now):
            return Applied([], "replay: echo of our Desist")
        if lot.config not in ("prereserved", "reserved"):
            return Applied([], "replay: not pre-reserved")
        return Applied(tr.withdraw(lot, None, ctx.now, ctx.rules, "koban"), "withdrawn")

    return step
