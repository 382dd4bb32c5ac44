"""The sweep's two shortcuts are proved equal to the general path.

1. `fast_expiry` (decides a common-shaped lot on its stored JSON) gives exactly the
   transition `generic_expiry` (decode, `transitions.expire_due`, `store.transition`) gives,
   on random lots — or declines and leaves it to the generic path.
2. The sweep's MULTI applier leaves Redis exactly as `commit.lua` does for the same
   transitions.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from service import sweep
from service.codec import encode_lot
from service.store import LotStore
from statecharts.model import Intent, Lot, Option
from tests.conftest import make_rules

TICK = 1_795_000_000 - 1_795_000_000 % 1800


class _NoRedis:
    def register_script(self, _: str) -> None:
        return None


def _store(clock: str) -> LotStore:
    return LotStore(_NoRedis(), "fast", make_rules(rank2_clock=clock))  # type: ignore[arg-type]


def _normal(transition: list[Any]) -> list[Any]:
    """Count deltas come in dict order; compare them as a set of (field, delta, limit)."""
    out = list(transition)
    c = transition[6]
    out[6] = sorted(zip(c[0::3], c[1::3], c[2::3], strict=True))
    return out


offsets = st.sampled_from([-3600, -1800, -1, 0, 1, 1800, 3600])


@st.composite
def lots(draw: st.DrawFn) -> Lot:
    n = draw(st.integers(0, 2))
    options = []
    for rank in range(1, n + 1):
        opaque = draw(st.booleans()) and draw(st.booleans())
        deadline = None if opaque and rank == 2 else TICK + draw(offsets) - 60
        options.append(
            Option(
                id=f"o{rank}",
                rank=rank,
                holder=None if opaque else f"p{rank}",
                partner=draw(st.sampled_from([None, "cgp"])),
                placed_at=TICK - 86400,
                deadline=deadline,
                expiry=None if deadline is None else deadline - deadline % 1800 + 1800,
                prolonged=draw(st.booleans()),
                source=draw(st.sampled_from(["koban", "estimated"])),
                original_deadline=deadline,
                via_api=draw(st.booleans()),
            )
        )
    config = {0: "free", 1: "one_option", 2: "two_options"}[n]
    if n and draw(st.booleans()):
        config = "prereserved"
    lot = Lot("A-1", config=config, version=3, sequence=5, rev=7, options=options)
    lot.status = {"prereserved": "PRERESV", "free": "LIBRE"}.get(config, "OPTION")
    if n == 1 and draw(st.booleans()):
        lot.intents.append(Intent("i1", 2, "p9", None, TICK - 10))
    if draw(st.booleans()):
        lot.program = "P1"
    return lot


@settings(max_examples=300, deadline=None)
@given(lot=lots(), clock=st.sampled_from(["own", "restart"]))
def test_fast_path_equals_generic_path(lot: Lot, clock: str) -> None:
    store = _store(clock)
    raw = encode_lot(lot)
    fast = sweep.fast_expiry(store, lot.extcode, raw, TICK)
    generic = sweep.generic_expiry(store, lot.extcode, raw, TICK)
    if fast is None:
        return  # declined: the generic path decides (and is what the store tests cover)
    assert generic is not None
    assert _normal(fast[0]) == _normal(generic[0])
    assert fast[1] == generic[1]


def test_fast_path_takes_the_common_shapes() -> None:
    store = _store("own")
    one = Lot("A", config="one_option", status="OPTION", rev=1, version=1, sequence=1)
    one.options.append(Option("o1", 1, "p1", None, 0, TICK - 5, TICK, via_api=True))
    two = Lot("B", config="two_options", status="OPTION", rev=1, version=1, sequence=1)
    two.options += [
        Option("o1", 1, "p1", None, 0, TICK - 5, TICK),
        Option("o2", 2, "p2", None, 0, TICK + 3000, TICK + 3600),
    ]
    for lot in (one, two):
        assert sweep.fast_expiry(store, lot.extcode, encode_lot(lot), TICK) is not None


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


async def test_multi_applier_equals_commit_script(redis: Redis, tenant: str) -> None:
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
    snapshot = {
        k: await redis.dump(k) async for k in redis.scan_iter(match=store.keys.prefix + "*")
    }

    at = TICK + 4 * 1800  # every rank 1 due, some rank 2 not yet
    report = await sweep.expire_due(store, at, batch=5)
    assert report.expired > 0 and report.fast > 0
    via_multi = await _state(redis, store)

    await redis.delete(*[k async for k in redis.scan_iter(match=store.keys.prefix + "*")])
    for key, dumped in snapshot.items():
        await redis.restore(key, 0, dumped)
    raws = await redis.mget([store.keys.lot(c) for c in codes])
    transitions = [
        t[0]
        for code, raw in zip(codes, raws, strict=True)
        if (t := sweep.generic_expiry(store, code, raw, at)) is not None
    ]
    assert await store.commit(transitions, mode="each") == [1] * len(transitions)
    via_script = await _state(redis, store)
    assert via_multi == via_script
    history = await store.history("L0")
    assert [e["type"] for e in history][-1] == "koban.option.expired"
    assert len(via_multi[store.keys.events]) == len(codes)
