"""Load proofs (issue #6 item 2), over real HTTP against the API and the Koban sandbox.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_load.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import pytest
from redis.asyncio import Redis

from service.entrypoints.api.context import FlowSettings
from service.koban import KobanClient
from service.storage.redis_client import connect
from tests.support.api_harness import API_KEY, USER_KEY
from tests.support.invariants import check_tenant
from tests.support.reliability_harness import running_stack

CONCURRENT = int(os.environ.get("KOBAN_RELIABILITY_CONCURRENT", "200"))


async def test_redis_pool_waits_for_a_free_connection(redis_url: str, tenant: str) -> None:
    client = connect(redis_url, max_connections=2)
    try:
        key = f"kol:{{{tenant}}}:pool-probe"
        # Ten commands that each hold a connection for 0.1 s, on a pool of two.
        replies = await asyncio.gather(*(client.blpop([key], timeout=0.1) for _ in range(10)))
        assert replies == [None] * 10
    finally:
        await client.aclose()


@pytest.mark.parametrize("fast_reads", [False, True], ids=["redis-py", "mux"])
async def test_concurrent_placements_on_one_lot(
    redis: Redis, tenant: str, fast_reads: bool
) -> None:
    # Rank 2's flow waits for rank 1's Add to land in Koban; give it room on a
    # loaded machine: the assertion is about who wins, not how fast. `fast_reads`: the
    # store's reads and commits through the shared connection, as `koban-options api` runs.
    flows = FlowSettings(predecessor_wait_s=60.0, poll_s=0.05)
    async with running_stack(redis, tenant, flow_settings=flows, fast_reads=fast_reads) as stack:
        creator = KobanClient(
            stack.http, stack.sandbox.base_url + "/api/v1", API_KEY, USER_KEY, rate_per_s=1e6
        )
        guids = await asyncio.gather(
            *(
                creator.post_third(f"Load{n}", "P", f"load{n}@example.invalid")
                for n in range(CONCURRENT)
            )
        )
        assert len(set(guids)) == CONCURRENT
        before = Counter(stack.koban.calls)
        go = asyncio.Event()

        async def place(guid: str) -> tuple[int, str | None, str]:
            await go.wait()
            answer = await stack.place("L1", guid, token="write")
            return answer.status, answer.code, guid

        tasks = [asyncio.create_task(place(g)) for g in guids]
        await asyncio.sleep(0)  # every task waits on the event
        started = time.monotonic()
        go.set()
        answers = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started

        statuses = Counter((status, code) for status, code, _ in answers)
        assert statuses == {(201, None): 2, (409, "LOT_FULL"): CONCURRENT - 2}, statuses
        winners = sorted(g for status, _, g in answers if status == 201)
        calls = Counter(stack.koban.calls)
        calls.subtract(before)
        assert calls["ncOption/Add"] == 2, calls
        koban_lot = stack.koban.lots["L1"]
        assert sorted(o.holder or "" for o in koban_lot.options) == winners
        assert sorted(o.rank for o in koban_lot.options) == [1, 2]
        # The sandbox's option-placed webhooks may still be landing (each confirms a
        # deadline): the invariants read a lot and then its history, so let them land.
        await stack.delivered()
        lots = await check_tenant(stack.store)
        assert sorted(o.holder or "" for o in lots["L1"].options) == winners
        assert not lots["L1"].intents
        placed = [e for e in await stack.events() if e["type"] == "koban.option.placed"]
        assert sorted(e["data"]["thirdGuid"] for e in placed) == winners
        print(
            f"\nRELIABILITY concurrent_placements={CONCURRENT} wall_s={elapsed:.2f} "
            f"get_lot_status={calls['ncOption/GetLotStatus']} add={calls['ncOption/Add']}"
        )
