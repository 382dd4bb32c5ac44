"""`statecharts.transitions` on lots built in memory: placement refusals in their order,
expiry at ticks (both ranks due, catch-up), promotion under both rank 2 clocks, and the
prolongation rules. Instants are pinned; nothing here reads a clock or touches Redis."""

from __future__ import annotations

import copy

import pytest

from statecharts import transitions as tr
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import Intent, Lot, Option, Prereservation, Rules
from statecharts.ticks import ceil_tick, deadline_from_lifetime, parse_duration
from tests.support.instants import ts
from tests.support.rules import PARIS, make_rules

T0 = ts("2026-11-23T10:10:00Z")  # ten minutes after a tick
HOUR, DAY = 3600, 86400
RULES = make_rules()


def option(rank: int, holder: str | None, deadline: int, **fields: object) -> Option:
    return Option(
        id=f"o-{holder}",
        rank=rank,
        holder=holder,
        partner=None,
        placed_at=T0 - DAY,
        deadline=deadline,
        expiry=ceil_tick(deadline),
        original_deadline=deadline,
        **fields,
    )


def lot_with(*options: Option, intents: tuple[Intent, ...] = ()) -> Lot:
    config = ("free", "one_option", "two_options")[len(options)]
    status = "LIBRE" if not options else "OPTION"
    return Lot("A1", config=config, status=status, options=list(options), intents=list(intents))


def refusal_of(
    lot: Lot,
    holder: str = "p1",
    rank: int | None = None,
    rules: Rules = RULES,
    prospect_count: int = 0,
    user_count: int = 0,
) -> ErrorCode | None:
    """`placement_refusal`, checked against what `reserve_placement` does on a copy: the
    same code raised and the lot untouched, or the next rank held."""
    code = tr.placement_refusal(lot, holder, rank, rules, prospect_count, user_count)
    trial = copy.deepcopy(lot)
    if code is None:
        intent = tr.reserve_placement(
            trial, "i-new", holder, None, rank, T0, rules, prospect_count, user_count
        )
        assert intent.rank == lot.occupied + 1 and trial.intents[-1] is intent
    else:
        with pytest.raises(RuleViolation) as refused:
            tr.reserve_placement(
                trial, "i-new", holder, None, rank, T0, rules, prospect_count, user_count
            )
        assert refused.value.code is code
        assert trial == lot
    return code


# --- placement ------------------------------------------------------------------------------


def test_placement_refusals_come_in_the_documented_order() -> None:
    """Start with every reason to refuse and remove them one by one: each answer is the
    first reason left, in the order lot state → full → same prospect → prospect limit →
    user limit → rank."""
    rules = make_rules(max_options_per_user=4)
    held = lot_with(option(1, "p1", T0 + DAY), option(2, "p2", T0 + DAY))
    everything = {"holder": "p1", "rank": 1, "prospect_count": 3, "user_count": 4}

    reserved = copy.deepcopy(held)
    reserved.config, reserved.status = "reserved", "RESV"
    prereserved = copy.deepcopy(held)
    prereserved.config, prereserved.status = "prereserved", "PRERESV"
    prereserved.prereservation = Prereservation("p9", None, 100, 10, T0)
    one_held = lot_with(option(1, "p1", T0 + DAY))

    steps: list[tuple[Lot, dict[str, object]]] = [
        (reserved, everything),
        (prereserved, everything),
        (held, everything),
        (one_held, everything),
        (one_held, {**everything, "holder": "p3"}),
        (one_held, {**everything, "holder": "p3", "prospect_count": 2}),
        (one_held, {**everything, "holder": "p3", "prospect_count": 2, "user_count": 3}),
        (one_held, {"holder": "p3", "rank": 2, "prospect_count": 2, "user_count": 3}),
    ]
    codes = [refusal_of(lot, rules=rules, **kw) for lot, kw in steps]
    assert codes == [
        ErrorCode.LOT_NOT_AVAILABLE,
        ErrorCode.LOT_PRERESERVED,
        ErrorCode.LOT_FULL,
        ErrorCode.PROSPECT_ALREADY_HOLDS,
        ErrorCode.PROSPECT_OPTION_LIMIT,
        ErrorCode.USER_OPTION_LIMIT,
        ErrorCode.RANK_NOT_AVAILABLE,
        None,
    ]


@pytest.mark.parametrize(
    ("config", "status"),
    [("reserved", "RESV"), ("blocked", "BLOQUE"), ("sold", "VENDU"), ("custom", "ACTE")],
)
def test_lots_out_of_sale_refuse_any_placement(config: str, status: str) -> None:
    lot = Lot("A1", config=config, status=status)
    assert refusal_of(lot) is ErrorCode.LOT_NOT_AVAILABLE


def test_pending_intents_take_ranks_like_options() -> None:
    waiting = Intent("i1", 2, "p2", None, T0 - 5)
    lot = lot_with(option(1, "p1", T0 + DAY), intents=(waiting,))
    assert refusal_of(lot, holder="p3") is ErrorCode.LOT_FULL
    only_intent = lot_with(intents=(Intent("i1", 1, "p2", None, T0 - 5),))
    assert refusal_of(only_intent, holder="p2") is ErrorCode.PROSPECT_ALREADY_HOLDS
    assert refusal_of(only_intent, holder="p3", rank=1) is ErrorCode.RANK_NOT_AVAILABLE
    assert refusal_of(only_intent, holder="p3", rank=2) is None


def test_limits_are_reached_at_the_maximum_and_the_user_limit_is_off_by_default() -> None:
    free = lot_with()
    assert refusal_of(free, prospect_count=2) is None
    assert refusal_of(free, prospect_count=3) is ErrorCode.PROSPECT_OPTION_LIMIT
    assert refusal_of(free, user_count=10_000) is None  # max_options_per_user unset
    capped = make_rules(max_options_per_user=2)
    assert refusal_of(free, rules=capped, user_count=1) is None
    assert refusal_of(free, rules=capped, user_count=2) is ErrorCode.USER_OPTION_LIMIT


def test_a_confirmed_intent_becomes_an_option_at_its_rank() -> None:
    lot = lot_with(option(1, "p1", T0 + DAY))
    tr.reserve_placement(lot, "i2", "p2", "cgp", None, T0, RULES, 0, 0)
    events = tr.confirm_placement(lot, "i2", "o2", T0, RULES)
    placed = lot.option_at(2)
    assert placed is not None and (placed.holder, placed.partner) == ("p2", "cgp")
    # Two calendar days in Paris, then up to the next tick.
    assert placed.deadline == ts("2026-11-25T10:10:00Z")
    assert placed.expiry == ts("2026-11-25T10:30:00Z")
    assert (placed.source, placed.via_api, lot.intents) == ("estimated", True, [])
    assert (lot.config, lot.status) == ("two_options", "OPTION")
    assert [e.type for e in events] == ["option.placed"]

    with pytest.raises(RuleViolation) as unknown:
        tr.confirm_placement(lot, "i2", "o3", T0, RULES)
    assert unknown.value.code is ErrorCode.OPTION_NOT_FOUND


def test_koban_s_deadline_wins_over_the_estimate() -> None:
    lot = lot_with()
    koban_end = ts("2026-11-24T18:00:00Z")
    tr.place_option(
        lot,
        option_id="o1",
        holder="p1",
        partner=None,
        placed_at=T0,
        rules=RULES,
        koban_deadline=koban_end,
    )
    placed = lot.option_at(1)
    assert placed is not None
    assert (placed.deadline, placed.expiry, placed.source) == (koban_end, koban_end, "koban")


# --- expiry at ticks ------------------------------------------------------------------------


def test_an_option_expires_at_its_tick_and_not_a_second_before() -> None:
    lot = lot_with(option(1, "p1", ts("2026-11-23T12:10:00Z")))
    tick = ts("2026-11-23T12:30:00Z")
    assert tr.expire_due(lot, tick - 1, RULES) == []
    assert lot.config == "one_option"
    events = tr.expire_due(lot, tick + 600, RULES)
    assert [(e.type, e.time) for e in events] == [("option.expired", tick)]
    assert (lot.config, lot.status, lot.options) == ("free", "LIBRE", [])


def test_a_deadline_on_a_tick_expires_at_that_tick() -> None:
    on_tick = ts("2026-11-23T12:00:00Z")
    lot = lot_with(option(1, "p1", on_tick))
    assert [e.time for e in tr.expire_due(lot, on_tick, RULES)] == [on_tick]


def test_both_ranks_due_at_one_tick_both_expire_and_nothing_is_promoted() -> None:
    tick = ts("2026-11-23T12:30:00Z")
    lot = lot_with(option(1, "p1", tick - 600), option(2, "p2", tick - 60))
    events = tr.expire_due(lot, tick, RULES)
    assert [(e.type, e.time, e.data["rank"]) for e in events] == [
        ("option.expired", tick, 1),
        ("option.expired", tick, 2),
    ]
    assert (lot.config, lot.options) == ("free", [])


def test_rank_2_due_later_is_promoted_then_expires_at_its_own_tick_on_catch_up() -> None:
    first, second = ts("2026-11-23T12:30:00Z"), ts("2026-11-23T14:00:00Z")
    lot = lot_with(option(1, "p1", first - 60), option(2, "p2", second))
    events = tr.expire_due(lot, first, RULES)
    assert [(e.type, e.time) for e in events] == [
        ("option.expired", first),
        ("option.promoted", first),
    ]
    promoted = lot.option_at(1)
    assert promoted is not None and promoted.holder == "p2" and promoted.expiry == second
    assert lot.config == "one_option"

    caught_up = lot_with(option(1, "p1", first - 60), option(2, "p2", second))
    events = tr.expire_due(caught_up, second + DAY, RULES)
    assert [(e.type, e.time, e.data["thirdGuid"]) for e in events] == [
        ("option.expired", first, "p1"),
        ("option.promoted", first, "p2"),
        ("option.expired", second, "p2"),
    ]
    assert caught_up.config == "free"


def test_an_opaque_option_without_a_date_never_expires_on_its_own() -> None:
    opaque = Option("o-x", 2, None, None, T0, None, None, source="koban")
    tick = ts("2026-11-23T12:30:00Z")
    lot = lot_with(option(1, "p1", tick), opaque)
    events = tr.expire_due(lot, tick + 30 * DAY, RULES)
    assert [e.type for e in events] == ["option.expired", "option.promoted"]
    assert lot.options == [opaque] and opaque.rank == 1


# --- promotion ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "expire", "convert"])
def test_promoted_rank_2_keeps_its_own_deadline_by_default(how: str) -> None:
    end1, end2 = ts("2026-11-24T09:00:00Z"), ts("2026-11-25T16:45:00Z")
    lot = lot_with(option(1, "p1", end1), option(2, "p2", end2))
    now = end1 if how == "expire" else T0
    if how == "cancel":
        tr.cancel_option(lot, 1, "p1", now, RULES)
    elif how == "expire":
        tr.expire_due(lot, now, RULES)
    else:
        tr.prereserve(lot, "p1", None, 20_000_000, 1_000_000, now, RULES)
    promoted = lot.option_at(1)
    assert promoted is not None and promoted.holder == "p2"
    assert (promoted.deadline, promoted.expiry, promoted.source) == (
        end2,
        ts("2026-11-25T17:00:00Z"),
        "estimated",
    )


def test_restart_clock_gives_the_promoted_option_a_whole_lifetime_from_promotion() -> None:
    rules = make_rules(rank2_clock="restart", option_lifetime=parse_duration("P2D"))
    end2 = ts("2026-11-23T20:00:00Z")
    lot = lot_with(option(1, "p1", T0 + DAY), option(2, "p2", end2))
    now = ts("2026-11-23T11:05:00Z")
    events = tr.cancel_option(lot, 1, None, now, rules)
    promoted = lot.option_at(1)
    assert promoted is not None
    assert promoted.deadline == deadline_from_lifetime(now, rules.option_lifetime, PARIS)
    assert promoted.deadline == ts("2026-11-25T11:05:00Z")
    assert (promoted.expiry, promoted.source) == (ts("2026-11-25T11:30:00Z"), "estimated")
    assert [(e.type, e.time) for e in events] == [
        ("option.cancelled", now),
        ("option.promoted", now),
    ]
    assert events[1].data["deadline"] == promoted.deadline


def test_restart_clock_at_an_expiry_restarts_from_the_tick() -> None:
    rules = make_rules(rank2_clock="restart")
    tick = ts("2026-11-23T12:30:00Z")
    lot = lot_with(option(1, "p1", tick), option(2, "p2", tick + HOUR))
    tr.expire_due(lot, tick + 900, rules)  # swept a quarter of an hour late
    promoted = lot.option_at(1)
    assert promoted is not None
    assert promoted.deadline == ts("2026-11-25T12:30:00Z")


def test_a_pending_rank_1_intent_holds_promotion_back_until_released() -> None:
    waiting = Intent("i1", 1, "p1", None, T0)
    lot = lot_with(intents=(waiting,))
    lot.options.append(option(2, "p2", T0 + DAY))
    lot.config = "one_option"
    confirmed = copy.deepcopy(lot)
    tr.confirm_placement(confirmed, "i1", "o1", T0 + 5, RULES)
    assert [(o.holder, o.rank) for o in confirmed.options] == [("p1", 1), ("p2", 2)]
    events = tr.release_intent(lot, "i1", T0 + 5, RULES)
    assert [(e.type, e.time) for e in events] == [("option.promoted", T0 + 5)]
    assert lot.option_at(1) is not None and lot.intents == []
    assert tr.release_intent(lot, "i1", T0 + 6, RULES) == []  # a replayed release


# --- prolongation ---------------------------------------------------------------------------


def prolonged_lot() -> Lot:
    return lot_with(option(1, "p1", ts("2026-11-24T10:10:00Z")))


def test_prolongation_moves_deadline_and_expiry_once() -> None:
    lot = prolonged_lot()
    until = ts("2026-11-26T09:40:00Z")
    events = tr.prolong_option(lot, 1, until, "p1", T0, RULES)
    prolonged = lot.option_at(1)
    assert prolonged is not None
    assert (prolonged.deadline, prolonged.expiry) == (until, ts("2026-11-26T10:00:00Z"))
    assert (prolonged.prolonged, prolonged.source) == (True, "koban")
    assert prolonged.original_deadline == ts("2026-11-24T10:10:00Z")
    assert [(e.type, e.time) for e in events] == [("option.prolonged", T0)]

    before = copy.deepcopy(lot)
    with pytest.raises(RuleViolation) as again:
        tr.prolong_option(lot, 1, until + DAY, "p1", T0 + 60, RULES)
    assert again.value.code is ErrorCode.ALREADY_PROLONGED
    assert lot == before


@pytest.mark.parametrize(
    ("until", "code"),
    [
        # the same tick as today's expiry (10:30), even a second before it
        ("2026-11-24T10:29:59Z", ErrorCode.PROLONGATION_NOT_LATER),
        ("2026-11-24T10:30:00Z", ErrorCode.PROLONGATION_NOT_LATER),
        ("2026-11-24T09:00:00Z", ErrorCode.PROLONGATION_NOT_LATER),
        ("2026-11-24T10:30:01Z", None),  # the next tick, 11:00
    ],
)
def test_prolongation_must_reach_a_later_tick(until: str, code: ErrorCode | None) -> None:
    lot = prolonged_lot()
    before = copy.deepcopy(lot)
    if code is None:
        tr.prolong_option(lot, 1, ts(until), None, T0, RULES)
        assert lot.options[0].expiry == ts("2026-11-24T11:00:00Z")
        return
    with pytest.raises(RuleViolation) as refused:
        tr.prolong_option(lot, 1, ts(until), None, T0, RULES)
    assert refused.value.code is code
    assert lot == before


def test_prolongation_cap_counts_from_the_original_deadline() -> None:
    rules = make_rules(max_prolongation=parse_duration("P3D"))
    original = ts("2026-11-24T10:10:00Z")
    cap = ts("2026-11-27T10:10:00Z")
    ok = prolonged_lot()
    tr.prolong_option(ok, 1, cap, None, T0, rules)
    assert ok.options[0].deadline == cap and ok.options[0].original_deadline == original

    too_long = prolonged_lot()
    with pytest.raises(RuleViolation) as refused:
        tr.prolong_option(too_long, 1, cap + 1, None, T0, rules)
    assert refused.value.code is ErrorCode.PROLONGATION_TOO_LONG
    assert tr.prolong_option(prolonged_lot(), 1, cap + DAY, None, T0, RULES)  # no cap set


def test_prolonging_an_option_that_moved_or_is_gone_is_refused() -> None:
    lot = lot_with(option(1, "p1", T0 + DAY), option(2, "p2", T0 + 2 * DAY))
    until = T0 + 5 * DAY
    for rank, hint, code in [
        (1, "p2", ErrorCode.OPTION_MOVED),  # p2's option is rank 2 now
        (2, "p1", ErrorCode.OPTION_MOVED),
    ]:
        with pytest.raises(RuleViolation) as refused:
            tr.prolong_option(lot, rank, until, hint, T0, RULES)
        assert refused.value.code is code
    single = lot_with(option(1, "p1", T0 + DAY))
    with pytest.raises(RuleViolation) as gone:
        tr.prolong_option(single, 2, until, None, T0, RULES)
    assert gone.value.code is ErrorCode.OPTION_NOT_FOUND
    assert tr.occupancy_invariant(lot) == [] and tr.occupancy_invariant(single) == []


def test_a_prolongation_still_inside_the_notice_window_carries_the_notice_once() -> None:
    """Notices are owed `expiring_notice` before the expiry tick, once per option: a
    prolongation that stays inside the window brings an unsent notice along (at its own
    instant); one already sent is not repeated; one beyond the window owes none yet."""
    rules = make_rules(expiring_notice=2 * HOUR)
    inside = ts("2026-11-23T11:10:00Z")  # expiry 11:30, notice due 09:30: already passed
    beyond = ts("2026-11-23T13:10:00Z")  # expiry 13:30, notice due 11:30: later
    pending = lot_with(option(1, "p1", T0 + 10 * 60))
    events = tr.prolong_option(pending, 1, inside, None, T0, rules)
    assert [(e.type, e.time) for e in events] == [
        ("option.prolonged", T0),
        ("option.expiring", T0),
    ]
    sent = lot_with(option(1, "p1", T0 + 10 * 60, noticed=True))
    assert [e.type for e in tr.prolong_option(sent, 1, inside, None, T0, rules)] == [
        "option.prolonged"
    ]
    later = lot_with(option(1, "p1", T0 + 10 * 60))
    assert [e.type for e in tr.prolong_option(later, 1, beyond, None, T0, rules)] == [
        "option.prolonged"
    ]
    assert later.options[0].noticed is False
