"""`make bench` (webhook subscriptions): delivery lag and the deliverer's rate.

Three processes: this one runs the deliverer (`service.usecases.delivery.Deliverer`, one
subscription, signing every request); a receiver (aiohttp on 127.0.0.1, answers 200 to
every POST) and a producer (commits placements and cancellations through the store at a
fixed rate over KOBAN_BENCH_DELIVERY_LOTS lots) run as child processes. Redis is a private
redis-server started here.

* ``delivery_lag_p99_ms``: from an event's commit (its stream entry id, Redis' clock) to
  the receiver's 2xx as seen by the deliverer, at KOBAN_BENCH_DELIVERY_RATE events/s for
  KOBAN_BENCH_DELIVERY_SECONDS.
* ``delivery_vs_bare_client``: KOBAN_BENCH_DELIVERY_EVENTS events committed beforehand,
  then delivered as fast as the deliverer goes (``max_in_flight`` = CONCURRENCY); the bare
  figure is an aiohttp client POSTing the same bodies to the same receiver with the same
  concurrency, no Redis and no signing, in the same run. Ratio = deliverer ÷ bare.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from service.bootstrap import rules_from
from service.clock import SystemClock
from service.config import TenantSettings
from service.outbound.signing import SecretBox
from service.storage.redis_client import connect
from service.storage.store import LotStore
from service.storage.subscriptions import QueuedEvent, SubscriptionStore
from service.tenancy import Tenant, Tenants
from service.usecases.delivery import Deliverer
from service.usecases.subscriptions import create_subscription
from tests.support.redis_server import start_redis_server


def _env(name: str, default: str) -> str:
    return os.environ.get(f"KOBAN_BENCH_DELIVERY_{name}", default)


RATE = float(_env("RATE", "200"))
SECONDS = float(_env("SECONDS", "10"))
EVENTS = int(_env("EVENTS", "4000"))
LOTS = int(_env("LOTS", "400"))
CONCURRENCY = int(_env("CONCURRENCY", "32"))
ROOT = Path(__file__).resolve().parent.parent


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


def settings() -> TenantSettings:
    return TenantSettings(allow_private_targets=True, allow_http_targets=True)


def make_tenant(redis_url: str, name: str) -> Tenant:
    redis = connect(redis_url)
    ts = settings()
    rules = rules_from(ts)
    return Tenant(
        name,
        ts,
        rules,
        LotStore(redis, name, rules),
        SystemClock(),
        subscriptions=SubscriptionStore(redis, name),
        secret_box=SecretBox(SecretBox.generate_key()),
    )


# --------------------------------------------------------------------------- children


async def _receive(port_file: str) -> None:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await asyncio.to_thread(Path(port_file).write_text, str(port))
    await asyncio.Event().wait()


async def _produce(redis_url: str, name: str, rate: float, count: int) -> None:
    """`count` events at `rate` per second: each a placement or a cancellation."""
    tenant = make_tenant(redis_url, name)
    store, now = tenant.store, int(time.time())
    held: set[int] = set()
    started = time.perf_counter()
    for i in range(count):
        lot = i % LOTS
        code = f"B{lot:05d}"
        if lot in held:
            await store.cancel(code, 1, now)
            held.discard(lot)
        else:
            await store.place_local(code, f"p{i}", None, now)
            held.add(lot)
        if rate > 0:
            delay = started + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
    await store.redis.aclose()


def child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.delivery", *args], cwd=ROOT)


# --------------------------------------------------------------------------- phases


async def _wait(condition: Any, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit("bench.delivery: events not delivered in time")
        await asyncio.sleep(0.01)


async def lag_phase(redis_url: str, url: str) -> list[float]:
    tenant = make_tenant(redis_url, "benchlag" + uuid.uuid4().hex[:6])
    for lot in range(LOTS):
        await tenant.store.import_lot(f"B{lot:05d}", int(time.time()), program="B", label="b")
    await create_subscription(tenant, "bench", url, ["koban.option.*"])
    lags: list[float] = []

    def acked(_: str, item: QueuedEvent) -> None:
        lags.append(time.time() * 1000 - int(item.stream_id.split("-", 1)[0]))

    count = int(RATE * SECONDS)
    deliverer = Deliverer(Tenants({tenant.name: tenant}), max_in_flight=CONCURRENCY, on_ack=acked)
    await deliverer.start()
    producer = child("--produce", redis_url, tenant.name, str(RATE), str(count))
    try:
        await _wait(lambda: len(lags) >= count, SECONDS * 10 + 60)
    finally:
        producer.wait(60)
        await deliverer.stop()
        await tenant.store.redis.aclose()
    return lags


async def rate_phase(redis_url: str, url: str) -> tuple[float, float]:
    tenant = make_tenant(redis_url, "benchrate" + uuid.uuid4().hex[:6])
    for lot in range(LOTS):
        await tenant.store.import_lot(f"B{lot:05d}", int(time.time()), program="B", label="b")
    await create_subscription(tenant, "bench", url, ["koban.option.*"])
    producer = child("--produce", redis_url, tenant.name, "0", str(EVENTS))
    producer.wait(600)
    raw = await tenant.store.redis.xrange(tenant.store.keys.events)
    bodies = [fields[b"ce"] for _, fields in raw if b"koban.option." in fields[b"ce"]]
    assert len(bodies) == EVENTS, len(bodies)
    acked = 0

    def count(_: str, __: QueuedEvent) -> None:
        nonlocal acked
        acked += 1

    deliverer = Deliverer(Tenants({tenant.name: tenant}), max_in_flight=CONCURRENCY, on_ack=count)
    started = time.perf_counter()
    await deliverer.start()
    await _wait(lambda: acked >= EVENTS, 600)
    deliverer_s = time.perf_counter() - started
    await deliverer.stop()
    await tenant.store.redis.aclose()

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Content-Type": "application/cloudevents+json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY), trust_env=False
    ) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        bare_s = time.perf_counter() - started
    return EVENTS / deliverer_s, EVENTS / bare_s


async def run(redis_url: str, url: str) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    print(
        f"delivery bench: 1 subscription, receiver and producer in child processes, Redis on "
        f"loopback; lag at {RATE:g} events/s for {SECONDS:g} s over {LOTS} lots; rate over "
        f"{EVENTS} events, concurrency {CONCURRENCY}",
        flush=True,
    )
    lags = await lag_phase(redis_url, url)
    print(f"  lag: {len(lags)} events, median {sorted(lags)[len(lags) // 2]:.1f} ms", flush=True)
    bench("delivery_lag_p99_ms", p99(lags), "ms")
    deliverer_rate, bare_rate = await rate_phase(redis_url, url)
    print(
        f"  deliverer {deliverer_rate:.0f} events/s, bare aiohttp client {bare_rate:.0f} "
        "requests/s",
        flush=True,
    )
    bench("delivery_rate_per_s", deliverer_rate, "events/s")
    bench("delivery_vs_bare_client", deliverer_rate / bare_rate, "ratio")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--receive":
        asyncio.run(_receive(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        _, _, url, name, rate, count = sys.argv
        asyncio.run(_produce(url, name, float(rate), int(count)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        proc, redis_url = start_redis_server(Path(tmp))
        port_file = Path(tmp) / "port"
        receiver = child("--receive", str(port_file))
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or receiver.poll() is not None:
                    raise SystemExit("bench.delivery: the receiver did not start")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text()}/hook"
            asyncio.run(run(redis_url, url))
        finally:
            receiver.terminate()
            receiver.wait(10)
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
