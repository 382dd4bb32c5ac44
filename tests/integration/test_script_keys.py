"""The keys ``commit.lua`` and ``sweep.lua`` build are `TenantKeys`' own.

On one server the scripts append a lot's extcode to the prefixes `TenantKeys` hands them
(on a cluster every key is declared instead): the keys they write must be exactly
`TenantKeys.lot` / `history`, for extcodes with the characters that could go wrong.
"""

from __future__ import annotations

import pytest

from service.storage.keys import TenantKeys
from service.storage.redis_client import RedisClient
from service.storage.store import LotStore
from service.usecases.sweep import sweep_expiries
from tests.support.rules import make_rules

TICK = 1_795_000_000 - 1_795_000_000 % 1800
CODES = ["A-1", "l:B", "{C}", "é/é", "D|1", "x y%s"]

pytestmark = pytest.mark.cluster


def test_a_lot_key_is_the_prefix_the_scripts_get_and_the_extcode() -> None:
    keys = TenantKeys("t{1}")
    for code in CODES:
        assert keys.lot(code) == keys.lot_prefix + code
        assert keys.history(code) == keys.history_prefix + code
    assert keys.lot_prefix.startswith(keys.prefix) and keys.history_prefix.startswith(keys.prefix)


async def _keys(redis: RedisClient, keys: TenantKeys) -> set[str]:
    return {k.decode() async for k in redis.scan_iter(match=keys.prefix + "*")}


async def test_the_scripts_write_the_keys_tenant_keys_names(
    redis: RedisClient, tenant: str
) -> None:
    store = LotStore(redis, tenant, make_rules())
    k = store.keys
    t0 = TICK - 2 * 86400
    for i, code in enumerate(CODES):
        await store.import_lot(code, t0)  # commit.lua
        await store.place_local(code, f"p{i}", None, t0)
    written = await _keys(redis, k)
    lots = {k.lot(c) for c in CODES}
    histories = {k.history(c) for c in CODES}
    assert lots | histories <= written
    others = {k.counts, k.expiries, k.lots, k.tombstones, k.intents, k.events}
    assert written - lots - histories <= others

    before = {c: await redis.get(k.history(c)) for c in CODES}
    report = await sweep_expiries(store, TICK)  # sweep.lua
    assert report.expired == len(CODES) and report.fast == len(CODES)
    assert await _keys(redis, k) - lots - histories <= others
    for code in CODES:
        lot = await store.load(code)
        assert lot is not None and lot.config == "free"
        history = await redis.get(k.history(code))
        assert history is not None and history.startswith(before[code] + b"\n")
