"""`make bench` (core): the sweep's speed and Redis memory per lot.

(a) sweep_expiries over N_DUE options due at one tick among N_LOTS stored lots: its wall
    time, and the CPU time this process and Redis spent over it;
(b) the same sweep with one python-statemachine object built per decision (the `CHART`
    engine: the chart run directly instead of its compiled table), on N_BASE options, in
    the same process;
(c) Redis memory per free lot and per lot holding two options:
    (used_memory after loading N lots - before) / N, indexes included.

Everything runs against a private redis-server started here (never the machine's 6379),
loaded through the store's own atomic commit path. Sizes come from the environment
(KOBAN_BENCH_LOTS, KOBAN_BENCH_DUE, KOBAN_BENCH_BASELINE, KOBAN_BENCH_MEMORY_LOTS).
Each figure is also printed as ``BENCH <name> <value> <unit>``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from bench.procs import run_on_private_redis
from service.storage.commit_script import Transition
from service.storage.redis_client import connect
from service.storage.store import LotStore, View, view
from service.usecases.sweep import sweep_expiries
from statecharts import transitions as tr
from statecharts.decide import CHART
from statecharts.model import DomainEvent, Lot, Rules
from statecharts.ticks import parse_duration

N_LOTS = int(os.environ.get("KOBAN_BENCH_LOTS", "1000000"))
N_DUE = int(os.environ.get("KOBAN_BENCH_DUE", "100000"))
N_BASE = int(os.environ.get("KOBAN_BENCH_BASELINE", "10000"))
N_MEMORY = int(os.environ.get("KOBAN_BENCH_MEMORY_LOTS", "20000"))
T0 = 1_795_000_000 - 1_795_000_000 % 1800
RULES = Rules(zone=ZoneInfo("Europe/Paris"), option_lifetime=parse_duration("P2D"))
LOAD_BATCH = 1000
EMPTY: View = view(Lot(""))


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def progress(label: str, done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r  {label}: {done}/{total}", end="", file=sys.stderr, flush=True)


async def load(store: LotStore, codes: Iterable[str], holders: int, placed_at: int) -> None:
    """Import lots (LIBRE, `lot.imported`) and place `holders` options on each, in batches.

    Each batch is one call of the store's own commit script with the store's own
    transitions; the next batch is built while Redis applies the previous one.
    """
    codes = list(codes)
    inflight: asyncio.Future[Any] | None = None
    for start in range(0, len(codes), LOAD_BATCH):
        batch: list[Transition] = []
        for code in codes[start : start + LOAD_BATCH]:
            lot = Lot(code, program="P1")
            events = [DomainEvent("lot.imported", T0, {"program": "P1", "actor": "sync"})]
            for h in range(holders):
                events += tr.place_option(
                    lot,
                    option_id=f"{code}o{h}",
                    holder=f"third-{code}-{h}",
                    partner=None,
                    placed_at=placed_at,
                    rules=RULES,
                    via_api=True,
                    actor="api",
                )
            batch.append(store.transition(EMPTY, lot, events, T0))
        if inflight is not None:
            await _committed(inflight)
        inflight = asyncio.ensure_future(_commit(store, batch))
        for _ in range(5):  # let the call reach the socket before building the next batch
            await asyncio.sleep(0)
        progress("loading", start + LOAD_BATCH, len(codes))
    if inflight is not None:
        await _committed(inflight)
    if sys.stderr.isatty():
        print(file=sys.stderr)


async def _commit(store: LotStore, batch: list[Transition]) -> tuple[int, Any]:
    return len(batch), await store.commit(batch, mode="each")


async def _committed(call: asyncio.Future[Any]) -> None:
    n, reply = await call
    assert reply == [1] * n, "a bench lot existed already"


async def redis_cpu(redis: Redis) -> float:
    """CPU seconds the Redis server has used so far (user + system)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def memory_per_lot(redis: Redis, tenant: str, holders: int) -> tuple[float, float]:
    """Bytes per lot, (state + indexes + history, event stream entries)."""
    store = LotStore(redis, tenant, RULES)
    before = await used_memory(redis)
    await load(store, (f"M{holders}-{i:07d}" for i in range(N_MEMORY)), holders, T0)
    after = await used_memory(redis)
    stream = await redis.memory_usage(store.keys.events, samples=0) or 0
    return (after - before - stream) / N_MEMORY, stream / N_MEMORY


async def run(redis_url: str) -> None:
    redis = connect(redis_url)
    print(
        f"core bench: {N_LOTS} lots, {N_DUE} due at one tick, baseline {N_BASE}; "
        "1 client process, Redis on loopback",
        flush=True,
    )

    # (c) first, on an empty server, so nothing else moves used_memory
    free_state, free_stream = await memory_per_lot(redis, "memfree", 0)
    two_state, two_stream = await memory_per_lot(redis, "memtwo", 2)

    # (a) one tick with N_DUE options due among N_LOTS lots
    store = LotStore(redis, "bench", RULES)
    t = time.perf_counter()
    await load(store, (f"F{i:07d}" for i in range(N_LOTS - N_DUE - N_BASE)), 0, T0)
    await load(store, (f"D{i:07d}" for i in range(N_DUE)), 1, T0)
    # the baseline's options are due one tick later, on other lots
    await load(store, (f"B{i:07d}" for i in range(N_BASE)), 1, T0 + 1800)
    print(f"  loaded in {time.perf_counter() - t:.1f} s", flush=True)
    tick = T0 + 2 * 86400
    server_cpu = await redis_cpu(redis)
    client_cpu = time.process_time()
    t = time.perf_counter()
    report = await sweep_expiries(store, tick)
    sweep_s = time.perf_counter() - t
    client_cpu = time.process_time() - client_cpu
    server_cpu = await redis_cpu(redis) - server_cpu
    assert report.expired == N_DUE, report

    # (b) the same sweep deciding with a chart object built per decision
    t = time.perf_counter()
    base = await sweep_expiries(store, tick + 1800, engine=CHART)
    base_s = time.perf_counter() - t
    assert base.expired == N_BASE, base
    await redis.aclose()

    rate = N_DUE / sweep_s
    base_rate = N_BASE / base_s
    bench("sweep_100k_s", sweep_s, "s")
    bench("sweep_rate_per_s", rate, "expiries/s")
    # CPU seconds, less disturbed than the wall time when the machine is shared
    bench("sweep_client_cpu_s", client_cpu, "s")
    bench("sweep_redis_cpu_s", server_cpu, "s")
    bench("chart_per_option_rate_per_s", base_rate, "expiries/s")
    bench("chart_per_option_ratio", rate / base_rate, "x")
    bench("redis_bytes_free_lot", free_state, "B")
    bench("redis_bytes_two_options", two_state, "B")
    bench("redis_stream_bytes_free_lot", free_stream, "B")
    bench("redis_stream_bytes_two_options", two_stream, "B")


def main() -> None:
    run_on_private_redis(run)


if __name__ == "__main__":
    main()
