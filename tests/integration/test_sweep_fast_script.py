"""The sweep's shortcuts are proved equal to the general path, in a real Redis: `sweep.lua`,
fed by the sweep, leaves Redis exactly as `commit.lua` leaves it for the generic path's
transitions: lot values, indexes, counts, tombstones, stream entries and histories (trimmed
at the cap), on random tenants.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from service.storage.codec import decode_lot
from service.storage.events import history_entry
from service.storage.redis_client import connect
from service.storage.store import LotStore, view
from service.usecases import sweep
from service.usecases.expiry_plans import generic_expiry
from statecharts.model import DomainEvent
from tests.support.rules import make_rules
from tests.support.stored_lots import TICK, stored
from tests.support.tenant_keys import delete_tenant_keys

# Every test here on a Redis backend also runs on the local Redis Cluster.
pytestmark = pytest.mark.cluster


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
