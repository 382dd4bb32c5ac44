"""Webhook subscriptions in Redis: their configuration, their delivery queues and log.

Per subscription (keys in `SubscriptionKeys`): the stream position taken so far (cursor);
one FIFO list per ``partitionkey`` of events still to deliver, the head being the one in
flight; a sorted set of partitions scored by their head's next attempt (the durable retry
schedule, on the tenant's clock); attempts made on each head; a capped delivery log. Taking
stream entries into the queues moves the cursor in the same ``MULTI``; an attempt's outcome
is one script (``subscriptions.lua``) that ignores a stale caller. Secrets are stored sealed
(`service.outbound.signing.SecretBox`); this module never sees them in clear.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.exceptions import ResponseError

from service.storage.keys import SubscriptionKeys, TenantKeys
from service.storage.redis_client import RedisClient
from service.storage.scripts import lua_script

__all__ = [
    "DeliveryRecord",
    "QueuedEvent",
    "SealedSecret",
    "Subscription",
    "SubscriptionStore",
    "matches",
]

LUA_FINISH = lua_script("subscriptions.lua")
STREAM_PAGE = 500
NO_PARTITION = "_"
# A configuration written back only while the subscription exists (not after a DELETE).
_SAVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def matches(types: Sequence[str], event_type: str) -> bool:
    """Does a subscription to `types` (exact types, ``prefix.*`` or ``*``) want the event?"""
    for pattern in types:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


@dataclass(frozen=True, slots=True)
class SealedSecret:
    sealed: str
    until: int | None = None  # tenant clock: signs until then (a rotated-out secret)


@dataclass(slots=True)
class Subscription:
    id: str
    name: str
    url: str
    types: list[str]
    created_at: int
    secrets: list[SealedSecret]
    status: str = "active"
    disabled_reason: str | None = None
    failure_count: int = 0
    last_success_at: int | None = None
    failing_since: int | None = None

    def config_json(self) -> bytes:
        return orjson.dumps(
            {
                "name": self.name,
                "url": self.url,
                "types": self.types,
                "createdAt": self.created_at,
                "secrets": [{"k": s.sealed, "until": s.until} for s in self.secrets],
            }
        )

    def live_secrets(self, now: int) -> list[SealedSecret]:
        return [s for s in self.secrets if s.until is None or s.until > now]


def _subscription(sub_id: str, config: bytes, state: dict[bytes, bytes]) -> Subscription:
    raw = orjson.loads(config)

    def num(name: bytes) -> int | None:
        value = state.get(name)
        return int(float(value)) if value is not None else None

    reason = state.get(b"disabledReason")
    return Subscription(
        id=sub_id,
        name=raw["name"],
        url=raw["url"],
        types=list(raw["types"]),
        created_at=int(raw["createdAt"]),
        secrets=[SealedSecret(s["k"], s.get("until")) for s in raw["secrets"]],
        status=(state.get(b"status") or b"active").decode(),
        disabled_reason=reason.decode() if reason else None,
        failure_count=num(b"failureCount") or 0,
        last_success_at=num(b"lastSuccessAt"),
        failing_since=num(b"failingSince"),
    )


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """A queue item: the stream entry id, whether it is a replay, the CloudEvent JSON as
    stored in the stream (the body sent, byte for byte)."""

    stream_id: str
    replay: bool
    body: bytes
    raw: bytes = field(repr=False, default=b"")  # the item as stored (the script's check)

    def encode(self) -> bytes:
        return f"{self.stream_id}\n{int(self.replay)}\n".encode() + self.body

    @classmethod
    def decode(cls, raw: bytes) -> QueuedEvent:
        sid, replay, body = raw.split(b"\n", 2)
        return cls(sid.decode(), replay == b"1", body, raw)


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One line of the delivery log."""

    event_id: str
    type: str
    attempt: int
    at: int
    status: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: int | None

    def encode(self) -> bytes:
        return orjson.dumps(
            [
                self.event_id,
                self.type,
                self.attempt,
                self.at,
                self.status,
                self.error,
                self.duration_ms,
                self.next_attempt_at,
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> DeliveryRecord:
        return cls(*orjson.loads(raw))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_pos(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _partition(event: dict[str, Any]) -> str:
    key = event.get("partitionkey") or event.get("subject")
    return str(key) if key else NO_PARTITION


class SubscriptionStore:
    """A tenant's subscriptions; `events_key` is its event stream."""

    def __init__(self, redis: RedisClient, tenant: str) -> None:
        self.redis = redis
        self.tenant = tenant
        self.keys = SubscriptionKeys(tenant)
        self.events_key = TenantKeys(tenant).events
        self._finish = redis.register_script(LUA_FINISH)
        self._save = redis.register_script(_SAVE)

    # ------------------------------------------------------------------ configuration

    @staticmethod
    def new_id() -> str:
        return "sub_" + _random.token_hex(8)

    async def stream_end(self) -> str:
        """The id after which new events will come (``0-0`` without a stream yet)."""
        try:
            info = await self.redis.xinfo_stream(self.events_key)
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            return "0-0"
        return _text(info.get("last-generated-id") or b"0-0")

    async def create(self, sub: Subscription) -> None:
        """Store `sub`; it receives the events committed from now on."""
        k = self.keys
        cursor = await self.stream_end()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.index, sub.id, sub.config_json())
            pipe.delete(k.state(sub.id))
            pipe.hset(k.state(sub.id), mapping={"status": "active", "failureCount": 0})
            pipe.set(k.cursor(sub.id), cursor)
            await pipe.execute()

    async def get(self, sub_id: str) -> Subscription | None:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(k.index, sub_id)
            pipe.hgetall(k.state(sub_id))
            config, state = await pipe.execute()
        if config is None:
            return None
        return _subscription(sub_id, config, state)

    async def ids(self) -> list[str]:
        return sorted(_text(i) for i in await self.redis.hkeys(self.keys.index))

    async def all(self) -> list[Subscription]:
        out = []
        for sub_id in await self.ids():
            sub = await self.get(sub_id)
            if sub is not None:
                out.append(sub)
        return out

    async def save_config(self, sub: Subscription) -> bool:
        """Write `sub`'s configuration back, if it still exists (False otherwise)."""
        k = self.keys
        return bool(await self._save(keys=[k.index], args=[sub.id, sub.config_json()]))

    async def set_status(self, sub_id: str, status: str, now: int) -> None:
        """``active`` clears the reason and the failing streak and makes every waiting
        partition due now (delivery resumes where it stopped); ``inactive`` (by an
        operator) keeps the queues as they are."""
        k = self.keys
        if status == "inactive":
            await self.redis.hset(
                k.state(sub_id), mapping={"status": "inactive", "disabledReason": "by an operator"}
            )
            return
        due = cast(list[Any], await self.redis.zrangebyscore(k.due(sub_id), now, "+inf"))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.state(sub_id), "status", "active")
            pipe.hdel(k.state(sub_id), "disabledReason", "failingSince")
            if due:
                pipe.zadd(k.due(sub_id), {p: now for p in due}, xx=True)
            await pipe.execute()

    async def delete(self, sub_id: str) -> bool:
        k = self.keys
        partitions = cast(list[Any], await self.redis.zrange(k.due(sub_id), 0, -1))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(k.index, sub_id)
            pipe.delete(
                k.state(sub_id), k.cursor(sub_id), k.due(sub_id), k.attempts(sub_id), k.log(sub_id)
            )
            for p in partitions:
                pipe.delete(k.queue(sub_id, _text(p)))
            removed, *_ = await pipe.execute()
        return bool(removed)

    # ------------------------------------------------------------------ queues

    async def take_new(self, sub: Subscription, now: int, count: int = STREAM_PAGE) -> int:
        """Queue the stream entries after the cursor that `sub` wants (at most `count`
        read); the cursor moves in the same step. Returns how many were read."""
        k = self.keys
        cursor = _text(await self.redis.get(k.cursor(sub.id)) or b"0-0")
        entries = cast(
            list[Any],
            await self.redis.xrange(self.events_key, min=f"({cursor}", max="+", count=count),
        )
        if not entries:
            return 0
        last = _text(entries[-1][0])
        await self._enqueue(sub.id, self._wanted(sub, entries, replay=False), now, cursor=last)
        return len(entries)

    def _wanted(
        self, sub: Subscription, entries: Iterable[Any], *, replay: bool
    ) -> list[tuple[str, QueuedEvent]]:
        out = []
        for raw_id, fields in entries:
            body = fields[b"ce"]
            event = orjson.loads(body)
            if matches(sub.types, str(event.get("type", ""))):
                out.append((_partition(event), QueuedEvent(_text(raw_id), replay, body)))
        return out

    async def _enqueue(
        self,
        sub_id: str,
        items: Sequence[tuple[str, QueuedEvent]],
        now: int,
        cursor: str | None = None,
    ) -> None:
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            for partition, item in items:
                pipe.rpush(k.queue(sub_id, partition), item.encode())
                # NX: a partition waiting for a retry keeps its schedule.
                pipe.zadd(k.due(sub_id), {partition: now}, nx=True)
            if cursor is not None:
                pipe.set(k.cursor(sub_id), cursor)
            await pipe.execute()

    async def replay(
        self,
        sub: Subscription,
        now: int,
        *,
        after: str | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> int:
        """Queue again the retained events `sub` wants: after the stream id `after`, and/or
        whose CloudEvent ``time`` is within [`start`, `end`]. Returns how many."""
        from statecharts.ticks import to_iso  # ISO-8601 UTC with Z sorts as text

        low, high = (
            (to_iso(start) if start is not None else None),
            (to_iso(end) if end is not None else None),
        )
        position = f"({after}" if after else "-"
        queued = 0
        while True:
            entries = cast(
                list[Any],
                await self.redis.xrange(self.events_key, min=position, max="+", count=STREAM_PAGE),
            )
            if not entries:
                return queued
            wanted = []
            for partition, item in self._wanted(sub, entries, replay=True):
                time = str(orjson.loads(item.body).get("time", ""))
                if (low is None or time >= low) and (high is None or time <= high):
                    wanted.append((partition, item))
            if wanted:
                await self._enqueue(sub.id, wanted, now)
                queued += len(wanted)
            position = "(" + _text(entries[-1][0])

    async def due(self, sub_id: str, now: int, limit: int) -> list[str]:
        found = await self.redis.zrangebyscore(
            self.keys.due(sub_id), "-inf", now, start=0, num=limit
        )
        return [_text(p) for p in cast(list[Any], found)]

    async def heads(
        self, sub_id: str, partitions: Sequence[str]
    ) -> list[tuple[str, QueuedEvent, int]]:
        """Each partition's head and the attempts made on it, in one round trip (empty
        queues left out)."""
        if not partitions:
            return []
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.lindex(k.queue(sub_id, p), 0)
            pipe.hmget(k.attempts(sub_id), list(partitions))
            *raws, attempts = await pipe.execute()
        empty = [p for p, raw in zip(partitions, raws, strict=True) if raw is None]
        if empty:  # never left so by this module; an empty queue must not stay due
            await self.redis.zrem(k.due(sub_id), *empty)
        return [
            (p, QueuedEvent.decode(raw), int(made or 0))
            for p, raw, made in zip(partitions, raws, attempts, strict=True)
            if raw is not None
        ]

    async def trimmed_after(self, sub_id: str) -> str | None:
        """The cursor, when events after it were trimmed from the stream before being
        taken (a subscription inactive for longer than retention); None otherwise."""
        cursor = _text(await self.redis.get(self.keys.cursor(sub_id)) or b"0-0")
        try:
            info = await self.redis.xinfo_stream(self.events_key)
        except ResponseError:
            return None  # no stream: nothing was trimmed
        deleted = _text(info.get("max-deleted-entry-id") or b"0-0")
        if _stream_pos(cursor) < _stream_pos(deleted):
            await self.redis.set(self.keys.cursor(sub_id), deleted)
            return cursor
        return None

    async def finish(
        self,
        sub_id: str,
        partition: str,
        item: QueuedEvent,
        outcome: str,
        now: int,
        next_at: int | None,
        record: DeliveryRecord,
        *,
        log_size: int,
        disable_after_s: int,
        disable_reason: str = "",
    ) -> tuple[str, QueuedEvent | None]:
        """Apply an attempt's outcome (``ok``, ``retry``, ``failed``); returns the
        subscription's status after it (``stale`` / ``deleted`` when nothing changed) and,
        when the head left and the subscription is active, the partition's next head (no
        attempt made on it yet)."""
        k = self.keys
        result = await self._finish(
            keys=[
                k.index,
                k.state(sub_id),
                k.due(sub_id),
                k.queue(sub_id, partition),
                k.attempts(sub_id),
                k.log(sub_id),
            ],
            args=[
                sub_id,
                partition,
                item.raw or item.encode(),
                outcome,
                now,
                next_at if next_at is not None else now,
                record.encode(),
                log_size,
                disable_after_s,
                disable_reason,
            ],
        )
        if isinstance(result, (bytes, str)):  # 'stale' / 'deleted'
            return _text(result), None
        status = _text(result[0])
        return status, (QueuedEvent.decode(result[1]) if len(result) > 1 else None)

    async def pending(self, sub_id: str) -> int:
        """Events queued, in flight included (tests, metrics)."""
        k = self.keys
        partitions = cast(list[Any], await self.redis.zrange(k.due(sub_id), 0, -1))
        total = 0
        for p in partitions:
            total += int(await self.redis.llen(k.queue(sub_id, _text(p))))
        return total

    # ------------------------------------------------------------------ the log

    async def log(self, sub_id: str, record: DeliveryRecord, size: int) -> None:
        await self.redis.xadd(self.keys.log(sub_id), {"e": record.encode()}, maxlen=size)

    async def deliveries(
        self, sub_id: str, limit: int, cursor: str | None
    ) -> tuple[list[DeliveryRecord], str | None]:
        """Newest first; the cursor is the log entry id to continue below."""
        entries = cast(
            list[Any],
            await self.redis.xrevrange(
                self.keys.log(sub_id), max=f"({cursor}" if cursor else "+", min="-", count=limit
            ),
        )
        records = [DeliveryRecord.decode(fields[b"e"]) for _, fields in entries]
        more = _text(entries[-1][0]) if len(entries) == limit else None
        return records, more
