"""Reconciliation's judgement of one lot against GetLotStatus, without Redis or Koban."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from statecharts import transitions as tr
from statecharts.model import Lot, Rules
from statecharts.reconcile import mirror_status, reconcile_change
from statecharts.ticks import parse_duration

RULES = Rules(zone=ZoneInfo("Europe/Paris"), option_lifetime=parse_duration("P2D"))
TICK = 1_795_000_000 - 1_795_000_000 % 1800
NOW = TICK + 900


def _lot(*holders: str) -> Lot:
    lot = Lot("L1")
    for h in holders:
        tr.place_option(
            lot, option_id=f"id-{h}", holder=h, partner=None, placed_at=TICK - 3600, rules=RULES
        )
    lot.modified_at = TICK - 3600
    return lot


def _reasons(events: list[object]) -> list[object]:
    return [getattr(e, "data", {}).get("reason") for e in events]


def test_the_same_count_on_both_sides_is_agreed() -> None:
    lot = _lot("p1")
    first = lot.option_at(1)
    assert first is not None
    events, verdict = reconcile_change(lot, 1, 1, first.expiry, NOW, RULES, False)
    assert (events, verdict.outcome) == ([], "agreed")


def test_an_option_koban_no_longer_has_is_superseded_with_drift() -> None:
    lot = _lot("p1", "p2")
    events, verdict = reconcile_change(lot, 1, 1, None, NOW, RULES, False)
    assert verdict.outcome == "fixed"
    assert [o.holder for o in lot.options] == ["p1"] and lot.config == "one_option"
    assert "option.superseded" in [e.type for e in events]
    assert "option_count" in _reasons(events)


def test_more_options_in_koban_right_after_a_tick_is_deferred_not_drift() -> None:
    lot = _lot("p1")
    events, verdict = reconcile_change(lot, -3, 2, None, NOW, RULES, True)
    assert (events, verdict.outcome, verdict.keep_queued) == ([], "deferred", True)
    events, verdict = reconcile_change(lot, -3, 2, None, NOW, RULES, False)
    assert verdict.outcome == "fixed" and len(lot.options) == 2
    assert any(o.opaque for o in lot.options)


def test_a_lot_koban_does_not_know_is_recorded_not_changed() -> None:
    lot = _lot("p1")
    events, verdict = reconcile_change(lot, -1, 0, None, NOW, RULES, False)
    assert verdict.outcome == "unknown_lot" and _reasons(events) == ["koban_unknown_lot"]
    assert len(lot.options) == 1


def test_the_stock_sync_defers_options_koban_reports_while_it_may_lag() -> None:
    lot = _lot()
    events, outcome = mirror_status(lot, "one_option", "OPTION", NOW, NOW, RULES, True)
    assert (events, outcome.kind, outcome.queue) == ([], "deferred", True)
    events, outcome = mirror_status(lot, "reserved", "RESV", NOW, NOW, RULES, True)
    assert outcome.kind == "changed" and outcome.drift and lot.config == "reserved"
