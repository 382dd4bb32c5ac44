"""`make bench` (scheduler): how late a tick's expiries land, through the sandbox test clock.

N_TICKS consecutive ticks each have N_DUE options due (one option per lot, loaded through
the store's own commit path). A sandbox tenant's clock is advanced one tick at a time with
`service.usecases.ticking.advance_clock`, the daemon's code path (lease, expiring notices
PT2H, sweep). `tick_lateness_p99_ms`: from the call (the tick firing) to its last expiry
written (target ≤ 1 s), split into wake-up, lease, before the sweep, and the sweep's own
waits on Redis (reads, script calls), decisions (events rendered included) and packing;
`tick_processing_p99_ms` runs from the lease taken to the tick recorded (the notices
ahead included). One client process, a private redis-server on loopback. Sizes:
KOBAN_BENCH_TICKS (20), KOBAN_BENCH_TICK_DUE (10 000).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import structlog

from bench.procs import run_on_private_redis
from service.bootstrap import rules_from
from service.clock import TestClock
from service.config import TenantSettings
from service.storage.redis_client import connect
from service.storage.store import LotStore
from service.tenancy import Tenant
from service.usecases.ticking import TickReport, advance_clock
from statecharts.ticks import TICK_SECONDS, next_tick
from tests.support.loading import load_options

N_TICKS = int(os.environ.get("KOBAN_BENCH_TICKS", "20"))
N_DUE = int(os.environ.get("KOBAN_BENCH_TICK_DUE", "10000"))


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank): the worst of 20, the 10th worst of 1 000."""
    ordered = sorted(values)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


SPLIT = (
    "wake_up",
    "lease",
    "before_sweep",
    "reads",
    "decisions",
    "pack",
    "send",
    "script",
    "other",
)


def split(fired: float, r: TickReport) -> dict[str, float]:
    """Milliseconds of each phase from the firing to the last expiry written (they add up
    to it): the call reaching process_tick, the lease, what runs before the sweep (the due
    count, the notices of options expiring by the tick), then the sweep's: waits for its
    reads, decisions (events rendered included), packing of its script calls, handing its
    commands to the socket (Redis busy reading them), waits for its script calls, and the
    rest of its loop."""
    assert r.sweep is not None
    s = r.sweep
    sweep_s = r.swept_at - r.sweep_started_at
    parts = {
        "wake_up": r.entered_at - fired,
        "lease": r.started_at - r.entered_at,
        "before_sweep": r.sweep_started_at - r.started_at,
        "reads": s.reads_s,
        "decisions": s.decide_s,
        "pack": s.pack_s,
        "send": s.send_s,
        "script": s.script_s,
        "other": sweep_s - s.reads_s - s.decide_s - s.pack_s - s.send_s - s.script_s,
    }
    return {k: v * 1000 for k, v in parts.items()}


async def run(redis_url: str) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # quiet ticks
    redis = connect(redis_url)
    settings = TenantSettings(sandbox=True)
    rules = rules_from(settings)
    tenant = Tenant(
        "benchticks", settings, rules, LotStore(redis, "benchticks", rules), TestClock()
    )
    print(
        f"tick bench: {N_TICKS} ticks with {N_DUE} options due each, notices PT2H; "
        "1 client process, Redis on loopback",
        flush=True,
    )
    start = next_tick(tenant.clock.now()) + 4 * TICK_SECONDS
    ticks = [start + i * TICK_SECONDS for i in range(1, N_TICKS + 1)]
    t = time.perf_counter()
    for i, tick in enumerate(ticks):
        codes = (f"T{i:02d}-{n:06d}" for n in range(N_DUE))
        await load_options(tenant.store, codes, tick, tick - 2 * 86400)
        if sys.stderr.isatty():
            print(f"\r  loading: {i + 1}/{N_TICKS} ticks", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"  loaded {N_TICKS * N_DUE} options in {time.perf_counter() - t:.1f} s", flush=True)
    # Up to the tick before the first measured one: the notices of the first four ticks.
    await advance_clock(tenant, start)
    lateness: list[float] = []
    processing: list[float] = []
    splits: list[dict[str, float]] = []
    for tick in ticks:
        fired = time.time()
        moved = await advance_clock(tenant, tick)
        [report] = moved.ticks
        assert report.tick == tick and report.expired == N_DUE, report
        lateness.append((report.swept_at - fired) * 1000)
        processing.append(report.duration_s * 1000)
        splits.append(split(fired, report))
    await redis.aclose()
    print(
        "  per tick (ms, firing -> last expiry): "
        + " ".join(f"{x:.0f}" for x in lateness)
        + f"; median {statistics.median(lateness):.0f}",
        flush=True,
    )
    worst = splits[lateness.index(p99(lateness))]
    print("  split (ms)       p99 tick   median over ticks", flush=True)
    for name in SPLIT:
        median = statistics.median(x[name] for x in splits)
        print(f"    {name:<14} {worst[name]:>8.1f}   {median:>8.1f}", flush=True)
    bench("tick_lateness_p99_ms", p99(lateness), "ms")
    for name in SPLIT:  # the p99 tick's own split: it adds up to tick_lateness_p99_ms
        bench(f"tick_p99_{name}_ms", worst[name], "ms")
    bench("tick_processing_p99_ms", p99(processing), "ms")
    bench("tick_expiry_rate_per_s", N_DUE / (statistics.median(lateness) / 1000), "expiries/s")


def main() -> None:
    run_on_private_redis(run)


if __name__ == "__main__":
    main()
