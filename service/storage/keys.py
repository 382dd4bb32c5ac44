"""Every Redis key of the service, built in one place.

All keys of a tenant share the hash tag ``{tenant}`` so that they live in one Redis Cluster
slot: a tenant's transition (lot, counts, indexes, events) is one atomic step on one node.
On one server, ``commit.lua`` and ``sweep.lua`` build a lot's and its history's key
themselves, by appending the extcode to `TenantKeys.lot_prefix` / `history_prefix`, which
they receive from here: sending every lot's two keys would cost more than its transition.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TenantKeys:
    tenant: str
    # Built once: every key of the tenant starts with `prefix`, and the hot paths build lot
    # and history keys for each request and each swept lot.
    prefix: str = field(init=False, repr=False, compare=False)
    lot_prefix: str = field(init=False, repr=False, compare=False)
    """`lot` without the extcode: the Lua scripts append it (``prefix .. code``)."""
    history_prefix: str = field(init=False, repr=False, compare=False)
    """`history` without the extcode, as `lot_prefix`."""

    def __post_init__(self) -> None:
        prefix = f"kol:{{{self.tenant}}}:"
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "lot_prefix", prefix + "l:")
        object.__setattr__(self, "history_prefix", prefix + "h:")

    def lot(self, extcode: str) -> str:
        """String ``"<rev>|<json>"``: the lot, its options, intents and préréservation."""
        return self.lot_prefix + extcode

    def history(self, extcode: str) -> str:
        """String of the lot's compact history entries, one per line, oldest first, capped."""
        return self.history_prefix + extcode

    @property
    def counts(self) -> str:
        """Hash ``p:<thirdGuid>`` -> options + pending intents held; ``u:api`` -> the API user's."""
        return f"{self.prefix}counts"

    @property
    def expiries(self) -> str:
        """Sorted set ``<extcode>/<optionId>`` scored by effective expiry (a tick)."""
        return f"{self.prefix}exp"

    @property
    def lots(self) -> str:
        """Sorted set of extcodes scored by last modification (listing, modifiedAfter)."""
        return f"{self.prefix}lots"

    @property
    def tombstones(self) -> str:
        """Sorted set ``<extcode>|<thirdGuid>|<deadline>|<optionId>`` scored by end time."""
        return f"{self.prefix}tombs"

    @property
    def intents(self) -> str:
        """Sorted set ``<extcode>/<intentId>`` scored by creation time (pending intents)."""
        return f"{self.prefix}intents"

    @property
    def events(self) -> str:
        """The tenant's event stream (one CloudEvents JSON per entry, field ``ce``)."""
        return f"{self.prefix}events"

    @property
    def needs_sync(self) -> str:
        """Set of extcodes the reconciler re-reads from Koban (drift seen, opaque options)."""
        return f"{self.prefix}needsync"

    @property
    def last_sync(self) -> str:
        """Start time (UNIX seconds) of the last successful stock sync."""
        return f"{self.prefix}lastsync"

    def lot_writes(self, extcode: str) -> str:
        """String (PX lease): the process whose Koban write on the lot's options is in
        flight (Prolong, Undo, Preresv, Desist are serialized per lot)."""
        return f"{self.prefix}w:{extcode}"

    @property
    def sync_lease(self) -> str:
        """String: the token of the process running the tenant's stock sync (PX lease)."""
        return f"{self.prefix}sync:lease"

    @property
    def sync_run(self) -> str:
        """String: JSON summary of the latest stock sync run (running, succeeded, failed)."""
        return f"{self.prefix}sync:run"

    @property
    def ticked(self) -> str:
        """String: the latest tick processed (UNIX seconds); only moves forward (Lua max)."""
        return f"{self.prefix}ticked"

    def tick_lease(self, tick: int) -> str:
        """String: the token of the process sweeping this tick (PX lease, real time)."""
        return f"{self.prefix}tick:{tick}:lease"

    @property
    def notice_cursor(self) -> str:
        """String: the highest expiry already scanned for expiring notices; only moves
        forward (Lua max)."""
        return f"{self.prefix}noticecur"

    @property
    def clock_offset(self) -> str:
        """String: a sandbox tenant's test-clock offset in seconds; only grows (Lua max)."""
        return f"{self.prefix}clock"

    def rate_limit(self, token_id: str) -> str:
        """String: an API token's rate-limit bucket (GCRA: the theoretical arrival time in
        ms, with a PX TTL); `token_id` is the token's hash, never the token."""
        return f"{self.prefix}rl:{token_id}"


SCHEDULER_HEARTBEAT_KEY = "kol:scheduler:heartbeat"
"""String, UNIX seconds of a scheduler's last beat (service-wide, with a TTL): ``/readyz``
and ``koban-options scheduler --check`` read it."""


def prospect_field(holder: str) -> str:
    return f"p:{holder}"


API_USER_FIELD = "u:api"


# --- members and patterns of the tenant-wide indexes (added with the layers work) -------


def glob_escape(text: str) -> str:
    """`text` matched literally by a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def tombstone_prefix(extcode: str, third: str) -> str:
    """The start of every tombstone member of (lot, third): ``extcode|third|deadline|id``."""
    return f"{extcode}|{third}|"


def tombstone_pattern(extcode: str, third: str) -> str:
    """A MATCH pattern for the tombstone members of (lot, third)."""
    return glob_escape(extcode) + "|" + glob_escape(third) + "|*"


def intent_member(extcode: str, intent_id: str) -> str:
    """A member of the pending-intents index: ``extcode/intent_id``."""
    return f"{extcode}/{intent_id}"


def split_intent_member(member: bytes | str) -> tuple[str, str]:
    """(extcode, intent_id) of a pending-intents member."""
    text = member.decode() if isinstance(member, bytes) else member
    extcode, _, intent_id = text.rpartition("/")
    return extcode, intent_id


def idempotency_key(keys: TenantKeys, scope_digest: str) -> str:
    """String: a write's remembered answer (or in-flight marker) under an Idempotency-Key;
    `scope_digest` is the hex SHA-256 of its scope (token, method, path, key)."""
    return f"{keys.prefix}idem:{scope_digest}"


def ui_session(digest: str) -> str:
    """String (JSON, real-time TTL): an operator-page session, keyed by the SHA-256 (hex) of
    its opaque id, so the stored keys cannot be replayed as cookies. Service-wide, not under
    a tenant's hash tag: the cookie alone must find it before the tenant is known."""
    return f"kol:ui:session:{digest}"


# --------------------------------------------------------------------------- subscriptions


@dataclass(frozen=True, slots=True)
class SubscriptionKeys:
    """Webhook subscriptions of a tenant (service.storage.subscriptions), in its hash slot."""

    tenant: str

    @property
    def prefix(self) -> str:
        return f"kol:{{{self.tenant}}}:"

    @property
    def index(self) -> str:
        """Hash ``<id>`` -> JSON: name, url, types, createdAt and the sealed secrets."""
        return f"{self.prefix}subs"

    def state(self, sub: str) -> str:
        """Hash: status, disabledReason, failureCount, lastSuccessAt, failingSince."""
        return f"{self.prefix}sub:{sub}:state"

    def cursor(self, sub: str) -> str:
        """String: the last stream entry id taken into the subscription's queues."""
        return f"{self.prefix}sub:{sub}:cursor"

    def due(self, sub: str) -> str:
        """Sorted set ``<partitionkey>`` scored by its head event's next attempt (tenant
        clock, seconds): the durable retry schedule."""
        return f"{self.prefix}sub:{sub}:due"

    def queue(self, sub: str, partition: str) -> str:
        """List, oldest first: the partition's events still to deliver (head in flight)."""
        return f"{self.prefix}sub:{sub}:q:{partition}"

    def attempts(self, sub: str) -> str:
        """Hash ``<partitionkey>`` -> attempts already made on the head of its queue."""
        return f"{self.prefix}sub:{sub}:att"

    def log(self, sub: str) -> str:
        """Stream: the delivery log, capped at the tenant's ``delivery_log_size``."""
        return f"{self.prefix}sub:{sub}:log"

    def lease(self, sub: str) -> str:
        """String (PX lease, real time): the process delivering this subscription."""
        return f"{self.prefix}sub:{sub}:lease"
