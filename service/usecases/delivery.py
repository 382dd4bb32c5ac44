"""The deliverer: each subscription's events pushed to its URL, signed, in order per entity.

`Deliverer` (one per daemon process) looks for active subscriptions every `scan_s` and
starts a `SubscriptionWorker` for each whose lease it wins: one deliverer per subscription
wherever the daemons run. A worker takes new stream entries into per-``partitionkey``
queues and delivers each due partition's head in its own task (up to `max_in_flight`), so
a failing entity waits on its own retry schedule while the others go on. An event leaves
its queue only after a 2xx or after its last retry: a crash at any point delivers it again
later with the same ``webhook-id`` (at least once). Retries are scheduled on the tenant's
clock; the lease and the signature timestamps are real time. One attempt (the POST itself)
is `delivery_attempt.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.outbound.signing import SecretBox, SecretBoxError, signature_headers
from service.outbound.targets import TargetPolicy, guarded_session
from service.storage.lease import Lease
from service.storage.subscriptions import DeliveryRecord, QueuedEvent, Subscription
from service.tenancy import Tenant, Tenants
from service.usecases.delivery_attempt import (
    CONTENT_TYPE,
    GONE_REASON,
    AttemptResult,
    policy_of,
    retry_delays,
    send,
    webhook_id,
)

__all__ = [
    "CONTENT_TYPE",
    "GONE_REASON",
    "AttemptResult",
    "Deliverer",
    "DeliveryMetrics",
    "SubscriptionWorker",
    "policy_of",
    "send",
    "webhook_id",
]

log = structlog.get_logger("service.usecases.delivery")

GAP_TYPE = "koban.subscription.gap"  # a delivery log line: events lost to retention
# How stale a worker's copy of its subscription may be (a changed URL, a new secret, an
# operator's "inactive"): one read per step would cost a round trip per completion.
SUB_REFRESH_S = 0.25


# --------------------------------------------------------------------------- metrics


class DeliveryMetrics:
    """Deliveries by outcome and the lag from commit to acknowledgement (labels name the
    subscription id, never its URL)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.attempts = Counter(
            "koban_options_deliveries",
            "Delivery attempts by outcome (ok, retry, failed).",
            ["tenant", "subscription", "outcome"],
            registry=registry,
        )
        self.lag = Histogram(
            "koban_options_delivery_lag_seconds",
            "From the event's commit (its stream id) to the receiver's 2xx.",
            ["tenant"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600),
            registry=registry,
        )


# --------------------------------------------------------------------------- a worker


class SubscriptionWorker:
    """Delivers one subscription while holding its lease."""

    def __init__(
        self,
        tenant: Tenant,
        sub_id: str,
        session: aiohttp.ClientSession,
        lease: Lease,
        *,
        max_in_flight: int = 32,
        poll_s: float = 0.05,
        metrics: DeliveryMetrics | None = None,
        on_ack: Callable[[str, QueuedEvent], None] | None = None,
    ) -> None:
        assert tenant.subscriptions is not None
        self.tenant = tenant
        self.store = tenant.subscriptions
        self.sub_id = sub_id
        self.session = session
        self.lease = lease
        self.max_in_flight = max_in_flight
        self.poll_s = poll_s
        self.metrics = metrics
        self.on_ack = on_ack
        self.stopping = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._sub: Subscription | None = None
        self._read_at = 0.0
        self._started = False
        self._opened: dict[str, str] = {}  # sealed -> secret, for this worker's life

    async def run(self) -> None:
        renew_every = self.lease.ttl_ms / 3000
        renewed = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    if time.monotonic() - renewed >= renew_every:
                        if not await self.lease.renew():
                            log.warning("delivery_lease_lost", subscription=self.sub_id)
                            return
                        renewed = time.monotonic()
                    if not await self._step():
                        return
                except Exception as exc:  # Redis away: the queues wait; try again soon
                    if self.stopping.is_set():
                        return
                    log.warning(
                        "delivery_worker_error", subscription=self.sub_id, error=type(exc).__name__
                    )
                pause = asyncio.ensure_future(asyncio.sleep(self.poll_s))
                await asyncio.wait(
                    {pause, *self._in_flight.values()}, return_when="FIRST_COMPLETED"
                )
                pause.cancel()
        finally:
            tasks = list(self._in_flight.values())
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await self.lease.release()

    async def _step(self) -> bool:
        """Take new events, start the due partitions; False when the subscription is gone
        or inactive."""
        if self._sub is None or time.monotonic() - self._read_at >= SUB_REFRESH_S:
            self._sub = await self.store.get(self.sub_id)
            self._read_at = time.monotonic()
        sub = self._sub
        if sub is None or sub.status != "active":
            return False
        now = self.tenant.clock.now()
        if not self._started:
            self._started = True
            await self._check_gap(sub, now)
        try:
            box = self.tenant.secret_box
            if box is None:
                raise SecretBoxError("no subscription key")
            for sealed in sub.live_secrets(now):
                self._open(box, sealed.sealed)
        except SecretBoxError:
            # Never send unsigned: stop (the scan tries again) and say so, by id only.
            log.error("subscription_secret_unreadable", subscription=sub.id)
            return False
        await self.store.take_new(sub, now)
        free = self.max_in_flight - len(self._in_flight)
        if free > 0:
            due = await self.store.due(sub.id, now, free + len(self._in_flight))
            starting = [p for p in due if p not in self._in_flight][:free]
            for partition, item, made in await self.store.heads(sub.id, starting):
                self._launch(partition, (item, made))
        return True

    def _launch(self, partition: str, head: tuple[QueuedEvent, int]) -> None:
        task = asyncio.create_task(self._partition(partition, head))
        self._in_flight[partition] = task

        def forget(_: asyncio.Task[None]) -> None:
            if self._in_flight.get(partition) is task:
                del self._in_flight[partition]

        task.add_done_callback(forget)

    async def _partition(self, partition: str, head: tuple[QueuedEvent, int]) -> None:
        """Deliver the partition's heads one after the other, starting with the due `head`
        (and the attempts made on it), while they succeed or are given up; stop at the
        first that must wait for a retry."""
        item, made = head
        try:
            while not self.stopping.is_set():
                # The worker's copy, refreshed by its steps: a status change or a delete in
                # between is caught by `finish` (which reports it and changes nothing).
                sub = self._sub
                if sub is None or sub.status != "active":
                    return
                outcome, following = await self.attempt(sub, partition, item, made + 1)
                if following is None or outcome not in ("ok", "failed"):
                    return
                item, made = following, 0
        except Exception as exc:  # logged; the head stays queued and is tried again
            log.error("delivery_error", subscription=self.sub_id, error=type(exc).__name__)

    async def _check_gap(self, sub: Subscription, now: int) -> None:
        """A subscription back after longer than retention: the trimmed events cannot be
        sent; the log and a warning say so, and delivery goes on from what is retained."""
        cursor = await self.store.trimmed_after(sub.id)
        if cursor is None:
            return
        log.warning("delivery_gap", subscription=sub.id, after=cursor)
        record = DeliveryRecord(
            "",
            GAP_TYPE,
            0,
            now,
            None,
            f"events after stream entry {cursor} were trimmed (event_retention) before delivery",
            0,
            None,
        )
        await self.store.log(sub.id, record, self.tenant.settings.delivery_log_size)

    def _open(self, box: SecretBox, sealed: str) -> str:
        secret = self._opened.get(sealed)
        if secret is None:
            secret = self._opened[sealed] = box.open(sealed)
        return secret

    async def attempt(
        self, sub: Subscription, partition: str, item: QueuedEvent, number: int
    ) -> tuple[str, QueuedEvent | None]:
        """One signed POST of `item`, and its outcome recorded. Returns ``ok``, ``retry``,
        ``failed``, ``inactive`` (the subscription turned inactive), ``stale`` or ``deleted``."""
        settings = self.tenant.settings
        event: dict[str, Any] = orjson.loads(item.body)
        event_id, event_type = str(event.get("id", "")), str(event.get("type", ""))
        box = self.tenant.secret_box
        if box is None:
            raise SecretBoxError("no subscription key configured")
        now = self.tenant.clock.now()
        secrets = [self._open(box, s.sealed) for s in sub.live_secrets(now)]
        if not secrets:
            raise SecretBoxError("the subscription has no live secret")
        headers = signature_headers(
            webhook_id(self.tenant.name, event_id), item.body.decode(), secrets
        )
        result = await send(
            self.session,
            sub.url,
            item.body,
            headers,
            settings.delivery_timeout.fixed_seconds(),
            policy_of(settings),
        )
        now = self.tenant.clock.now()
        delays = retry_delays(settings)
        next_at: int | None = None
        if result.ok:
            outcome = "ok"
        elif number > len(delays):
            outcome = "failed"
        else:
            outcome = "retry"
            next_at = now + delays[number - 1]
        record = DeliveryRecord(
            event_id,
            event_type,
            number,
            now,
            result.status,
            result.error,
            result.duration_ms,
            next_at,
        )
        status, following = await self.store.finish(
            sub.id,
            partition,
            item,
            outcome,
            now,
            next_at,
            record,
            log_size=settings.delivery_log_size,
            disable_after_s=int(settings.disable_after.fixed_seconds()),
            disable_reason=GONE_REASON if result.status == 410 else "",
        )
        if status in ("stale", "deleted"):
            return status, None
        if self.metrics is not None:
            self.metrics.attempts.labels(self.tenant.name, sub.id, outcome).inc()
            if result.ok and not item.replay:
                committed_ms = int(item.stream_id.split("-", 1)[0])
                self.metrics.lag.labels(self.tenant.name).observe(
                    max(0.0, time.time() - committed_ms / 1000)
                )
        if result.ok and self.on_ack is not None:
            self.on_ack(sub.id, item)
        if status == "inactive":
            log.warning(
                "subscription_disabled", subscription=sub.id, attempt=number, status=result.status
            )
            return "inactive", None
        if outcome == "failed":
            log.warning("delivery_given_up", subscription=sub.id, event=event_id)
        return outcome, following


# --------------------------------------------------------------------------- the process


SessionFactory = Callable[[TargetPolicy], aiohttp.ClientSession]


class Deliverer:
    """Every subscription of `tenants` this process wins the lease of, delivered."""

    def __init__(
        self,
        tenants: Tenants,
        *,
        registry: CollectorRegistry | None = None,
        metrics: DeliveryMetrics | None = None,
        scan_s: float = 1.0,
        poll_s: float = 0.05,
        lease_ttl_ms: int = 15_000,
        max_in_flight: int = 32,
        session_factory: SessionFactory = guarded_session,
        on_ack: Callable[[str, QueuedEvent], None] | None = None,
    ) -> None:
        self.tenants = tenants
        self.on_ack = on_ack
        self.metrics = metrics or (DeliveryMetrics(registry) if registry is not None else None)
        self.scan_s = scan_s
        self.poll_s = poll_s
        self.lease_ttl_ms = lease_ttl_ms
        self.max_in_flight = max_in_flight
        self.session_factory = session_factory
        self.workers: dict[tuple[str, str], tuple[SubscriptionWorker, asyncio.Task[None]]] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._scanner: asyncio.Task[None] | None = None
        self._closing = False

    def _session(self, tenant: Tenant) -> aiohttp.ClientSession:
        session = self._sessions.get(tenant.name)
        if session is None:
            session = self._sessions[tenant.name] = self.session_factory(policy_of(tenant.settings))
        return session

    async def start(self) -> None:
        self._closing = False
        self._scanner = asyncio.create_task(self._scan_forever())

    async def _scan_forever(self) -> None:
        # The flag, not only the cancellation, ends the loop: redis-py may turn a
        # cancellation that lands inside a command into a ConnectionError.
        while not self._closing:
            try:
                await self.scan()
            except Exception as exc:  # Redis away: try again at the next scan
                if self._closing:
                    return
                log.warning("delivery_scan_failed", error=type(exc).__name__)
            await asyncio.sleep(self.scan_s)

    async def scan(self) -> int:
        """Start a worker for every active subscription whose lease this process wins."""
        started = 0
        for tenant in self.tenants.values():
            store = tenant.subscriptions
            if store is None or tenant.secret_box is None:
                continue
            for sub in await store.all():
                key = (tenant.name, sub.id)
                running = self.workers.get(key)
                if running is not None and not running[1].done():
                    continue
                if sub.status != "active":
                    continue
                lease = Lease(store.redis, store.keys.lease(sub.id), self.lease_ttl_ms)
                if not await lease.acquire():
                    continue
                worker = SubscriptionWorker(
                    tenant,
                    sub.id,
                    self._session(tenant),
                    lease,
                    max_in_flight=self.max_in_flight,
                    poll_s=self.poll_s,
                    metrics=self.metrics,
                    on_ack=self.on_ack,
                )
                self.workers[key] = (worker, asyncio.create_task(worker.run()))
                started += 1
        return started

    async def stop(self) -> None:
        self._closing = True
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
            self._scanner = None
        for worker, _ in self.workers.values():
            worker.stopping.set()
        tasks = [task for _, task in self.workers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.workers.clear()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
