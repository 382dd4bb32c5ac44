"""The tail of a lot's history read back for webhook replays (no Redis: the stored form is
built by the same `history_entry` the commit path uses)."""

from __future__ import annotations

from service.storage.events import history_entry
from service.storage.history import RecentHistory, already_recorded, parse_tail
from statecharts.drift import drift_event
from statecharts.model import DomainEvent


def _tail(*events: DomainEvent) -> bytes:
    return b"\n".join(history_entry(e, i, i) for i, e in enumerate(events, 1))


def test_the_cut_first_line_is_skipped_and_short_keys_are_expanded() -> None:
    placed = DomainEvent("option.placed", 10, {"optionId": "o1", "thirdGuid": "p1", "rank": 1})
    whole = _tail(DomainEvent("lot.imported", 5, {"program": "P1"}), placed)
    cut = whole[7:]  # a tail read by byte range starts inside an entry
    assert parse_tail(cut) == (("option.placed", {"optionId": "o1", "thirdGuid": "p1", "rank": 1}),)


def test_a_drift_event_already_in_the_tail_is_recognised_by_type_and_data() -> None:
    seen = drift_event(100, "koban", "option_not_placeable", thirdGuid="p1", webhook="x")
    recent = RecentHistory(_tail(seen))
    assert already_recorded(
        recent, drift_event(200, "koban", "option_not_placeable", thirdGuid="p1", webhook="x")
    )
    assert not already_recorded(
        recent, drift_event(100, "koban", "option_not_placeable", thirdGuid="p2", webhook="x")
    )


def test_a_tail_can_be_read_more_than_once_and_unreadable_lines_hold_nothing() -> None:
    placed = DomainEvent("option.placed", 10, {"optionId": "o1"})
    recent = RecentHistory(b"not json at all\n" + _tail(placed))
    assert list(recent) == [("option.placed", {"optionId": "o1"})]
    assert list(recent) == list(recent)
