"""`koban-options scheduler` as a real child process: killed with SIGKILL in the middle of
a large sweep and restarted, every due option is expired exactly once; SIGTERM gives one
summary line and exit 0; ``scheduler --check`` reads the heartbeat.

The sweep's size comes from KOBAN_KILL_SWEEP_OPTIONS (default 20 000; the issue's figure
is 50 000): large enough that the child is caught with some but not all options expired.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from redis.asyncio import Redis

from service.clock import SystemClock
from service.storage.keys import SCHEDULER_HEARTBEAT_KEY
from statecharts.ticks import latest_tick
from tests.support.api_harness import make_tenant
from tests.support.invariants import check_tenant
from tests.support.loading import load_options

N_KILL = int(os.environ.get("KOBAN_KILL_SWEEP_OPTIONS", "50000"))  # the size
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path: Path, tenant: str, redis_url: str) -> Iterator[dict[str, str]]:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.{tenant}]\nzone = "Europe/Paris"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOBAN_OPTIONS_")}
    env.update(
        {
            "KOBAN_OPTIONS_TENANTS_FILE": str(tenants),
            "KOBAN_OPTIONS_LOG_FORMAT": "json",
            "REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    yield env


@pytest.fixture(autouse=True)
async def no_heartbeat_left(redis: Redis) -> Any:
    yield
    await redis.delete(SCHEDULER_HEARTBEAT_KEY)  # /readyz tests expect none


def scheduler(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "service.entrypoints.cli", "scheduler"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )


def check(env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "service.entrypoints.cli", "scheduler", "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    return done.returncode, done.stdout.decode()


async def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.slow
async def test_sigkill_mid_sweep_then_restart_expires_everything_exactly_once(
    redis: Redis, tenant: str, config: dict[str, str], tmp_path: Path
) -> None:
    t = make_tenant(redis, tenant, SystemClock())  # type: ignore[arg-type]
    store = t.store
    due = latest_tick(time.time()) - 3600  # due before the daemon starts: its catch-up
    codes = [f"K{i:06d}" for i in range(N_KILL)]
    await load_options(store, codes, due, due - 2 * 86400)
    assert await redis.zcard(store.keys.expiries) == N_KILL

    first = scheduler(config, tmp_path / "first.log")
    try:
        left = N_KILL
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            left = int(await redis.zcard(store.keys.expiries))
            if 0 < left < N_KILL:
                break
            await asyncio.sleep(0.002)
        first.kill()  # SIGKILL: no clean-up, the lease is left to lapse
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    left = int(await redis.zcard(store.keys.expiries))
    assert 0 < left < N_KILL, f"not caught mid-sweep ({left} of {N_KILL} left); raise the size"
    assert await redis.get(store.keys.ticked) is None  # the tick was not recorded

    second = scheduler(config, tmp_path / "second.log")
    try:

        async def finished() -> bool:
            return await redis.zcard(store.keys.expiries) == 0 and bool(
                await redis.get(store.keys.ticked)
            )

        await wait_for(finished, 120, "the restarted daemon to finish the tick")
    finally:
        assert stop(second) == 0

    entries = cast(list[Any], await redis.xrange(store.keys.events))
    expired: Counter[str] = Counter()
    for _, fields in entries:
        event = orjson.loads(fields[b"ce"])
        if event["type"] == "koban.option.expired":
            expired[event["data"]["optionId"]] += 1
            assert event["time"].endswith(":00Z") and event["data"]["actor"] == "sweep"
    assert len(expired) == N_KILL and set(expired.values()) == {1}
    counts = cast(dict[bytes, bytes], await redis.hgetall(store.keys.counts))
    assert all(int(v) == 0 for v in counts.values())
    sample = random.Random(5).sample(codes, 200)
    lots = await check_tenant(store, sample, streams=False)
    assert all(lot.config == "free" and lot.version == 2 for lot in lots.values())
    logs = [
        orjson.loads(x) for x in (tmp_path / "second.log").read_text().splitlines() if x[:1] == "{"
    ]
    [tick] = [e for e in logs if e.get("event") == "tick" and e["outcome"] == "processed"]
    assert tick["expired"] == left and tick["took_over"] in (True, False)


async def test_sigterm_gives_one_summary_line_and_exit_0_and_check_reads_the_heartbeat(
    redis: Redis, config: dict[str, str], tmp_path: Path
) -> None:
    await redis.delete(SCHEDULER_HEARTBEAT_KEY)
    code, line = check(config)
    assert code == 1 and line.count("\n") == 1 and "no heartbeat" in line

    log = tmp_path / "daemon.log"
    proc = scheduler(config, log)
    try:

        async def beating() -> bool:
            return await redis.get(SCHEDULER_HEARTBEAT_KEY) is not None

        async def started() -> bool:
            return "scheduler_started" in log.read_text()

        await wait_for(beating, 60, "the first heartbeat")
        await wait_for(started, 60, "the end of the start-up catch-up")
        code, line = check(config)
        assert code == 0 and line.count("\n") == 1 and line.startswith("scheduler: ok")
    finally:
        assert stop(proc) == 0
    lines = [orjson.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    summaries = [e for e in lines if e.get("event") == "scheduler_stopped"]
    assert len(summaries) == 1 and summaries[0]["reason"] == "SIGTERM"
    assert {"ticks", "expired", "notices", "jobs_run", "uptime_s"} <= set(summaries[0])

    await redis.set(SCHEDULER_HEARTBEAT_KEY, repr(time.time() - 120), ex=30)
    code, line = check(config)
    assert code == 1 and "stale" in line
