"""The sweep's pipelined driver: a lot written by someone else between read and apply is
swept again (once), a flushed script cache is reloaded, other lots are not held up; its
commands, chunks and remembered decisions.
"""

from __future__ import annotations

from typing import Any

import hiredis
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.storage.resp import pack
from service.storage.store import LotStore
from service.storage.sweep_script import Plan
from service.usecases import sweep
from service.usecases.fast_expiry import ExpiryDecisions
from statecharts import lot_chart
from statecharts.decide import CHART, COMPILED, DecisionEngine
from statecharts.errors import RuleViolation
from tests.support.stored_lots import TICK

# Every test here on a Redis backend also runs on the local Redis Cluster.
pytestmark = pytest.mark.cluster


# --- the driver ---------------------------------------------------------------------------


async def _due_lots(store: LotStore, n: int, two: bool = False) -> list[str]:
    codes = [f"L{i}" for i in range(n)]
    t0 = TICK - 2 * 86400
    for i, code in enumerate(codes):
        await store.import_lot(code, t0)
        await store.place_local(code, f"p{i}", None, t0)
        if two:
            await store.place_local(code, f"q{i}", None, t0 + 3600)
    return codes


async def _expired(store: LotStore) -> list[str]:
    entries = await store.redis.xrange(store.keys.events)
    return [
        orjson.loads(f[b"ce"])["data"]["optionId"]
        for _, f in entries
        if orjson.loads(f[b"ce"])["type"] == "koban.option.expired"
    ]


async def test_a_lot_written_between_read_and_apply_is_swept_again(
    store: LotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = await _due_lots(store, 12, two=True)
    real_send = sweep._Sweeper.send_apply
    touched: list[str] = []
    revs: list[int] = []

    async def send_after_a_write(
        self: sweep._Sweeper,
        plans: list[Plan],
        command: bytes | None = None,
    ) -> None:
        if not touched:  # a write (one that only bumps the revision) lands on a lot first
            touched.append(plans[1].extcode)
            raw = await store.redis.get(store.keys.lot(touched[0]))
            rev, rest = raw.split(b"|", 1)
            await store.redis.set(store.keys.lot(touched[0]), b"%d|%s" % (int(rev) + 1, rest))
            revs.append(int(rev))
        await real_send(self, plans, command)

    monkeypatch.setattr(sweep._Sweeper, "send_apply", send_after_a_write)
    report = await sweep.sweep_expiries(store, TICK, batch=4)
    assert report.retried == 1 and report.expired == 12 and report.promoted == 12
    expired = await _expired(store)
    assert len(expired) == len(set(expired)) == 12
    lot = await store.load(touched[0])
    assert lot is not None and lot.rev == revs[0] + 2 and [o.rank for o in lot.options] == [1]
    assert (await sweep.sweep_expiries(store, TICK)).expired == 0
    assert len(codes) == 12


async def test_a_flushed_script_cache_is_reloaded(
    store: LotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _due_lots(store, 9)
    real_send = sweep._Sweeper.send_apply
    calls = 0

    async def flush_then_send(
        self: sweep._Sweeper,
        plans: list[Plan],
        command: bytes | None = None,
    ) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            await store.redis.script_flush()
        await real_send(self, plans, command)

    monkeypatch.setattr(sweep._Sweeper, "send_apply", flush_then_send)
    report = await sweep.sweep_expiries(store, TICK, batch=2)
    assert report.expired == 9
    expired = await _expired(store)
    assert len(expired) == len(set(expired)) == 9


@given(
    st.lists(
        st.one_of(st.binary(max_size=3000), st.text(max_size=40), st.integers(-(2**63), 2**63 - 1)),
        min_size=1,
        max_size=30,
    )
)
def test_commands_are_packed_as_hiredis_packs_them(args: list[Any]) -> None:
    assert pack(args) == hiredis.pack_command(tuple(args))


def test_chunks_hold_at_most_batch_index_entries() -> None:
    members = [b"A/1", b"A/2", b"B/1", b"C/1", b"C/2", b"D/x/1", b"junk", b"E/1"]
    lots, malformed = sweep.chunks(members, 3)
    assert lots == [["A", "B"], ["C", "D/x"], ["E"]]
    assert malformed == [b"junk"]
    assert sweep.chunks(members[:2], 1)[0] == [["A"]]  # one lot is never split


async def test_an_index_entry_naming_no_lot_is_dropped(store: LotStore) -> None:
    await _due_lots(store, 2)
    await store.redis.zadd(store.keys.expiries, {"junk": TICK - 1})
    report = await sweep.sweep_expiries(store, TICK)
    assert report.expired == 2 and report.repaired == 1
    assert await store.redis.zcard(store.keys.expiries) == 0


def test_remembered_decisions_are_the_charts_and_an_unrememberable_engine_is_asked_every_time() -> (
    None
):
    decisions = ExpiryDecisions(COMPILED)
    for config in lot_chart.CONFIGS:
        for d1, d2 in [(False, False), (False, True), (True, False), (True, True)]:
            cases = [("expire", d1, d2)] + ([("promote", False, False)] if not d1 else [])
            for event, a, b in cases:
                facts = {"rank1_due": a, "rank2_due": b} if event == "expire" else None
                for _ in range(2):  # the second answer comes from memory
                    try:
                        want: Any = lot_chart.run_chart(config, event, facts)
                    except RuleViolation as e:
                        want = e.code
                    try:
                        got: Any = decisions.target(config, event, a, b)
                    except RuleViolation as e:
                        got = e.code
                    assert got == want, (config, event, a, b)
    asked: list[str] = []

    def engine(config: str, event: str, facts: Any = None) -> str:
        asked.append(config)
        return "free"

    each_time = ExpiryDecisions(DecisionEngine(engine, rememberable=False))
    assert [each_time.target("one_option", "expire", True, False) for _ in range(3)] == ["free"] * 3
    assert asked == ["one_option"] * 3


async def test_the_sweep_decides_with_the_engine_it_is_given(store: LotStore) -> None:
    """Both paths ask the engine passed in: the fast one (a lot with one option) and the
    generic one (a lot with a pending intent besides its option)."""
    await _due_lots(store, 3)
    await store.reserve_placement("L0", "r0", None, TICK - 86400)
    asked: list[tuple[str, str]] = []

    def chart(config: str, event: str, facts: Any = None) -> str:
        asked.append((config, event))
        return CHART.decide(config, event, facts)

    report = await sweep.sweep_expiries(store, TICK, engine=DecisionEngine(chart, False))
    assert report.expired == 3 and report.fast == 2
    assert asked.count(("one_option", "expire")) == 3
