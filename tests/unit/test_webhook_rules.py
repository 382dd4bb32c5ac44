"""Koban's webhooks as pure rule steps: no Redis, no HTTP (the wiring is in
tests/integration/test_webhooks*.py). Each test builds a lot, runs one step and reads what
it did."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from statecharts import transitions as tr
from statecharts.echoes import await_echo
from statecharts.model import Lot, Rules
from statecharts.ticks import ceil_tick, deadline_from_lifetime, latest_tick, parse_duration
from statecharts.webhook_rules import (
    Ctx,
    NeedTombstones,
    Seen,
    Tombstone,
    decide_webhook,
    option_cancelled,
    option_check_answer,
    option_expired,
    option_placed,
    option_prolonged,
    reservation_validated,
)

RULES = Rules(zone=ZoneInfo("Europe/Paris"), option_lifetime=parse_duration("P2D"))
T0 = int(datetime(2026, 3, 2, 9, 10, tzinfo=UTC).timestamp())  # a Monday, between ticks
WALL = 1_000_000


def ctx(now: int = T0, webhook: str = "option-placed", wall: int = WALL) -> Ctx:
    ids = (f"o{n}" for n in itertools.count(1))
    return Ctx(webhook, now, RULES, wall, lambda: next(ids))


def placed(lot: Lot, holder: str, at: int = T0 - 3600) -> Lot:
    tr.place_option(
        lot, option_id=f"id-{holder}", holder=holder, partner=None, placed_at=at, rules=RULES
    )
    return lot


def test_the_pre_check_answers_the_next_rank_until_the_lot_is_full() -> None:
    lot = Lot("L1")
    assert option_check_answer(None) == {"status": True, "rank": None}
    assert option_check_answer(lot) == {"status": True, "rank": 1}
    assert option_check_answer(placed(lot, "p1")) == {"status": True, "rank": 2}
    assert option_check_answer(placed(lot, "p2")) == {"status": False, "rank": None}


def test_option_placed_places_the_option_with_kobans_deadline() -> None:
    lot = Lot("L1")
    deadline = T0 + 2 * 86400
    applied = option_placed(ctx(), "p1", deadline, None)(lot, Seen(tombstones_read=True))
    assert applied.outcome == "placed" and not applied.drift
    own = lot.option_of("p1")
    assert own is not None and own.deadline == deadline and own.source == "koban"
    assert [e.type for e in applied.events] == ["option.placed"]


def test_option_placed_whose_expiry_tick_passed_is_ignored() -> None:
    lot = Lot("L1")
    applied = option_placed(ctx(), "p1", latest_tick(T0), None)(lot, Seen())
    assert applied.outcome == "stale: expiry tick passed"
    assert lot.options == [] and applied.events == []


def test_option_placed_for_an_option_that_ended_since_is_ignored() -> None:
    ended = T0 - 600
    deadline = deadline_from_lifetime(ended, RULES.option_lifetime, RULES.zone) - 3600
    seen = Seen((Tombstone(deadline, ended, "old"),), (), True)
    applied = option_placed(ctx(), "p1", deadline, None)(Lot("L1"), seen)
    assert applied.outcome == "stale: option ended"


def test_option_placed_again_is_a_replay_and_a_new_date_is_learned() -> None:
    lot = Lot("L1")
    deadline = T0 + 2 * 86400
    option_placed(ctx(), "p1", deadline, None)(lot, Seen())
    assert option_placed(ctx(), "p1", deadline, None)(lot, Seen()).outcome == "replay"
    learned = option_placed(ctx(), "p1", deadline + 3600, None)(lot, Seen())
    assert learned.outcome == "deadline learned"
    assert [e.type for e in learned.events] == ["option.deadline_confirmed"]


def test_option_placed_on_a_full_lot_is_drift_and_places_nothing() -> None:
    lot = placed(placed(Lot("L1"), "p1"), "p2")
    applied = option_placed(ctx(), "p3", T0 + 86400, None)(lot, Seen())
    assert applied.drift and applied.outcome == "drift"
    assert [e.data["reason"] for e in applied.events] == ["option_not_placeable"]
    assert {o.holder for o in lot.options} == {"p1", "p2"}


def test_a_cancellation_echoing_our_own_undo_is_a_replay() -> None:
    lot = placed(Lot("L1"), "p1")
    await_echo(lot, "option_cancelled", "p1", None, wall_now=WALL)
    step = option_cancelled(ctx(webhook="option-cancelled"), "p1")
    assert step(lot, Seen()).outcome == "replay: echo of our Undo"
    assert lot.option_of("p1") is not None and lot.echoes == []
    assert step(lot, Seen()).outcome == "cancelled"
    assert lot.option_of("p1") is None


def test_an_echo_older_than_its_ttl_is_not_taken() -> None:
    lot = placed(Lot("L1"), "p1")
    await_echo(lot, "option_cancelled", "p1", None, wall_now=WALL - 901)
    applied = option_cancelled(ctx(webhook="option-cancelled"), "p1")(lot, Seen())
    assert applied.outcome == "cancelled"


def test_a_prolongation_the_local_rules_refuse_is_forced_with_drift() -> None:
    lot = placed(Lot("L1"), "p1")
    own = lot.option_of("p1")
    assert own is not None and own.deadline is not None
    earlier = own.deadline - 86400  # not a later tick: the local rules refuse it
    applied = option_prolonged(ctx(webhook="option-prolonged"), "p1", earlier)(lot, Seen())
    assert applied.drift and applied.outcome == "prolonged (forced)"
    own = lot.option_of("p1")  # the refused attempt was undone on a copy: read it again
    assert own is not None
    assert own.deadline == earlier and own.expiry == ceil_tick(earlier) and own.prolonged
    assert applied.events[0].data.get("forced") is True


def test_option_expired_asks_for_the_tombstones_only_when_it_needs_them() -> None:
    lot = placed(Lot("L1"), "p1", at=latest_tick(T0) - 7200)
    step = option_expired(ctx(webhook="option-expired"), "p1")
    with pytest.raises(NeedTombstones):
        step(lot, Seen())
    applied = step(lot, Seen(tombstones_read=True))
    assert applied.outcome == "expired" and applied.drift
    assert lot.option_of("p1") is None


def test_option_expired_for_an_option_placed_after_the_latest_tick_is_ignored() -> None:
    lot = placed(Lot("L1"), "p1", at=latest_tick(T0) + 60)
    applied = option_expired(ctx(webhook="option-expired"), "p1")(lot, Seen())
    assert applied.outcome == "stale: placed after Koban's latest tick"


def test_a_validation_seen_reserving_the_lot_before_is_a_replay() -> None:
    recent = (("lot.reserved", {"prereservationGuid": "pre-1"}),)
    step = reservation_validated(ctx(webhook="reservation-validated"), "p1", "pre-1")
    applied = step(Lot("L1"), Seen(recent=recent))
    assert applied.outcome == "replay: withdrawn since"
    other = reservation_validated(ctx(webhook="reservation-validated"), "p1", "pre-2")
    lot = Lot("L1")
    assert other(lot, Seen(recent=recent)).drift and lot.config == "reserved"


def test_a_refused_step_leaves_the_lot_as_it_was_and_is_drift() -> None:
    lot = placed(Lot("L1"), "p1")
    before = repr(lot)

    def refusing(lot: Lot, seen: Seen) -> object:
        lot.options[0].holder = "changed"
        tr.cancel_option(lot, 2, None, T0, RULES)  # no option at rank 2: refused
        raise AssertionError("unreachable")

    applied = decide_webhook(refusing, lot, Seen(), ctx(), "p1")  # type: ignore[arg-type]
    assert repr(lot) == before
    assert applied.drift and applied.events[0].data["reason"] == "refused_locally"
