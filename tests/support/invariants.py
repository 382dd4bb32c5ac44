"""The core invariants of a tenant, read back from Redis (no tests here).

What it sets up and checks, in detail: docs/testing.md, `invariants.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, cast

import orjson

from service.storage.keys import API_USER_FIELD, prospect_field
from service.storage.store import LotStore
from statecharts.model import Lot
from statecharts.transitions import occupancy_invariant


async def lot_codes(store: LotStore) -> list[str]:
    """Every lot of the tenant (its `lots` index)."""
    members = cast(list[bytes], await store.redis.zrange(store.keys.lots, 0, -1))
    return sorted(m.decode() for m in members)


def check_history(lot: Lot, history: list[dict[str, Any]], cap: int | None = None) -> None:
    """A lot's history against its sequence and version counters."""
    first = 1 if cap is None else max(1, lot.sequence - cap + 1)
    sequences = [int(e["sequence"]) for e in history]
    assert sequences == list(range(first, lot.sequence + 1)), (lot.extcode, sequences)
    versions = [int(e["lotversion"]) for e in history]
    assert versions == sorted(versions), (lot.extcode, versions)
    if first == 1:
        # every version bump has at least one event carrying it, and no event without it
        assert sorted(set(versions)) == list(range(1, lot.version + 1)), (lot.extcode, versions)
    elif history:
        assert versions[-1] == lot.version, (lot.extcode, versions[-1], lot.version)


async def check_tenant(
    store: LotStore,
    codes: Iterable[str] | None = None,
    *,
    max_per_prospect: int | None = 3,
    streams: bool = True,
) -> dict[str, Lot]:
    """Assert every invariant of the module doc over `codes` (default: every lot of the
    tenant, which the tenant-wide checks need); returns the lots read."""
    keys = store.keys
    chosen = list(codes) if codes is not None else await lot_codes(store)
    counts: Counter[str] = Counter()
    expiries: dict[bytes, float] = {}
    intents: set[bytes] = set()
    lots: dict[str, Lot] = {}
    for code in chosen:
        lot = await store.load(code)
        assert lot is not None, code
        lots[code] = lot
        assert occupancy_invariant(lot) == [], (code, occupancy_invariant(lot))
        for o in lot.options:
            if o.holder:
                counts[prospect_field(o.holder)] += 1
            if o.via_api:
                counts[API_USER_FIELD] += 1
            if o.expiry is not None:
                expiries[f"{code}/{o.id}".encode()] = float(o.expiry)
        for i in lot.intents:
            counts[prospect_field(i.holder)] += 1
            counts[API_USER_FIELD] += 1
            intents.add(f"{code}/{i.id}".encode())
        check_history(lot, await store.history(code), store.history_cap)
    raw_counts = cast(dict[bytes, bytes], await store.redis.hgetall(keys.counts))
    stored = {k.decode(): int(v) for k, v in raw_counts.items()}
    assert stored == dict(counts)
    assert dict(await store.redis.zrange(keys.expiries, 0, -1, withscores=True)) == expiries
    assert set(await store.redis.zrange(keys.intents, 0, -1)) == intents
    if max_per_prospect is not None:
        over = {k: v for k, v in counts.items() if k.startswith("p:") and v > max_per_prospect}
        assert not over, over
    if streams:
        await check_stream_matches_histories(store, chosen)
    return lots


async def check_stream_matches_histories(store: LotStore, codes: Iterable[str]) -> None:
    """The stream's entries of each lot, in order, are that lot's history (its tail)."""
    entries = cast(list[Any], await store.redis.xrange(store.keys.events))
    by_lot: dict[str, list[Any]] = {}
    for _, fields in entries:
        event = orjson.loads(fields[b"ce"])
        by_lot.setdefault(event["subject"], []).append(event)
    for code in codes:
        history = await store.history(code)
        streamed = by_lot.get(code, [])
        assert streamed[len(streamed) - len(history) :] == history, code
