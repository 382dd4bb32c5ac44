"""The sweep's shortcuts are proved equal to the general path.

1. `fast_expiry` (decides a common-shaped lot on its stored JSON and writes its events from
   byte templates) gives exactly the plan the generic path gives (decode,
   `transitions.expire_due`, `store.transition`), on random lots — or declines and leaves
   the lot to the generic path.
2. The templates are `service.storage.events`' own output: checked on random option values, and
   when the builders change shape the fast path steps aside instead of diverging.

`sweep.lua` against `commit.lua`: test_sweep_fast_script.py; the pipelined driver:
test_sweep_fast_driver.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.storage.codec import decode_lot, decode_option, encode_lot
from service.storage.events import cloud_event, history_entry
from service.storage.store import LotStore
from service.storage.sweep_script import Plan
from service.usecases import event_templates
from service.usecases.event_templates import EXPIRED, PROMOTED, option_pieces, time_json
from service.usecases.expiry_plans import generic_expiry, plan_expiry, plan_of
from service.usecases.fast_expiry import fast_expiry
from statecharts import lot_data
from statecharts import transitions as tr
from statecharts.model import DomainEvent, Lot, Option, Prereservation
from tests.support.rules import make_rules
from tests.support.stored_lots import TICK, stored


class _NoRedis:
    def register_script(self, _: str) -> None:
        return None


# Every test here on a Redis backend also runs on the local Redis Cluster.
pytestmark = pytest.mark.cluster


def _store(clock: str, tenant: str = "fast") -> LotStore:
    return LotStore(_NoRedis(), tenant, make_rules(rank2_clock=clock))  # type: ignore[arg-type]


def _normal(plan: Plan) -> tuple[Any, ...]:
    """Count deltas may come per option or summed per field; compare the sums."""
    deltas: dict[str, int] = {}
    c = plan.count_deltas
    for f, d in zip(c[0::2], c[1::2], strict=True):
        deltas[f] = deltas.get(f, 0) + d
    return (*plan[:6], sorted((f, d) for f, d in deltas.items() if d), *plan[7:])


def _generic(store: LotStore, code: str, raw: bytes, tick: int) -> Plan | None:
    result = generic_expiry(store, code, raw, tick)
    if result is None:
        return None
    return plan_of(result[0], result[1], raw, tick, None, store.history_cap)


# The random lots include shapes the fast path leaves to the generic one on purpose (nothing
# due, custom statuses, pending intents); the floor sits well below the share it decides, so
# only a fast path that stopped deciding (or declined nearly everything) fails it.
MIN_FAST_SHARE = 0.125


def test_fast_path_equals_generic_path() -> None:
    """On random stored lots the fast path gives the generic path's plan, or declines, and
    only for the shapes meant for the generic path. It must decide most of them itself: a
    fast path that declined everything would pass the comparison while proving nothing, so
    the examples it decided are counted."""
    decided: Counter[bool] = Counter()

    @settings(max_examples=600, deadline=None, database=None)
    @given(
        raw=stored(custom=True),
        clock=st.sampled_from(["own", "restart"]),
        tick=st.sampled_from([TICK, TICK + 1800, TICK - 1800]),
        tenant=st.sampled_from(["fast", "t%s", 'te"n']),
    )
    def agrees(raw: bytes, clock: str, tick: int, tenant: str) -> None:
        store = _store(clock, tenant)
        fast = fast_expiry(store, "A-1", raw, tick)
        decided[fast is not None] += 1
        if fast is None:
            # declined: the generic path decides (what the store tests cover), but only
            # for the shapes the fast path is meant to leave to it
            assert _left_to_the_generic_path(raw, tick, clock)
            return
        generic = _generic(store, "A-1", raw, tick)
        assert generic is not None
        assert _normal(fast) == _normal(generic)

    agrees()
    total = decided[True] + decided[False]
    print(f"\nfast path decided {decided[True]} of {total} random lots")
    assert decided[True] >= MIN_FAST_SHARE * total, decided


def _left_to_the_generic_path(raw: bytes, tick: int, clock: str) -> bool:
    """The shapes `fast_expiry` declines: nothing due, a configuration or a stored field it
    does not handle (a custom status, pending intents, echoes), one option id twice, due
    options on several ticks, or a promotion that restarts the rank 2 clock."""
    d = orjson.loads(raw[raw.index(b"|") + 1 :])
    lot = decode_lot("A-1", raw)
    due = [o for o in lot.options if o.expiry is not None and o.expiry <= tick]
    kept = [o for o in lot.options if o not in due]
    return (
        not due
        or lot.config not in ("one_option", "two_options", "prereserved")
        or bool({"s", "i", "e"} & d.keys())
        or len({o.id for o in lot.options}) < len(lot.options)
        or len({o.expiry for o in due}) > 1
        or (clock == "restart" and any(o.rank == 2 for o in kept))
    )


def test_fast_path_takes_the_common_shapes() -> None:
    store = _store("own")
    one = Lot("A", config="one_option", status="OPTION", rev=1, version=1, sequence=1)
    one.options.append(Option("o1", 1, "p1", None, 0, TICK - 5, TICK, via_api=True))
    two = Lot("B", config="two_options", status="OPTION", rev=1, version=1, sequence=1)
    two.options += [
        Option("o1", 1, "p1", None, 0, TICK - 5, TICK),
        Option("o2", 2, "p2", None, 0, TICK + 3000, TICK + 3600),
    ]
    both = Lot("C", config="two_options", status="OPTION", rev=1, version=1, sequence=1)
    both.options += [
        Option("o1", 1, "p1", None, 0, TICK - 5, TICK),
        Option("o2", 2, "p2", "cgp", 0, TICK - 9, TICK),
    ]
    twice = Lot("D", config="two_options", status="OPTION", rev=1, version=1, sequence=1)
    twice.options += [  # corrupt: one id twice; only the generic path's view says what then
        Option("o1", 1, "p1", None, 0, TICK - 5, TICK),
        Option("o1", 2, "p2", None, 0, TICK + 3000, TICK + 3600),
    ]
    assert fast_expiry(store, "D", encode_lot(twice), TICK) is None
    second_due = Lot("E", config="two_options", status="OPTION", rev=4, version=2, sequence=6)
    second_due.options += [
        Option("o1", 1, "p1", "cgp", 0, TICK + 3000, TICK + 3600, prolonged=True),
        Option("o2", 2, None, None, 0, TICK - 9, TICK, source="koban"),  # opaque
    ]
    held = Lot("F", config="prereserved", status="PRERESV", rev=2, version=2, sequence=3)
    held.prereservation = Prereservation("p9", None, 100, 10, TICK - 99)
    held.options.append(Option("o1", 1, "p1", None, 0, TICK - 5, TICK, via_api=True))
    for lot in (one, two, both, second_due, held):
        plan = fast_expiry(store, lot.extcode, encode_lot(lot), TICK)
        generic = _generic(store, lot.extcode, encode_lot(lot), TICK)
        assert plan is not None and generic is not None
        assert _normal(plan) == _normal(generic)


# --- the templates ------------------------------------------------------------------------


times = st.one_of(st.none(), st.integers(0, 4_000_000_000))
texts = st.text(max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    a=st.tuples(
        texts,
        st.integers(-1, 3),
        st.one_of(st.none(), texts),
        st.one_of(st.none(), texts),
        times,
        times,
        times,
        st.sampled_from([0, 1]),
        st.sampled_from([0, 1]),
    ),
    code=texts,
    tenant=st.sampled_from(["bench", "a%b", 'q"', "\u00e9"]),
    seq=st.integers(0, 10**13),
    version=st.integers(0, 10**6),
    at=st.integers(0, 4_000_000_000),
)
def test_templates_write_what_events_py_writes(
    a: tuple[Any, ...], code: str, tenant: str, seq: int, version: int, at: int
) -> None:
    t = event_templates.templates(tenant)
    assert t is not None
    stored_option = [*a, None, 0]
    for type_ in (EXPIRED, PROMOTED):
        event = DomainEvent(type_, at, tr.option_data(decode_option(stored_option), "sweep"))
        wire, short = option_pieces(stored_option)
        cj = orjson.dumps(code)
        cloud = t.cloud[type_] % (cj[:-1], seq, cj, time_json(at), cj, seq, version, *wire)
        assert cloud == cloud_event(tenant, code, event, seq, version)
        assert t.history[type_] % (seq, version, at, *short) == history_entry(event, seq, version)


def test_fast_path_steps_aside_when_events_change_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    real = lot_data.option_data

    def with_more(o: Option, actor: Any, **extra: object) -> dict[str, object]:
        return {**real(o, actor, **extra), "noticed": False}

    monkeypatch.setattr(lot_data, "option_data", with_more)
    monkeypatch.setattr(event_templates, "_TEMPLATES", {})
    assert event_templates.templates("fast") is None
    lot = Lot("A", config="one_option", status="OPTION", rev=1, version=1, sequence=1)
    lot.options.append(Option("o1", 1, "p1", None, 0, TICK - 5, TICK))
    store = _store("own")
    assert fast_expiry(store, "A", encode_lot(lot), TICK) is None
    plan = plan_expiry(store, "A", encode_lot(lot), TICK)
    assert plan is not None and b'"noticed":false' in plan.stream[0]
