"""Operations routes, none with a token: ``/readyz`` and ``/metrics`` (``/healthz`` is
the app's own; `HealthOut` describes it).

``install_health(app, redis, tenants)`` registers them with a per-app `Metrics` (its own
Prometheus registry); the request counters are fed by the API's middleware. Ready means
Redis answers; the scheduler's heartbeat and last ticks are shown, never required.
docs/operations.md lists the answers and every metric.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from pydantic import AliasGenerator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from service.entrypoints.api.context import FLOWS_KEY
from service.entrypoints.api.errors import json_response
from service.entrypoints.api.models import Instant, dump
from service.entrypoints.api.worker_metrics import LOCAL_QUERY, WORKERS_KEY, merged_exposition
from service.koban import KobanClient
from service.storage.errors import STORE_FAILURES, STORE_FAILURES_OR_TIMEOUT
from service.storage.event_stream import event_types_after
from service.storage.expiry_index import active_counts
from service.storage.heartbeat import last_ticks as read_last_ticks
from service.storage.heartbeat import ping, read_heartbeat
from service.storage.keys import SCHEDULER_HEARTBEAT_KEY
from service.storage.redis_client import RedisClient
from service.tenancy import Tenants

__all__ = [
    "DRIFT_EVENT_TYPE",
    "SCHEDULER_HEARTBEAT_KEY",
    "HealthOut",
    "Metrics",
    "ReadyOut",
    "RedisCheckOut",
    "SchedulerOut",
    "install_health",
    "metrics_of",
]

DRIFT_EVENT_TYPE = "koban.sync.drift_detected"
READY_TIMEOUT_S = 1.0
SCRAPE_TIMEOUT_S = 2.0
DRIFT_SCAN_BATCH = 1000
DRIFT_SCAN_BUDGET = 10_000
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"
# Any token is a method to aiohttp: others are counted as "other" (bounded label values).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SWEEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


# --------------------------------------------------------------------------- models


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=AliasGenerator(serialization_alias=to_camel))


class HealthOut(_Camel):
    status: Literal["ok"]


class RedisCheckOut(_Camel):
    ok: bool
    latency_ms: float | None
    error: str | None


class SchedulerOut(_Camel):
    last_beat: Instant
    age_seconds: float
    last_ticks: dict[str, Instant | None]  # per tenant: the latest tick processed


class ReadyOut(_Camel):
    status: Literal["ready", "unavailable"]
    redis: RedisCheckOut
    scheduler: SchedulerOut | None


# --------------------------------------------------------------------------- metrics


class _KobanCalls(Collector):
    """``KobanClient.calls`` of the app's clients, read at scrape."""

    def __init__(self, clients: Callable[[], Mapping[str, KobanClient]]) -> None:
        self._clients = clients

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "koban_options_koban_calls",
            "Koban API calls by tenant, method and outcome.",
            labels=["tenant", "method", "outcome"],
        )
        for tenant, client in sorted(self._clients().items()):
            for (method, outcome), count in sorted(client.calls.items()):
                family.add_metric([tenant, method, outcome], count)
        yield family


class _Requests(Collector):
    """``koban_options_http_requests_total`` and ``…_request_duration_seconds``: what a
    prometheus_client `Counter` and `Histogram` (default buckets) report, accumulated in
    plain Python numbers. Their children lock on every ``inc``/``observe``; the event loop
    is the only writer, and a scrape (on the same loop) reads them.
    `tests/integration/test_api_openapi.py` checks the exposition is the classes' own."""

    COUNT_HELP = "HTTP requests by route template, method and status."
    LATENCY_HELP = "HTTP request duration by route template and method."
    BOUNDS = Histogram.DEFAULT_BUCKETS  # ends with +Inf
    LE = tuple(cast(Callable[[float], str], floatToGoString)(b) for b in BOUNDS)

    def __init__(self) -> None:
        # (route, method, status) → [count, the (route, method) latency, created]
        self._counts: dict[tuple[str, str, int], list[Any]] = {}
        # (route, method) → [created, sum, one count per bucket (not cumulative)…]
        self._latency: dict[tuple[str, str], list[float]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        entry = self._counts.get((route, method, status))
        if entry is None:  # bounded: route templates × methods × statuses
            latency = self._latency.get((route, method))
            if latency is None:
                latency = [time.time(), 0.0] + [0.0] * len(self.BOUNDS)
                self._latency[(route, method)] = latency
            entry = self._counts[(route, method, status)] = [0, latency, time.time()]
        entry[0] += 1
        latency = entry[1]
        latency[1] += seconds
        latency[2 + bisect.bisect_left(self.BOUNDS, seconds)] += 1  # first bound ≥ seconds

    def collect(self) -> Iterable[Metric]:
        counts = CounterMetricFamily(
            "koban_options_http_requests", self.COUNT_HELP, labels=["route", "method", "status"]
        )
        for (route, method, status), (count, _, created) in self._counts.items():
            counts.add_metric([route, method, str(status)], count, created=created)
        yield counts
        name = "koban_options_http_request_duration_seconds"
        latency = HistogramMetricFamily(name, self.LATENCY_HELP, labels=["route", "method"])
        for (route, method), (created, total, *per_bucket) in self._latency.items():
            buckets, seen = [], 0.0
            for le, n in zip(self.LE, per_bucket, strict=True):
                seen += n
                buckets.append((le, seen))
            latency.add_metric([route, method], buckets, total)
            labels = {"route": route, "method": method}
            latency.samples.append(Sample(name + "_created", labels, created))
        yield latency


class Metrics:
    """The app's Prometheus figures, in a registry of their own."""

    def __init__(
        self,
        tenants: Tenants,
        koban_clients: Callable[[], Mapping[str, KobanClient]] = dict,
        *,
        started_ms: int | None = None,
    ) -> None:
        self.tenants = tenants
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = _Requests()
        r.register(self._requests)
        # The per-request hot path (`api.middleware`).
        self.observe_request = self._requests.observe
        self.active = Gauge(
            "koban_options_active_options",
            "Options in the tenant's expiry index (read at scrape).",
            ["tenant"],
            registry=r,
        )
        self.sweeps = Histogram(
            "koban_options_sweep_duration_seconds",
            "Duration of expiry sweeps (one per tenant and tick).",
            ["tenant"],
            buckets=SWEEP_BUCKETS,
            registry=r,
        )
        self.drift = Counter(
            "koban_options_drift_detected",
            "koban.sync.drift_detected events seen in the tenant's stream since start.",
            ["tenant"],
            registry=r,
        )
        self.redis_up = Gauge(
            "koban_options_redis_up",
            "1 when the last scrape's Redis reads succeeded.",
            registry=r,
        )
        r.register(_KobanCalls(koban_clients))
        # The process's own figures (CPU, memory, descriptors; GC collections and pauses).
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        # Stream ids are "<ms>-<seq>" of Redis' clock: drift is counted from the app's start.
        start = started_ms if started_ms is not None else int(time.time() * 1000)
        self._drift_after = {name: f"{start}-0" for name in tenants}
        for name in tenants:
            self.active.labels(tenant=name)
            self.drift.labels(tenant=name)
        self._refresh_lock = asyncio.Lock()

    def observe_sweep(self, tenant: str, seconds: float) -> None:
        """Record one sweep's duration (the scheduler calls this after each tick)."""
        if math.isfinite(seconds) and seconds >= 0:
            self.sweeps.labels(tenant=tenant).observe(seconds)

    async def refresh(self) -> None:
        """Read the Redis-fed figures (active options, drift) before a scrape."""
        async with self._refresh_lock:
            try:
                async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                    await self._refresh()
            except STORE_FAILURES_OR_TIMEOUT:
                self.redis_up.set(0)
            else:
                self.redis_up.set(1)

    async def _refresh(self) -> None:
        counts = await active_counts({name: t.store for name, t in self.tenants.items()})
        for name, count in counts.items():
            self.active.labels(tenant=name).set(count)
        for name in self.tenants:
            await self._count_drift(name)

    async def _count_drift(self, name: str) -> None:
        store = self.tenants[name].store
        after = self._drift_after[name]
        seen = 0
        found = 0
        while seen < DRIFT_SCAN_BUDGET:
            entries = await event_types_after(store, after, DRIFT_SCAN_BATCH)
            for entry_id, kind in entries:
                after = entry_id
                if kind == DRIFT_EVENT_TYPE:
                    found += 1
            seen += len(entries)
            if len(entries) < DRIFT_SCAN_BATCH:
                break
        self._drift_after[name] = after
        if found:
            self.drift.labels(tenant=name).inc(found)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS_KEY = web.AppKey("api_metrics", Metrics)
HEALTH_REDIS_KEY = web.AppKey[RedisClient]("api_health_redis")
HEALTH_TENANTS_KEY = web.AppKey("api_health_tenants", Tenants)


def metrics_of(app: web.Application) -> Metrics:
    """The app's `Metrics` (the scheduler records sweeps through it)."""
    return app[METRICS_KEY]


# --------------------------------------------------------------------------- handlers


async def _ping(redis: RedisClient) -> RedisCheckOut:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await ping(redis)
    except TimeoutError:
        return RedisCheckOut(ok=False, latency_ms=None, error="timeout")
    except STORE_FAILURES as exc:
        return RedisCheckOut(ok=False, latency_ms=None, error=type(exc).__name__)
    latency = round((time.perf_counter() - started) * 1000, 2)
    return RedisCheckOut(ok=True, latency_ms=latency, error=None)


async def _scheduler(redis: RedisClient, tenants: Tenants) -> SchedulerOut | None:
    names = sorted(tenants)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            raw = await read_heartbeat(redis)
            ticked = await read_last_ticks(redis, [tenants[name].store for name in names])
    except STORE_FAILURES_OR_TIMEOUT:
        return None
    if raw is None:
        return None
    last_ticks = {
        name: int(value) if value is not None and value.isdigit() else None
        for name, value in zip(names, ticked, strict=True)
    }
    try:
        beat = float(raw)
    except ValueError:
        return None
    if not math.isfinite(beat) or not 0 <= beat < 253402300800:
        return None
    return SchedulerOut(
        last_beat=math.floor(beat),
        age_seconds=round(time.time() - beat, 3),
        last_ticks=last_ticks,
    )


async def readyz(request: web.Request) -> web.Response:
    redis = request.app[HEALTH_REDIS_KEY]
    check = await _ping(redis)
    scheduler = await _scheduler(redis, request.app[HEALTH_TENANTS_KEY]) if check.ok else None
    answer = ReadyOut(
        status="ready" if check.ok else "unavailable", redis=check, scheduler=scheduler
    )
    return json_response(dump(answer), 200 if check.ok else 503)


async def metrics(request: web.Request) -> web.Response:
    collected = request.app[METRICS_KEY]
    await collected.refresh()
    body = collected.exposition()
    workers = request.app.get(WORKERS_KEY)
    if workers is not None and request.query_string != LOCAL_QUERY:
        body = await merged_exposition(workers, body)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def _clients_of(app: web.Application) -> Callable[[], Mapping[str, KobanClient]]:
    def clients() -> Mapping[str, KobanClient]:
        pool = app.get(FLOWS_KEY)
        return dict(pool.clients) if pool is not None else {}

    return clients


def install_health(app: web.Application, redis: RedisClient, tenants: Tenants) -> Metrics:
    """Register ``/readyz``, ``/metrics`` and the app's `Metrics` on `app` (``/healthz``
    is the app's own; `service.entrypoints.api.middleware.api_middleware` counts the requests)."""
    collected = Metrics(tenants, _clients_of(app))
    app[METRICS_KEY] = collected
    app[HEALTH_REDIS_KEY] = redis
    app[HEALTH_TENANTS_KEY] = tenants
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return collected
