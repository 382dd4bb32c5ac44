"""`make bench` (peers): the sweep against what a user would build instead, same run.

(a) ``sweep_vs_job_per_option``: APScheduler 3's `AsyncIOScheduler` (default executor and
    job defaults) with one `date` job per option, N options due at one instant, each job
    expiring its option through the store's single-lot write (`LotStore.mutate`: read,
    decide, ``commit.lua``), timed from the instant to the last expiry written; then
    `sweep_expiries` on another N options of the same Redis, timed the same way. The
    ratio is the peer's time over the sweep's. With the defaults, jobs that start more
    than a second late (``misfire_grace_time``) are skipped and their options never
    expire: the run counts them, and runs the peer once more with no grace time
    (``sweep_vs_job_per_option_no_grace``: every option expired).
(b) Redis's own pipelined write rate (``redis-benchmark -P 32 -t set -q`` on the same
    private server), the Redis commands one expiry costs in the sweep (``INFO
    commandstats`` before and after it, commands run by its scripts included; the
    breakdown is printed) and ``sweep_share_of_redis_limit`` = expiries/s × commands per
    expiry ÷ that rate. Size: KOBAN_BENCH_PEER_DUE (10 000).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bench.procs import run_on_private_redis
from bench.ticks import bench
from service.bootstrap import rules_from
from service.config import TenantSettings
from service.storage.redis_client import RedisClient, connect
from service.storage.store import Counts, LotStore
from service.usecases.sweep import sweep_expiries
from statecharts.model import DomainEvent, Lot
from statecharts.ticks import TICK_SECONDS
from tests.support.loading import load_options

N_DUE = int(os.environ.get("KOBAN_BENCH_PEER_DUE", "10000"))
T0 = 1_795_000_000 - 1_795_000_000 % TICK_SECONDS
TICK = T0 + 2 * 86400
LEAD_S = 2.0  # the instant is this long after the last job was added


def _nothing(lot: Lot, counts: Counts) -> tuple[list[DomainEvent], None]:
    # The store's write expires what is due first, in the same step: the job adds nothing.
    return [], None


async def commandstats(redis: RedisClient) -> tuple[Counter[str], Counter[str]]:
    """Calls and microseconds per command so far (scripts' own commands included; a
    script's time includes theirs)."""
    info = await redis.info("commandstats")
    names = [k.removeprefix("cmdstat_") for k in info]
    calls = Counter({n: int(v["calls"]) for n, v in zip(names, info.values(), strict=True)})
    usec = Counter({n: int(v["usec"]) for n, v in zip(names, info.values(), strict=True)})
    return calls, usec


async def job_per_option(
    store: LotStore, codes: list[str], **job_defaults: Any
) -> tuple[float, int, int]:
    """(seconds from the instant to the last expiry written, jobs missed, jobs failed)."""
    done: list[float] = []
    trouble: Counter[str] = Counter()
    finished = asyncio.Event()

    def count() -> None:
        if len(done) + trouble.total() == len(codes):
            finished.set()

    async def expire(code: str) -> None:
        await store.mutate(code, _nothing, now=TICK)
        done.append(time.time())
        count()

    def listen(event: JobExecutionEvent) -> None:
        trouble["missed" if event.code == EVENT_JOB_MISSED else "failed"] += 1
        count()

    scheduler = AsyncIOScheduler(timezone=UTC, job_defaults=job_defaults)

    scheduler.add_listener(listen, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    scheduler.start()
    # Adding 10 000 jobs takes a while: they are added for later, then all moved to one
    # instant far enough ahead that moving them is over before it comes.
    far = datetime.now(UTC) + timedelta(days=1)
    added = time.perf_counter()
    jobs = [scheduler.add_job(expire, "date", run_date=far, args=[code]) for code in codes]
    lead = max(LEAD_S, 3 * (time.perf_counter() - added))
    instant = datetime.now(UTC) + timedelta(seconds=lead)
    for job in jobs:
        job.modify(next_run_time=instant)
    spare = instant.timestamp() - time.time()
    print(f"  {len(jobs)} jobs set for one instant, {spare:.1f} s before it", flush=True)
    assert spare > 0, "the jobs were not all set before their instant"
    await finished.wait()
    scheduler.shutdown(wait=False)
    if not done:
        raise SystemExit(f"job per option: no job ran ({dict(trouble)})")
    return max(done) - instant.timestamp(), trouble["missed"], trouble["failed"]


def redis_write_rate(url: str) -> float:
    """SETs per second Redis itself takes, pipelined 32 deep (redis-benchmark)."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        raise SystemExit("redis-benchmark is not installed (it comes with redis-server)")
    parts = urlsplit(url)
    server = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    out = subprocess.run(
        [tool, *server, "-P", "32", "-t", "set", "-q", "-n", "1000000"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    rates = re.findall(r"SET: ([\d.]+) requests per second", out)
    if not rates:
        raise SystemExit(f"unexpected redis-benchmark output: {out[-300:]!r}")
    return float(rates[-1])


async def run(url: str) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    # APScheduler logs every missed or failed job (a traceback each): counted instead.
    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)
    redis = connect(url)
    rules = rules_from(TenantSettings())
    print(
        f"peers bench: {N_DUE} options due at one instant, each way; "
        "1 client process, Redis on loopback",
        flush=True,
    )
    peer = LotStore(redis, "peerjobs", rules)
    patient = LotStore(redis, "peerjobsnograce", rules)
    ours = LotStore(redis, "peersweep", rules)
    peer_codes = [f"J{n:06d}" for n in range(N_DUE)]
    t = time.perf_counter()
    # Notices already given: each side has only the expiry to write.
    await load_options(peer, peer_codes, TICK, T0, noticed=True)
    await load_options(patient, peer_codes, TICK, T0, noticed=True)
    await load_options(ours, (f"S{n:06d}" for n in range(N_DUE)), TICK, T0, noticed=True)
    print(f"  loaded {3 * N_DUE} options in {time.perf_counter() - t:.1f} s", flush=True)

    peer_s, missed, failed = await job_per_option(peer, peer_codes)
    left = await redis.zcard(peer.keys.expiries)
    print(f"  job per option: {missed} jobs missed, {failed} failed, {left} options left")
    patient_s, missed, failed = await job_per_option(patient, peer_codes, misfire_grace_time=None)
    left = await redis.zcard(patient.keys.expiries)
    print(f"  … no grace time: {missed} jobs missed, {failed} failed, {left} options left")

    calls_before, usec_before = await commandstats(redis)
    t = time.perf_counter()
    report = await sweep_expiries(ours, TICK)
    sweep_s = time.perf_counter() - t
    calls_after, usec_after = await commandstats(redis)
    calls, usec = calls_after - calls_before, usec_after - usec_before
    calls.pop("info", None)
    usec.pop("info", None)
    assert report.expired == N_DUE, report
    per_expiry = calls.total() / report.expired
    print(
        "  sweep's Redis commands per expiry: "
        + ", ".join(f"{name} {n / report.expired:.3g}" for name, n in calls.most_common()),
        flush=True,
    )
    print(
        "  sweep's Redis time (ms; evalsha includes the commands its script calls): "
        + ", ".join(f"{name} {n / 1000:.1f}" for name, n in usec.most_common()),
        flush=True,
    )
    await redis.aclose()

    set_rate = redis_write_rate(url)
    rate = report.expired / sweep_s
    bench("job_per_option_s", peer_s, "s")
    bench("sweep_peer_s", sweep_s, "s")
    bench("sweep_vs_job_per_option", peer_s / sweep_s, "x")
    bench("job_per_option_no_grace_s", patient_s, "s")
    bench("sweep_vs_job_per_option_no_grace", patient_s / sweep_s, "x")
    bench("redis_pipelined_set_rate_per_s", set_rate, "commands/s")
    bench("sweep_redis_commands_per_expiry", per_expiry, "commands")
    bench("sweep_share_of_redis_limit", rate * per_expiry / set_rate, "x")


def main() -> None:
    run_on_private_redis(run)


if __name__ == "__main__":
    main()
