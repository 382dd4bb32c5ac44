"""The Redis store: lots, options, intents, indexes, counts, history and the event stream.

A transition is one atomic step (``commit.lua``): the lot's new value, every index and count
that follows from it, and its CloudEvents, guarded by the lot's revision. Writers never
lock: they read, let the chart decide, and commit; when another writer got there first the
commit is refused and the writer re-reads and re-decides. Indexes and counts are derived by
diffing the lot before and after, so they cannot drift from the lots. The hot path goes
through `LotStore.fast` when one is set (a `MuxReader`, installed by the API's
`install_fast_reads`: the same commands, the same answers, a cheaper transport).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from redis.asyncio.cluster import RedisCluster

from service.storage.codec import decode_lot, encode_lot
from service.storage.commit_script import LUA_COMMIT, Transition, flatten
from service.storage.events import (
    DEFAULT_PUBLIC_BASE_URL,
    cloud_event,
    expand_history_entry,
    history_entry,
)
from service.storage.keys import API_USER_FIELD, TenantKeys, prospect_field
from service.storage.lot_view import (
    ChangeFn,
    Counts,
    StoreConflict,
    View,
    new_id,
    view,
)
from service.storage.lot_writes import LotWrites
from service.storage.redis_client import RedisClient
from service.storage.redis_mux import Command, MuxReader
from statecharts import transitions as tr
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot, Rules

T = TypeVar("T")

__all__ = ["ChangeFn", "Counts", "LotStore", "StoreConflict", "View", "new_id", "view"]


class LotStore(LotWrites):
    """One tenant's lots in Redis: reads, the one write path (`mutate`), and the business
    operations over it (`LotWrites`)."""

    def __init__(
        self,
        redis: RedisClient,
        tenant: str,
        rules: Rules,
        *,
        history_cap: int = 500,
        max_attempts: int = 200,
        public_base_url: str = DEFAULT_PUBLIC_BASE_URL,
    ) -> None:
        self.redis = redis
        self.tenant = tenant
        self.public_base_url = public_base_url  # events' `dataschema` lives under it
        self.rules = rules
        self.keys = TenantKeys(tenant)
        self.history_cap = history_cap
        self.max_attempts = max_attempts
        self._commit = redis.register_script(LUA_COMMIT)
        # On a Redis Cluster the scripts get every key declared (commit.lua, sweep.lua).
        self.cluster = isinstance(redis, RedisCluster)
        # The hot path's transport when set (see the module doc); else `redis`.
        self.fast: MuxReader | None = None

    # --- reads ------------------------------------------------------------------------

    async def run_reads(self, via: MuxReader | None, *commands: Command) -> list[Any]:
        """The replies to the read `commands`, sent together: through `via` (the store's
        own hot path is `self.fast`) when there is one, else through redis-py (one
        pipeline, no transaction, for several)."""
        if via is not None:
            return await via.execute(*commands)
        if len(commands) == 1:
            return [await self.redis.execute_command(*commands[0])]
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

    async def load_raw(self, extcode: str) -> bytes | None:
        """The lot's stored value (``"<rev>|<json>"``), or None."""
        (raw,) = await self.run_reads(self.fast, ("GET", self.keys.lot(extcode)))
        return cast(bytes | None, raw)

    async def load(self, extcode: str) -> Lot | None:
        """The lot as stored (due options possibly not yet swept)."""
        raw = await self.load_raw(extcode)
        return decode_lot(extcode, raw) if raw is not None else None

    async def read(self, extcode: str, now: int) -> Lot | None:
        """The lot as of `now`: lazy expiry applied in memory, nothing written."""
        return (await self.read_with_raw(extcode, now))[0]

    async def read_with_raw(self, extcode: str, now: int) -> tuple[Lot | None, bytes | None]:
        """`read`, and the stored value it decoded (for `mutate(known=...)` later)."""
        raw = await self.load_raw(extcode)
        if raw is None:
            return None, None
        return self.as_of(extcode, raw, now), raw

    def as_of(self, extcode: str, raw: bytes, now: int) -> Lot:
        """The lot stored as `raw`, as of `now` (options due by then lazily expired)."""
        lot = decode_lot(extcode, raw)
        tr.expire_due(lot, now, self.rules)
        return lot

    async def counts(self, holder: str | None = None) -> Counts:
        fields = [API_USER_FIELD] + ([prospect_field(holder)] if holder else [])
        (values,) = await self.run_reads(self.fast, ("HMGET", self.keys.counts, *fields))
        user = int(values[0] or 0)
        prospect = int(values[1] or 0) if holder else 0
        return Counts(prospect, user)

    async def history(self, extcode: str) -> list[dict[str, Any]]:
        """The lot's CloudEvents, oldest first (kept apart from the stream's retention)."""
        raw = cast(bytes | None, await self.redis.get(self.keys.history(extcode)))
        if not raw:
            return []
        base = self.public_base_url
        return [expand_history_entry(self.tenant, extcode, line, base) for line in raw.split(b"\n")]

    # --- the one write path -----------------------------------------------------------------

    def event(self, extcode: str, event: DomainEvent, sequence: int, version: int) -> bytes:
        """The stream's CloudEvent for one of this tenant's events."""
        return cloud_event(self.tenant, extcode, event, sequence, version, self.public_base_url)

    @staticmethod
    def history_line(event: DomainEvent, sequence: int, version: int) -> bytes:
        return history_entry(event, sequence, version)

    def transition(
        self,
        before: View,
        new: Lot,
        events: Sequence[DomainEvent],
        now: int,
        limits: Mapping[str, int] | None = None,
    ) -> Transition:
        """One transition for ``commit.lua``, from the lot's view before the change.

        Stamps `new` in place: next revision, and when there are events the next version
        (one bump for all of them) and one sequence number each.
        """
        after = view(new)
        new.rev = before.rev + 1
        stream: list[bytes] = []
        history: list[bytes] = []
        if events:
            new.version = before.version + 1
            new.modified_at = now
            for event in events:
                new.sequence += 1
                stream.append(self.event(new.extcode, event, new.sequence, new.version))
                history.append(self.history_line(event, new.sequence, new.version))
        code = new.extcode
        deltas = after.counts.copy()
        deltas.subtract(before.counts)
        limits = limits or {}
        return Transition(
            before.rev,
            encode_lot(new),
            code,
            new.modified_at if events or before.rev == 0 else "",
            [m for m in before.expiries if m not in after.expiries],
            [
                x
                for m, score in after.expiries.items()
                if before.expiries.get(m) != score
                for x in (score, m)
            ],
            [x for f, d in deltas.items() if d for x in (f, d, limits.get(f, 0))],
            [
                x
                for oid, o in before.options.items()
                if oid not in after.options and o.holder is not None
                for x in (f"{code}|{o.holder}|{o.deadline}|{oid}", now)
            ],
            [m for m in before.intents if m not in after.intents],
            [x for m, t in after.intents.items() if m not in before.intents for x in (t, m)],
            stream,
            history,
        )

    async def commit(self, transitions: Sequence[Transition], mode: str = "all") -> Any:
        k = self.keys
        keys = [k.counts, k.expiries, k.lots, k.tombstones, k.intents, k.events]
        if self.cluster:  # each transition's lot and history keys, declared (commit.lua)
            keys += [key for t in transitions for key in (k.lot(t.extcode), k.history(t.extcode))]
        args = flatten(mode, self.history_cap, k, transitions)
        fast = self.fast
        if fast is not None:
            return await fast.evalsha(self._commit.sha, LUA_COMMIT, keys, args)
        return await self._commit(keys=keys, args=args)

    async def mutate(
        self,
        extcode: str,
        change: ChangeFn[T],
        *,
        now: int,
        holder: str | None = None,
        limits: Mapping[str, int] | None = None,
        create: Callable[[], Lot] | None = None,
        prefetch: Callable[[], Awaitable[Any]] | None = None,
        known: bytes | None = None,
        written: list[bytes] | None = None,
    ) -> T:
        """Read, decide, commit; on a lost race re-read and re-decide (unless the lot now
        holds exactly what the refused commit wrote: a resent commit that had landed).

        `known` (optional, for a change that uses no counts: they are zero then) is the
        lot's stored value as the caller last read it: the first attempt decides on it
        instead of reading. Only a landed commit counts — its revision check proves the
        value was still current — so a stale one costs a refused commit, never a decision:
        a change that raises, or has nothing to write, on it is decided again on a fresh
        read.

        `prefetch` (optional) is awaited at every attempt *before* the lot is read and its
        result handed to `change` as ``counts.extra``: data written only together with a
        lot change (tombstones, say) read this way is consistent with the lot, because a
        later write would bump the revision and fail this attempt's commit.

        Due options are expired first, in the same step (their events keep their own
        ticks), so a write always judges the lot as of `now`; options whose expiring notice
        is due by `now` get it in the same step (`transitions.expiring_notices`). `create`
        builds the lot when it does not exist yet (imports, webhooks about unknown lots);
        otherwise an unknown lot is refused with LOT_UNKNOWN.

        `written` (optional) receives the lot's new stored value when a commit lands (the
        placement flow judges Koban's answer on it instead of reading the lot again).
        """
        lot_key = self.keys.lot(extcode)
        fields = [API_USER_FIELD] + ([prospect_field(holder)] if holder else [])
        attempted: tuple[bytes, T] | None = None  # the last refused commit's value, result
        for _ in range(self.max_attempts):
            extra = await prefetch() if prefetch is not None else None
            optimistic = known is not None
            if known is not None:
                raw, values, known = known, [None, None], None
            else:
                raw, values = await self.run_reads(
                    self.fast, ("GET", lot_key), ("HMGET", self.keys.counts, *fields)
                )
            if attempted is not None and raw == attempted[0]:
                # That commit did land: its reply was lost and redis-py's retry sent the
                # script again, which found the lot already at its own revision. Deciding
                # again would judge the change against itself (an intent refused as
                # PROSPECT_ALREADY_HOLDS by its own reservation).
                return attempted[1]
            counts = Counts(int(values[1] or 0) if holder else 0, int(values[0] or 0), extra)
            if raw is None:
                if create is None:
                    raise RuleViolation(ErrorCode.LOT_UNKNOWN, f"lot {extcode} is unknown")
                lot = create()
            else:
                lot = decode_lot(extcode, raw)
            before = view(lot)
            events = tr.expire_due(lot, now, self.rules)
            if events:  # options lazily expired here no longer count toward the limits
                freed = before.counts.copy()
                freed.subtract(view(lot).counts)
                counts = Counts(
                    counts.prospect - (freed[fields[1]] if holder else 0),
                    counts.user - freed[API_USER_FIELD],
                    extra,
                )
            try:
                more, result = change(lot, counts)
            except Exception:
                if optimistic:
                    continue  # judged on a value that may be stale: decide on a fresh one
                raise
            events.extend(more)
            # Options created or moved into the notice window get it now, whichever path
            # moved them (transitions do it themselves; Koban's dates learned by webhook
            # or reconciliation are set outside them).
            events.extend(tr.expiring_notices(lot, now, self.rules, at=now))
            if raw is not None and not events and encode_lot(lot) == raw:
                if optimistic:
                    continue  # nothing proves that value current: read it
                return result  # nothing to write (e.g. a replayed webhook)
            transition = self.transition(before, lot, events, now, limits)
            reply = await self.commit([transition])
            if reply[0] == b"ok":
                if written is not None:
                    written.append(transition.value)
                return result
            # b"rev": another writer won; b"limit": a count moved; both: re-read, re-decide.
            attempted = (transition.value, result)
        raise StoreConflict(f"lot {extcode}: too many concurrent writers")
