"""The sweep's shortcuts are proved equal to the general path.

1. `fast_expiry` (decides a common-shaped lot on its stored JSON and writes its events from
   byte templates) gives exactly the plan the generic path gives (decode,
   `transitions.expire_due`, `store.transition`), on random lots — or declines and leaves
   the lot to the generic path.
2. The templates are `service.storage.events`' own output: checked on random option values, and
   when the builders change shape the fast path steps aside instead of diverging.
3. `sweep.lua`, fed by the sweep, leaves Redis exactly as `commit.lua` leaves it for the
   generic path's transitions: lot values, indexes, counts, tombstones, stream entries and
   histories (trimmed at the cap), on random tenants.
4. The pipelined driver: a lot written by someone else between read and apply is swept
   again (once), a flushed script cache is reloaded, other lots are not held up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import hiredis
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from service.storage.codec import decode_lot, decode_option, encode_lot
from service.storage.events import cloud_event, history_entry
from service.storage.redis_client import connect
from service.storage.resp import pack
from service.storage.store import LotStore, view
from service.storage.sweep_script import Plan
from service.usecases import event_templates, sweep
from service.usecases.event_templates import EXPIRED, PROMOTED, option_pieces, time_json
from service.usecases.expiry_plans import generic_expiry, plan_expiry, plan_of
from service.usecases.fast_expiry import ExpiryDecisions, fast_expiry
from statecharts import lot_chart, lot_data
from statecharts import transitions as tr
from statecharts.decide import CHART, COMPILED, DecisionEngine
from statecharts.errors import RuleViolation
from statecharts.model import DomainEvent, Lot, Option, Prereservation
from tests.support.rules import make_rules
from tests.support.stored_lots import TICK, stored
from tests.support.tenant_keys import delete_tenant_keys


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


# --- sweep.lua against commit.lua, in a real Redis ---------------------------------------------


async def _state(redis: Redis, store: LotStore) -> dict[str, Any]:
    """Every key of the tenant, with stream entries stripped of their ids."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(match=store.keys.prefix + "*"):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out[key.decode()] = await redis.get(key)
        elif kind == "hash":
            out[key.decode()] = await redis.hgetall(key)
        elif kind == "zset":
            out[key.decode()] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":  # lots interleave differently; each lot's order must hold
            by_lot: dict[str, list[bytes]] = {}
            for _, fields in await redis.xrange(key):
                by_lot.setdefault(orjson.loads(fields[b"ce"])["subject"], []).append(fields[b"ce"])
            out[key.decode()] = by_lot
    return out


async def _snapshot(redis: Redis, store: LotStore) -> dict[bytes, bytes]:
    return {k: await redis.dump(k) async for k in redis.scan_iter(match=store.keys.prefix + "*")}


async def _restore(redis: Redis, store: LotStore, snapshot: dict[bytes, bytes]) -> None:
    keys = [k async for k in redis.scan_iter(match=store.keys.prefix + "*")]
    if keys:
        await redis.delete(*keys)
    for key, dumped in snapshot.items():
        await redis.restore(key, 0, dumped)


async def _via_commit_script(redis: Redis, store: LotStore, codes: list[str], at: int) -> None:
    raws = await redis.mget([store.keys.lot(c) for c in codes])
    transitions = [
        t[0]
        for code, raw in zip(codes, raws, strict=True)
        if raw is not None and (t := generic_expiry(store, code, raw, at)) is not None
    ]
    if transitions:
        assert await store.commit(transitions, mode="each") == [1] * len(transitions)


async def test_sweep_script_equals_commit_script(redis: Redis, tenant: str) -> None:
    store = LotStore(redis, tenant, make_rules())
    codes = [f"L{i}" for i in range(12)]
    t0 = TICK - 2 * 86400
    for i, code in enumerate(codes):
        await store.import_lot(code, t0)
        await store.place_local(code, f"p{i}", "cgp", t0 + 60)
        if i % 3 == 0:
            await store.place_local(code, f"q{i}", None, t0 + 120 + i * 1800)
        if i % 3 != 0 and i % 2 == 1:  # a pending intent behind one option
            await store.reserve_placement(code, f"r{i}", None, t0 + 200)
    snapshot = await _snapshot(redis, store)

    at = TICK + 4 * 1800  # every rank 1 due, some rank 2 not yet
    report = await sweep.sweep_expiries(store, at, batch=5)
    assert report.expired > 0 and report.fast > 0
    via_script = await _state(redis, store)

    await _restore(redis, store, snapshot)
    await _via_commit_script(redis, store, codes, at)
    via_commit = await _state(redis, store)
    assert via_script == via_commit
    history = await store.history("L0")
    assert [e["type"] for e in history][-1] == "koban.option.expired"
    assert len(via_script[store.keys.events]) == len(codes)


def _history_line(seq: int) -> bytes:
    e = DomainEvent("option.placed", TICK - 86400, {"optionId": "x", "actor": "api"})
    return history_entry(e, seq, seq)


async def _write_tenant(
    redis: Redis, store: LotStore, raws: dict[str, bytes], extra: dict[str, int], lines: int
) -> None:
    """Lots as stored, with the indexes and counts they imply (plus some counts held on
    other lots) and histories of `lines` entries each."""
    counts: dict[str, int] = dict(extra)
    index: dict[str, int] = {}
    for code, raw in raws.items():
        await redis.set(store.keys.lot(code), raw)
        v = view(decode_lot(code, raw))
        index.update(v.expiries)
        for f, n in v.counts.items():
            counts[f] = counts.get(f, 0) + n
        if lines:
            await redis.set(
                store.keys.history(code), b"\n".join(_history_line(i) for i in range(lines))
            )
        await redis.zadd(store.keys.lots, {code: TICK - 99})
    if index:
        await redis.zadd(store.keys.expiries, index)
    if counts:
        await redis.hset(store.keys.counts, mapping=counts)


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    clock=st.sampled_from(["own", "restart"]),
    batch=st.sampled_from([1, 2, 3, 500]),
    cap=st.sampled_from([1, 2, 3, 500]),
    lines=st.integers(0, 4),
    extra=st.dictionaries(st.sampled_from(["p:p1", "p:p2", "u:api", 'p:p"3']), st.integers(0, 2)),
)
def test_sweep_leaves_redis_as_the_commit_script_does(
    redis_url: str,
    data: st.DataObject,
    clock: str,
    batch: int,
    cap: int,
    lines: int,
    extra: dict[str, int],
) -> None:
    codes = [f"L{i}" for i in range(data.draw(st.integers(1, 6)))]
    raws = {code: data.draw(stored(code)) for code in codes}
    at = data.draw(st.sampled_from([TICK, TICK + 1800]))

    async def run() -> None:
        redis = connect(redis_url)
        tenant = "s" + uuid.uuid4().hex[:12]
        store = LotStore(redis, tenant, make_rules(rank2_clock=clock), history_cap=cap)
        try:
            await _write_tenant(redis, store, raws, extra, lines)
            snapshot = await _snapshot(redis, store)
            report = await sweep.sweep_expiries(store, at, batch=batch, window=batch * 2)
            via_script = await _state(redis, store)
            assert report.repaired == 0 and report.retried == 0
            await _restore(redis, store, snapshot)
            await _via_commit_script(redis, store, codes, at)
            assert via_script == await _state(redis, store)
        finally:
            await redis.aclose()
            delete_tenant_keys(redis_url, tenant)

    asyncio.run(run())


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
