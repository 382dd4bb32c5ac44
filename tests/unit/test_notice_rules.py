"""Expiring notices without Redis: the stored flag, `transitions.expiring_notices`, and the
fast notice transition proved equal to the generic one on random stored lots."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from service.storage.codec import decode_lot, encode_lot
from service.storage.store import LotStore
from service.usecases.notices import (
    generic_notice_transition,
    notice_transition,
)
from statecharts import transitions as tr
from statecharts.model import Intent, Lot, Option
from tests.support.instants import ts
from tests.support.loading import lot_with_option
from tests.support.rules import make_rules

HOUR = 3600


E = ts("2026-11-23T12:30:00Z")  # the options' expiry tick


def test_the_noticed_flag_is_the_12th_element_and_older_arrays_are_not_noticed() -> None:
    lot = lot_with_option("A", E, E - 86400, noticed=True)
    raw = encode_lot(lot)
    assert orjson.loads(raw.split(b"|", 1)[1])["o"][0][11] == 1
    assert decode_lot("A", raw).options[0].noticed is True
    d = orjson.loads(raw.split(b"|", 1)[1])
    d["o"][0] = d["o"][0][:11]  # as written before the flag existed
    older = decode_lot("A", b"1|" + orjson.dumps(d))
    assert older.options[0].noticed is False


def test_expiring_notices_is_pure_and_once_per_option() -> None:
    rules = make_rules()
    lot = lot_with_option("A", E, E - 86400)
    assert tr.expiring_notices(lot, E - 2 * HOUR - 1, rules) == []
    [event] = tr.expiring_notices(lot, E - 2 * HOUR, rules)
    assert (event.type, event.time) == ("option.expiring", E - 2 * HOUR)
    assert event.data == tr.option_data(lot.options[0], "sweep")
    assert lot.options[0].noticed
    assert tr.expiring_notices(lot, E, rules) == []  # once
    placed_late = lot_with_option("B", E, E - HOUR)  # placed inside the window
    [late] = tr.expiring_notices(placed_late, E, rules)
    assert late.time == E - HOUR  # the placement, not before it
    off = make_rules(expiring_notice=0)
    assert tr.expiring_notices(lot_with_option("C", E, 0), E, off) == []


class _NoRedis:
    def register_script(self, _: str) -> None:
        return None


instants = st.sampled_from([E - 3 * HOUR, E - 2 * HOUR - 1, E - 2 * HOUR, E - HOUR, E, E + 1800])


@st.composite
def stored_lots(draw: st.DrawFn) -> Lot:
    options = []
    for rank in range(1, draw(st.integers(0, 2)) + 1):
        expiry = draw(st.one_of(st.none(), st.sampled_from([E - 1800, E, E + 1800, E + 7200])))
        options.append(
            Option(
                id=f"o{rank}",
                rank=rank,
                holder=draw(st.sampled_from([None, f"p{rank}"])),
                partner=draw(st.sampled_from([None, "cgp"])),
                placed_at=draw(instants),
                deadline=None if expiry is None else expiry - 60,
                expiry=expiry,
                prolonged=draw(st.booleans()),
                source=draw(st.sampled_from(["koban", "estimated"])),
                original_deadline=None if expiry is None else expiry - 600,
                via_api=draw(st.booleans()),
                noticed=draw(st.booleans()),
            )
        )
    if len(options) == 2 and draw(st.booleans()):
        options.reverse()  # stored order is not always rank order
    config = {0: "free", 1: "one_option", 2: "two_options"}[len(options)]
    if options and draw(st.booleans()):
        config = "prereserved"
    lot = Lot("A-1", config=config, version=3, sequence=5, rev=7, options=options)
    lot.status = "PRERESV" if config == "prereserved" else "OPTION" if options else "LIBRE"
    lot.modified_at = draw(instants)
    if len(options) == 1 and draw(st.booleans()):
        lot.intents.append(Intent("i1", 2, "p9", None, E - 4 * HOUR))
    return lot


@settings(max_examples=300, deadline=None)
@given(lot=stored_lots(), upto=instants, notice=st.sampled_from([0, 1800, 2700, 7200]))
def test_the_fast_notice_transition_equals_the_generic_one(
    lot: Lot, upto: int, notice: int
) -> None:
    store = LotStore(_NoRedis(), "fast", make_rules(expiring_notice=notice))  # type: ignore[arg-type]
    raw = encode_lot(lot)
    fast = notice_transition(store, "A-1", raw, upto)
    generic = generic_notice_transition(store, "A-1", raw, upto)
    assert fast == generic
    if notice == 0:
        assert fast is None


@settings(max_examples=100, deadline=None)
@given(lot=stored_lots(), upto=instants)
def test_the_fast_path_on_arrays_written_before_the_flag(lot: Lot, upto: int) -> None:
    store = LotStore(_NoRedis(), "fast", make_rules())  # type: ignore[arg-type]
    for o in lot.options:
        o.noticed = False
    d = orjson.loads(encode_lot(lot).split(b"|", 1)[1])
    for a in d.get("o", ()):
        del a[11]
    raw = b"%d|" % lot.rev + orjson.dumps(d)
    fast = notice_transition(store, "A-1", raw, upto)
    generic = generic_notice_transition(store, "A-1", raw, upto)
    assert (fast is None) == (generic is None)
    if fast is not None and generic is not None:
        assert fast[1] == generic[1] and fast[0][10:] == generic[0][10:]  # same events
        assert decode_lot("A-1", fast[0][1]) == decode_lot("A-1", generic[0][1])
