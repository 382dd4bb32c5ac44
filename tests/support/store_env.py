"""What the store tests share (no tests here): their instant, the tenant's event stream and
history types, stock, and `store_over`: the store through either transport of its hot path.

Shared by tests/integration/test_store.py and test_store_expiry.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from service.storage.redis_mux import MuxReader
from service.storage.store import LotStore
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import Rules
from tests.support.instants import ts

T0 = ts("2026-11-23T10:00:00Z")


async def stream(store: LotStore) -> list[dict[str, object]]:
    entries = await store.redis.xrange(store.keys.events)
    return [orjson.loads(fields[b"ce"]) for _, fields in entries]


async def types(store: LotStore) -> list[str]:
    return [str(e["type"]) for e in await stream(store)]


async def lots(store: LotStore, *codes: str, now: int = T0) -> None:
    for code in codes:
        await store.import_lot(code, now, program="P1")


def code_of(excinfo: pytest.ExceptionInfo[RuleViolation]) -> ErrorCode:
    return excinfo.value.code


@contextlib.asynccontextmanager
async def store_over(
    transport: str, redis: Redis, tenant: str, rules: Rules
) -> AsyncIterator[LotStore]:
    """The store through `transport`: redis-py, or (``mux``) the shared connection
    `koban-options api` installs (`LotStore.fast`)."""
    store = LotStore(redis, tenant, rules)
    if transport == "mux":
        store.fast = MuxReader.for_client(redis)
    yield store
    if store.fast is not None:
        await store.fast.aclose()
