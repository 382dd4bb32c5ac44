"""The sweep loads its script once per client, not at every tick (one round trip less
per tick): it calls it by Redis's own name for it, and a server that lost it since gets
it again."""

from __future__ import annotations

from service.storage.redis_client import RedisClient
from service.storage.store import LotStore
from service.storage.sweep_script import LUA_SWEEP, SWEEP_SHA
from service.usecases.sweep import sweep_expiries
from tests.support.loading import load_options

TICK = 1_795_000_000 - 1_795_000_000 % 1800


async def test_the_sweep_names_its_script_as_redis_does(redis: RedisClient) -> None:
    assert await redis.script_load(LUA_SWEEP) == SWEEP_SHA


async def test_a_server_that_lost_the_script_still_gets_every_expiry(
    redis: RedisClient, store: LotStore
) -> None:
    await load_options(store, ["N-first"], TICK, TICK - 86400, noticed=True)
    assert (await sweep_expiries(store, TICK)).expired == 1  # the script loaded
    await load_options(store, (f"N{n}" for n in range(7)), TICK, TICK - 86400, noticed=True)
    await redis.script_flush()
    assert await redis.script_exists(SWEEP_SHA) == [False]
    report = await sweep_expiries(store, TICK, batch=2)  # four chunks, all sent ahead
    assert report.expired == 7
    assert await redis.zcard(store.keys.expiries) == 0
    assert await redis.script_exists(SWEEP_SHA) == [True]
