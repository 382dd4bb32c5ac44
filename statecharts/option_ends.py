"""How options end or change once held: promotion of rank 2 (ranks kept dense), expiry tick
by tick, the `option.expiring` notices, cancellation and prolongation addressed by rank, and
reconciliation's supersession.

Like every transition: guard facts from the lot's data, the chart's verdict (`decide`),
then the lot changed in place and the events returned.
"""

from __future__ import annotations

from statecharts import lot_data
from statecharts.decide import Decide, decide
from statecharts.lot_data import set_config
from statecharts.model import (
    Actor,
    DomainEvent,
    Lot,
    Option,
    Rules,
)
from statecharts.ticks import add_duration, ceil_tick, deadline_from_lifetime


def compact_ranks(
    lot: Lot, when: int, actor: Actor, rules: Rules, decide: Decide = decide
) -> list[DomainEvent]:
    """Keep ranks dense from 1 over options and intents; promotion of rank 2 happens here."""
    events: list[DomainEvent] = []
    # A pending intent for rank 1 keeps it: rank 2 is promoted only when rank 1 is gone.
    if lot.option_at(1) is None and all(i.rank != 1 for i in lot.intents):
        second = lot.option_at(2)
        if second is not None:
            decide(lot.config, "promote", None)
            second.rank = 1
            restarted = rules.rank2_clock == "restart"
            if restarted:
                second.deadline = deadline_from_lifetime(when, rules.option_lifetime, rules.zone)
                second.expiry = ceil_tick(second.deadline)
                second.source = "estimated"
            events.append(DomainEvent("option.promoted", when, lot_data.option_data(second, actor)))
            if restarted:  # its expiry moved: maybe into the notice window already
                events.extend(expiring_notices(lot, when, rules, at=when))
    # Intents follow the options: the lowest free ranks, in their original order.
    taken = {o.rank for o in lot.options}
    free_ranks = [r for r in (1, 2) if r not in taken]
    for intent, rank in zip(sorted(lot.intents, key=lambda i: i.rank), free_ranks, strict=False):
        intent.rank = rank
    return events


def end_options(
    lot: Lot, ended: list[Option], how: str, when: int, actor: Actor, rules: Rules
) -> list[DomainEvent]:
    events = []
    for o in ended:
        lot.options.remove(o)
        events.append(DomainEvent(f"option.{how}", when, lot_data.option_data(o, actor)))
    events.extend(compact_ranks(lot, when, actor, rules))
    return events


def supersede_options(
    lot: Lot, victims: list[Option], now: int, actor: Actor, rules: Rules
) -> list[DomainEvent]:
    """End `victims` as ``option.superseded`` (Koban no longer has them), ranks compacted:
    reconciliation's fix when Koban counts fewer options than the lot holds."""
    return end_options(lot, victims, "superseded", now, actor, rules)


# --- expiry (sweep and lazy reads) -------------------------------------------------------


def expire_due(
    lot: Lot, now: int, rules: Rules, actor: Actor = "sweep", *, decide: Decide = decide
) -> list[DomainEvent]:
    """Expire every option of one lot whose effective expiry is <= now, tick by tick, in
    order (the tenant-wide sweep over the expiry index is `service.usecases.sweep`).

    Each expiry event carries its own tick as time. Both ranks due at one tick both expire
    (nothing is promoted in between); a rank 2 promoted at one tick may itself be due at a
    later tick that is still <= now (catch-up), and is then expired at that tick.
    """
    events: list[DomainEvent] = []
    while True:
        tick = lot.next_expiry()
        if tick is None or tick > now:
            return events
        due = [o for o in lot.options if o.expiry is not None and o.expiry <= tick]
        # The chart's "rank 1" / "rank 2" are the first and second option held: a rank 2
        # option waiting behind a pending rank 1 intent is the lot's first option.
        held = sorted(lot.options, key=lambda o: o.rank)
        facts = {"rank1_due": held[0] in due, "rank2_due": len(held) > 1 and held[1] in due}
        target = decide(lot.config, "expire", facts)
        for o in sorted(due, key=lambda o: o.rank):
            lot.options.remove(o)
            events.append(DomainEvent("option.expired", tick, lot_data.option_data(o, actor)))
        set_config(lot, target)
        events.extend(compact_ranks(lot, tick, actor, rules, decide))


# --- expiring notices ----------------------------------------------------------------------


def notice_due_at(o: Option, rules: Rules) -> int | None:
    """When the option's `option.expiring` is due: `expiring_notice` before its expiry tick.

    None when no notice is owed: notices are off (``expiring_notice`` 0), or the option has
    no known expiry (an opaque placeholder Koban gave no date for).
    """
    if rules.expiring_notice <= 0 or o.expiry is None:
        return None
    return o.expiry - rules.expiring_notice


def expiring_notices(
    lot: Lot, upto: int, rules: Rules, *, at: int | None = None, actor: Actor = "sweep"
) -> list[DomainEvent]:
    """Give every option of the lot whose notice is due at or before `upto` its notice.

    Once per option: the option is marked `noticed` (a prolongation or a restarted
    promotion later does not bring a second one). A notice changes no configuration, so
    the chart is not asked; the store bumps the lot's version like any transition.

    `at` is the event's time when the notice rides on a transition at that instant (an
    option placed, prolonged or promoted into the window gets its notice then); without
    it, the notice's own due time, or the placement when later (the scheduler's run).
    Options still held but already due (not swept yet) get it too: it then precedes their
    expiry in the stream.
    """
    events: list[DomainEvent] = []
    for o in sorted(lot.options, key=lambda o: o.rank):
        due = notice_due_at(o, rules)
        if o.noticed or due is None or due > upto:
            continue
        o.noticed = True
        when = max(due, o.placed_at) if at is None else at
        events.append(DomainEvent("option.expiring", when, lot_data.option_data(o, actor)))
    return events


# --- options addressed by rank ------------------------------------------------------------


def _addressed(lot: Lot, rank: int, holder_hint: str | None) -> tuple[Option | None, bool]:
    option = lot.option_at(rank)
    matches = option is not None and (holder_hint is None or option.holder == holder_hint)
    return option, matches


def cancel_option(
    lot: Lot, rank: int, holder_hint: str | None, now: int, rules: Rules, actor: Actor = "api"
) -> list[DomainEvent]:
    option, matches = _addressed(lot, rank, holder_hint)
    target = decide(
        lot.config, "cancel", {"option_found": option is not None, "holder_matches": matches}
    )
    assert option is not None
    set_config(lot, target)
    return end_options(lot, [option], "cancelled", now, actor, rules)


def prolong_option(
    lot: Lot,
    rank: int,
    until: int,
    holder_hint: str | None,
    now: int,
    rules: Rules,
    actor: Actor = "api",
) -> list[DomainEvent]:
    """Prolong once; `until` becomes the deadline and must give a later tick."""
    option, matches = _addressed(lot, rank, holder_hint)
    cap = None
    if option is not None and rules.max_prolongation is not None:
        base = option.original_deadline if option.original_deadline is not None else now
        cap = int(add_duration(base, rules.max_prolongation, rules.zone))
    current = option.expiry if option is not None and option.expiry is not None else now
    facts = {
        "option_found": option is not None,
        "holder_matches": matches,
        "already_prolonged": option is not None and option.prolonged,
        "not_later": ceil_tick(until) <= current,
        "too_long": cap is not None and until > cap,
    }
    target = decide(lot.config, "prolong", facts)
    assert option is not None
    if option.original_deadline is None:
        option.original_deadline = option.deadline
    option.deadline = until
    option.expiry = ceil_tick(until)
    option.prolonged = True
    option.source = "koban"  # Koban's DateProlongation is exactly this date
    set_config(lot, target)
    events = [DomainEvent("option.prolonged", now, lot_data.option_data(option, actor))]
    events.extend(expiring_notices(lot, now, rules, at=now))
    return events
