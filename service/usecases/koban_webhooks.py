"""Koban's inbound webhooks under ``/koban/{tenant}/…`` (SPEC §6).

``add_webhook_routes(app, tenants)`` registers:

- ``GET  option-check?extcode=`` → ``{"status": bool, "rank": n | null}``;
- form-encoded ``POST option-placed | option-cancelled | option-prolonged | option-expired |
  reservation-validated | reservation-withdrawn`` → ``{"success": true}``, or
  ``{"success": false, "error": {"message", "code"}}`` with 400 (malformed: missing or bad
  fields, wrong content type, a charset other than UTF-8, Latin-1, Windows-1252 or ASCII,
  body over 64 KiB), 401 (secret), 404 (tenant), 503 (Redis).

Authentication: the tenant's ``webhook_secret``, taken from the header
``X-Koban-Webhook-Token`` and/or the query parameter ``token`` as ``webhook_auth`` allows,
compared with ``hmac.compare_digest``. Every token presented in an allowed place must match
and at least one must be presented; a token in a place the tenant does not allow is ignored.
A tenant without a (non-empty) secret refuses every webhook with 401. The tenant is looked
up first (404), then the secret (401), then the form (400): nothing is read or written
before all three pass.

Semantics (delivery is at-least-once and unordered; Koban is the authority). Each POST is
one `LotStore.mutate` step, so the lot, its events, indexes and tombstones move together;
what the step reads besides the lot (tombstones, the tail of the lot's history) is read
through mutate's `prefetch`, so it is consistent with the lot it judges.

- *Unknown lot*: created (``lot.imported``, actor ``koban``, program unknown,
  ``pendingSync: true``) in the same step that applies the webhook, and its extcode added to
  the set ``TenantKeys.needs_sync`` (before the step, so a crash cannot lose the mark).
- *option-placed* is identified by (lot, third, ExpDate), checked in this order:
  1. ExpDate's tick is already past → ignored (Koban has expired that option by now; its
     own option-expired webhook settles a local copy).
  2. The third has a tombstone on this lot (an option of theirs that ended less than
     ``tombstone_ttl`` ago) whose deadline equals ExpDate, or that ended *before* an
     option placed with ExpDate could have been placed (ExpDate earlier than the end time
     plus ``option_lifetime``) → a late webhook for an ended option: ignored.
  3. The third holds an active option: same deadline from Koban → replay; prolonged since
     → ignored (ExpDate predates the prolongation); else Koban's ExpDate replaces the
     deadline (``deadlineSource: koban``) with an ``option.deadline_confirmed`` event.
  4. The third has a pending intent (§4) → `intents.webhook_resolution` confirms it with
     ExpDate (``option.placed`` + ``intent.resolved``; dropped with drift if the lot
     cannot hold it any more).
  5. The option at the hinted rank is an opaque placeholder → it is that third's: the
     placeholder gets the holder and ExpDate (``option.placed`` with ``wasOpaque: true``).
  6. Otherwise `transitions.place_option` (placedAt = receipt time; the rank hint is used
     only when it leaves no gap below it). If the lot cannot take it, any opaque
     placeholder is identified instead, else drift is recorded (nothing placed).
- *Echoes of our own changes* (`service.usecases.echoes`): an Undo / Prolong / Desist the service
  made through Koban and applied from Koban's answer left an echo on the lot; the matching
  option-cancelled (lot, third), option-prolonged (lot, third, PrgDate) or
  reservation-withdrawn (lot) takes it and is a replay, even after the lot moved on (the
  prospect placed a new option there, another préréservation was made).
- *option-cancelled / option-prolonged* apply to the third's active option (Rank is only a
  hint); none → 200, no change (a replay). A prolongation the local rules refuse
  (already prolonged to another date, not a later tick, beyond ``max_prolongation``) is
  applied anyway, since Koban has done it, with an ``option.prolonged`` (``forced: true``)
  and a drift event.
- *option-expired*: Koban expires only at ticks, so it concerns the third's option placed
  before ``latest_tick(now)``: expired as of that tick (event time = the tick) with drift
  ``expired_by_koban_earlier`` (the local expiry was later, or the lazy expiry in the same
  step would already have ended it: then it is a no-op). An option placed at or after that
  tick is a newer one: ignored; so is one placed after an earlier option of that third on
  this lot ended (a tombstone): the webhook is most likely that one's, late — the lot is
  queued for reconciliation in case Koban did expire the newer one early.
- *reservation-validated* → RESV whatever the state, drift when it was not PRERESV; already
  RESV, or its ``_id`` (the préréservation's guid, kept as ``prereservationGuid`` in
  ``lot.reserved``) already reserved the lot in its recent history → replay.
  *reservation-withdrawn* → `withdraw(holder=None)`; not PRERESV/RESV → replay (it names
  no third and no préréservation: a late copy after a newer préréservation would withdraw
  that one; nothing in the doc's fields can tell them apart).
- A Koban fact the local rules refuse is drift, not an error: a ``sync.drift_detected``
  event (``reason``, ``webhook``, ``actor: koban`` …), the lot marked in ``needs_sync``, and
  200 ``{"success": true}`` (the notification was taken into account; Koban could do
  nothing with an error). A drift-only outcome already in the lot's recent history is not
  recorded twice, so replays stay no-ops.
"""

from __future__ import annotations

import codecs
import copy
import dataclasses
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl

import orjson
import structlog
from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import RedisError

from service.koban.webhook_forms import (
    MAX_IDENTIFIER,
    OptionCancelledForm,
    OptionExpiredForm,
    OptionPlacedForm,
    OptionProlongedForm,
    ReservationValidatedForm,
    ReservationWithdrawnForm,
    WebhookForm,
)
from service.storage.events import history_entry
from service.storage.keys import glob_escape as _glob_escape
from service.storage.store import Counts, LotStore, StoreConflict, new_id
from service.tenancy import Tenant, Tenants
from service.usecases.echoes import take_echo
from service.usecases.intents import webhook_resolution
from service.usecases.sync import drift_event, mark_needs_sync
from statecharts import transitions as tr
from statecharts.decide import decide
from statecharts.errors import RuleViolation
from statecharts.model import DomainEvent, Lot, Option, Rules
from statecharts.ticks import ceil_tick, deadline_from_lifetime, latest_tick, to_iso

__all__ = [
    "MAX_BODY",
    "TOKEN_HEADER",
    "TOKEN_QUERY",
    "add_webhook_routes",
    "option_check_answer",
    "redact_token",
]

log = structlog.get_logger("service.usecases.koban_webhooks")

PREFIX = "/koban/{tenant}/"
TOKEN_HEADER = "X-Koban-Webhook-Token"
TOKEN_QUERY = "token"
MAX_BODY = 64 * 1024
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 500
# Encodings a form body may declare (codecs' canonical names); UTF-8 when none is declared.
CHARSETS = frozenset({"utf-8", "iso8859-1", "cp1252", "ascii"})
# Enough of a lot's history for the last few dozen entries (drift de-duplication).
HISTORY_TAIL_BYTES = 8192
DRIFT = "sync.drift_detected"

F = TypeVar("F", bound=WebhookForm)


# --------------------------------------------------------------------------- replies


class WebhookError(Exception):
    """A refusal answered as ``{"success": false, "error": {...}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return _error(self.status, self.code, self.message, headers)


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"success": False, "error": {"message": message, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _malformed(message: str) -> WebhookError:
    return WebhookError(400, "MALFORMED_REQUEST", message)


# The value runs to the next "&" (or "#", or whitespace): aiohttp does not split a query on
# ";", so a secret with a ";" in it is one value and must be redacted whole.
_TOKEN_IN_URL = re.compile(r"(?i)([?&;]token=)[^&#\s]*")


def redact_token(url: str) -> str:
    """`url` (a URL, a path with its query, a whole request line, a log message quoting
    one) with every ``token`` query value replaced by ``***``: the webhook secret must
    never reach a log."""
    return _TOKEN_IN_URL.sub(r"\1***", url)


# --------------------------------------------------------------------------- pre-check


def option_check_answer(lot: Lot | None) -> dict[str, object]:
    """Koban's pre-check from the lot as of now (lazy expiry applied by the caller).

    False while any intent on the lot is pending (§4) or the chart refuses a placement
    (PRERESV, RESV, BLOQUE, sold, custom, two options); else true with the next free rank.
    A lot the service has not imported yet gets ``{"status": true, "rank": null}``: Koban
    knows its own stock, and the service has nothing against it.
    """
    if lot is None:
        return {"status": True, "rank": None}
    if lot.intents:
        return {"status": False, "rank": None}
    try:
        decide(lot.config, "place", {"full": len(lot.options) >= 2})
    except RuleViolation:
        return {"status": False, "rank": None}
    return {"status": True, "rank": len(lot.options) + 1}


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class Tombstone:
    """An option of (lot, third) that ended at `ended` with deadline `deadline`."""

    deadline: int | None
    ended: int
    option_id: str


@dataclass(frozen=True, slots=True)
class Seen:
    """What a step reads besides the lot, at the same attempt (mutate's `prefetch`)."""

    tombstones: tuple[Tombstone, ...] = ()
    history_tail: bytes = b""
    tombstones_read: bool = False  # False: `tombstones` was not read (see NeedTombstones)


class NeedTombstones(Exception):
    """Raised by a step that reads tombstones only in a rare case, when they were not read:
    `apply` runs the step again with them (the tombstone read walks the tenant's whole
    set, too costly for the usual case)."""


@dataclass(slots=True)
class Applied:
    events: list[DomainEvent]
    outcome: str
    drift: bool = False
    resync: bool = False  # queue the lot for reconciliation even without drift


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one webhook did (logged; the reply is only ``{"success": true}``)."""

    outcome: str
    created: bool
    drift: bool
    events: int
    resync: bool = False


@dataclass(frozen=True, slots=True)
class Ctx:
    webhook: str
    now: int
    rules: Rules


Step = Callable[[Lot, Seen], Applied]


def _iso(ts: int | None) -> str | None:
    # Instants under `data` keys that events.TIME_KEYS does not know go out as ISO here.
    return to_iso(ts) if ts is not None else None


def _drift(ctx: Ctx, reason: str, **data: object) -> DomainEvent:
    return drift_event(ctx.now, "koban", reason, webhook=ctx.webhook, **data)


def _restore(lot: Lot, snapshot: Lot) -> None:
    """Undo a partial change (a transition refused after touching the lot)."""
    for f in dataclasses.fields(Lot):
        setattr(lot, f.name, getattr(snapshot, f.name))


def _recorded(tail: bytes, event: DomainEvent) -> bool:
    """Whether the lot's recent history already holds this event (type and data)."""
    wanted = orjson.loads(history_entry(event, 0, 0))
    for line in tail.split(b"\n"):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the cut first line of the tail
        if isinstance(entry, list) and len(entry) == 5 and entry[2:5:2] == wanted[2:5:2]:
            return True
    return False


def _set_koban_deadline(o: Option, deadline: int) -> None:
    o.deadline = deadline
    o.expiry = ceil_tick(deadline)
    o.original_deadline = deadline
    o.source = "koban"


def _identify(o: Option, third: str, deadline: int, ctx: Ctx) -> Applied:
    """An opaque placeholder turns out to be this third's option."""
    o.holder = third
    _set_koban_deadline(o, deadline)
    data = tr.option_data(o, "koban", wasOpaque=True)
    return Applied([DomainEvent("option.placed", ctx.now, data)], "placeholder identified")


def _learn_deadline(own: Option, deadline: int, ctx: Ctx) -> Applied:
    if own.deadline == deadline and own.source == "koban":
        return Applied([], "replay")
    if own.prolonged:
        return Applied([], "stale: prolonged since")
    before, before_expiry = own.deadline, own.expiry
    _set_koban_deadline(own, deadline)
    data = tr.option_data(
        own, "koban", previousDeadline=_iso(before), previousEffectiveExpiry=_iso(before_expiry)
    )
    return Applied([DomainEvent("option.deadline_confirmed", ctx.now, data)], "deadline learned")


def _ended_already(seen: Seen, deadline: int, rules: Rules) -> bool:
    """A tombstone of this (lot, third) that the placed webhook describes, or outlived.

    An ExpDate on a tick (the sandbox sends the effective expiry) is that of every option
    placed in one half hour: it describes the ended option when its tick is not after
    the one an option placed at the end would have had. The exact comparisons alone missed
    an option ended within the half hour it was placed in (its tombstone holds the
    service's estimate, or its prolonged date), and the late webhook placed it again, or
    settled a newer pending intent of that prospect that Koban had not placed."""
    on_tick = ceil_tick(deadline) == deadline
    for t in seen.tombstones:
        outlived = deadline_from_lifetime(t.ended, rules.option_lifetime, rules.zone)
        if t.deadline == deadline or deadline < outlived:
            return True
        if on_tick and deadline <= ceil_tick(outlived):
            return True
    return False


def _option_placed(form: OptionPlacedForm, ctx: Ctx) -> Step:
    third, deadline = form.third_guid, form.exp_date

    def step(lot: Lot, seen: Seen) -> Applied:
        if ceil_tick(deadline) <= ctx.now:
            return Applied([], "stale: expiry tick passed")
        if _ended_already(seen, deadline, ctx.rules):
            return Applied([], "stale: option ended")
        own = lot.option_of(third)
        if own is not None:
            return _learn_deadline(own, deadline, ctx)
        resolved = webhook_resolution(lot, third, deadline, ctx.now, ctx.rules)
        if resolved is not None:  # a pending intent of that third (§4): now settled
            events, resolution = resolved
            outcome = resolution.outcome
            return Applied(events, f"intent {outcome}", drift=outcome == "dropped")
        occupied = lot.occupied
        hint = form.rank if form.rank is not None and form.rank <= occupied + 1 else None
        at_hint = lot.option_at(hint) if hint is not None else None
        if at_hint is not None and at_hint.opaque:
            return _identify(at_hint, third, deadline, ctx)
        snapshot = copy.deepcopy(lot)
        try:
            events = tr.place_option(
                lot,
                option_id=new_id(),
                holder=third,
                partner=None,
                placed_at=ctx.now,
                rules=ctx.rules,
                koban_deadline=deadline,
                actor="koban",
                rank=hint,
            )
        except RuleViolation as exc:
            _restore(lot, snapshot)
            placeholder = next((o for o in lot.options if o.opaque), None)
            if placeholder is not None:
                return _identify(placeholder, third, deadline, ctx)
            drift = _drift(
                ctx,
                "option_not_placeable",
                code=exc.code.value,
                localStatus=lot.status,
                thirdGuid=third,
                kobanRank=form.rank,
                expDate=_iso(deadline),
            )
            return Applied([drift], "drift", drift=True)
        return Applied(events, "placed")

    return step


def _option_cancelled(form: OptionCancelledForm, ctx: Ctx) -> Step:
    def step(lot: Lot, seen: Seen) -> Applied:
        if take_echo(lot, "option_cancelled", form.third_guid):
            return Applied([], "replay: echo of our Undo")
        own = lot.option_of(form.third_guid)
        if own is None:
            return Applied([], "replay: nothing active")
        events = tr.cancel_option(lot, own.rank, form.third_guid, ctx.now, ctx.rules, "koban")
        return Applied(events, "cancelled")

    return step


def _option_prolonged(form: OptionProlongedForm, ctx: Ctx) -> Step:
    third, until = form.third_guid, form.prg_date

    def step(lot: Lot, seen: Seen) -> Applied:
        if take_echo(lot, "option_prolonged", third, until):
            return Applied([], "replay: echo of our Prolong")
        own = lot.option_of(third)
        if own is None:
            return Applied([], "replay: nothing active")
        if own.prolonged and own.deadline == until:
            return Applied([], "replay")
        snapshot = copy.deepcopy(lot)
        try:
            events = tr.prolong_option(lot, own.rank, until, third, ctx.now, ctx.rules, "koban")
            return Applied(events, "prolonged")
        except RuleViolation as exc:
            _restore(lot, snapshot)
            refused = exc
        own = lot.option_of(third)
        assert own is not None
        before = own.deadline
        if own.original_deadline is None:
            own.original_deadline = own.deadline
        own.deadline, own.expiry = until, ceil_tick(until)
        own.prolonged, own.source = True, "koban"
        events = [
            DomainEvent("option.prolonged", ctx.now, tr.option_data(own, "koban", forced=True)),
            _drift(
                ctx,
                "prolongation_refused_locally",
                code=refused.code.value,
                optionId=own.id,
                thirdGuid=third,
                prgDate=_iso(until),
                localDeadline=_iso(before),
            ),
        ]
        # Koban's date may already be due: expire it as of its own tick.
        events.extend(tr.expire_due(lot, ctx.now, ctx.rules, actor="koban"))
        return Applied(events, "prolonged (forced)", drift=True)

    return step


def _option_expired(form: OptionExpiredForm, ctx: Ctx) -> Step:
    tick = latest_tick(ctx.now)

    def step(lot: Lot, seen: Seen) -> Applied:
        own = lot.option_of(form.third_guid)
        if own is None:
            return Applied([], "replay: nothing active")
        if own.placed_at >= tick:
            return Applied([], "stale: placed after Koban's latest tick")
        if not seen.tombstones_read:
            raise NeedTombstones
        if any(t.ended <= own.placed_at for t in seen.tombstones):
            # An earlier option of that third on this lot ended before this one was
            # placed: the webhook is that one's, late (had Koban really expired this one
            # early, reconciliation finds it).
            return Applied([], "stale: an earlier option's expiry", resync=True)
        # Anything due by now was expired by mutate's lazy expiry already: the local
        # expiry is later than Koban's tick. Koban wins, as of that tick.
        local = own.expiry
        own.expiry = tick
        events = tr.expire_due(lot, tick, ctx.rules, actor="koban")
        events.append(
            _drift(
                ctx,
                "expired_by_koban_earlier",
                optionId=own.id,
                thirdGuid=form.third_guid,
                localExpiry=_iso(local),
                kobanTick=_iso(tick),
            )
        )
        return Applied(events, "expired", drift=True)

    return step


def _reserved_before(tail: bytes, prereservation: str) -> bool:
    """Whether the lot's recent history has a ``lot.reserved`` for this préréservation."""
    for line in tail.split(b"\n"):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if (
            isinstance(entry, list)
            and len(entry) == 5
            and entry[2] == "lot.reserved"
            and isinstance(entry[4], dict)
            and entry[4].get("prereservationGuid") == prereservation
        ):
            return True
    return False


def _reservation_validated(form: ReservationValidatedForm, ctx: Ctx) -> Step:
    def step(lot: Lot, seen: Seen) -> Applied:
        if lot.config == "reserved":
            return Applied([], "replay")
        guid = form.prereservation_guid
        if guid is not None and _reserved_before(seen.history_tail, guid):
            return Applied([], "replay: withdrawn since")
        previous = lot.status
        events, drift = tr.validate_reservation(lot, ctx.now, ctx.rules, "koban")
        for e in events:
            if e.type == "lot.reserved":
                if e.data.get("thirdGuid") is None:
                    e.data["thirdGuid"] = form.third_guid
                e.data["prereservationGuid"] = guid
        if not drift:
            return Applied(events, "reserved")
        events.append(
            _drift(
                ctx,
                "reserved_without_prereservation",
                previousStatus=previous,
                thirdGuid=form.third_guid,
            )
        )
        return Applied(events, "reserved", drift=True)

    return step


def _reservation_withdrawn(form: ReservationWithdrawnForm, ctx: Ctx) -> Step:
    def step(lot: Lot, seen: Seen) -> Applied:
        if take_echo(lot, "reservation_withdrawn", None):
            return Applied([], "replay: echo of our Desist")
        if lot.config not in ("prereserved", "reserved"):
            return Applied([], "replay: not pre-reserved")
        return Applied(tr.withdraw(lot, None, ctx.now, ctx.rules, "koban"), "withdrawn")

    return step


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[F]):
    form: type[F]
    step: Callable[[F, Ctx], Step]
    tombstones: bool = False  # whether the step always reads the third's tombstones


def _third_of(form: WebhookForm) -> str | None:
    third = getattr(form, "third_guid", None)
    return third if isinstance(third, str) else None


POSTS: dict[str, Endpoint[Any]] = {
    "option-placed": Endpoint(OptionPlacedForm, _option_placed, tombstones=True),
    "option-cancelled": Endpoint(OptionCancelledForm, _option_cancelled),
    "option-prolonged": Endpoint(OptionProlongedForm, _option_prolonged),
    "option-expired": Endpoint(OptionExpiredForm, _option_expired),  # on demand
    "reservation-validated": Endpoint(ReservationValidatedForm, _reservation_validated),
    "reservation-withdrawn": Endpoint(ReservationWithdrawnForm, _reservation_withdrawn),
}
OPTION_CHECK = "option-check"


# --------------------------------------------------------------------------- reading


async def _tombstones(store: LotStore, extcode: str, third: str, since: int) -> list[Tombstone]:
    """The third's options on this lot that ended at or after `since`.

    The tombstone set is scored by end time, not keyed by lot: a ZSCAN with a pattern walks
    it all (bounded by `tombstone_ttl`); only option-placed and option-expired need it.
    """
    prefix = f"{extcode}|{third}|".encode()
    out = []
    pattern = _glob_escape(extcode) + "|" + _glob_escape(third) + "|*"
    async for member, score in store.redis.zscan_iter(
        store.keys.tombstones, match=pattern, count=1000
    ):
        raw = member if isinstance(member, bytes) else str(member).encode()
        if score < since or not raw.startswith(prefix):
            continue
        deadline, sep, option_id = raw[len(prefix) :].decode().partition("|")
        if not sep or "|" in option_id:
            continue  # another third whose guid continues with "|"
        if deadline.isdigit():
            out.append(Tombstone(int(deadline), int(score), option_id))
        elif deadline == "None":
            out.append(Tombstone(None, int(score), option_id))
    return out


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _malformed(f"body larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(MAX_BODY + 1)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY:
            raise _malformed(f"body larger than {MAX_BODY} bytes")
        chunks.append(chunk)


def _charset(declared: str | None) -> str:
    """The body's text encoding: UTF-8 unless one of `CHARSETS` is declared. Any other
    codec is refused: Python's include text-to-text ones that warn or fail oddly
    (``unicode_escape``) and a quadratic one (``punycode``: ~1 s for 64 KiB)."""
    if declared is None:
        return "utf-8"
    try:
        name = codecs.lookup(declared).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        name = ""
    if name not in CHARSETS:
        raise _malformed(f"unsupported charset (use one of {', '.join(sorted(CHARSETS))})")
    return name


async def _read_form(request: web.Request, form: type[F]) -> F:
    if request.content_type != FORM_CONTENT_TYPE:
        raise _malformed(f"expected Content-Type {FORM_CONTENT_TYPE}")
    charset = _charset(request.charset)
    body = await _read_body(request)
    try:
        pairs = parse_qsl(
            body.decode(charset),
            keep_blank_values=True,
            encoding=charset,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (LookupError, UnicodeDecodeError, ValueError):
        raise _malformed("unreadable form body") from None
    values: dict[str, str] = {}
    read = {f.alias for f in form.model_fields.values() if f.alias}
    for name, value in pairs:
        if name in read and values.get(name, value) != value:
            raise _malformed(f"{name}: given twice with different values")
        values.setdefault(name, value)
    try:
        return form.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise _malformed(problems) from None


# --------------------------------------------------------------------------- handlers


class _Webhooks:
    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def tenant(self, request: web.Request) -> Tenant:
        name = request.match_info["tenant"]
        tenant = self.tenants.get(name)
        if tenant is None:
            raise WebhookError(404, "TENANT_UNKNOWN", "unknown tenant")
        return tenant

    def authenticate(self, request: web.Request, tenant: Tenant) -> None:
        secret = tenant.settings.webhook_secret
        expected = secret.get_secret_value().encode() if secret is not None else b""
        if not expected:
            raise WebhookError(401, "UNAUTHENTICATED", "webhooks are not enabled for this tenant")
        allowed = tenant.settings.webhook_auth
        given: list[str] = []
        if "header" in allowed:
            given.extend(request.headers.getall(TOKEN_HEADER, []))
        if "query" in allowed:
            given.extend(request.query.getall(TOKEN_QUERY, []))
        # Every comparison runs (no early exit), each in constant time.
        matches = [hmac.compare_digest(g.encode("utf-8", "replace"), expected) for g in given]
        if not matches or not all(matches):
            raise WebhookError(401, "UNAUTHENTICATED", "missing or wrong webhook token")

    async def option_check(self, request: web.Request) -> web.Response:
        try:
            tenant = self.tenant(request)
            self.authenticate(request, tenant)
            extcode = request.query.get("extcode", "").strip()
            if not extcode or len(extcode) > MAX_IDENTIFIER or not extcode.isprintable():
                raise _malformed("extcode: a lot code is required")
            try:
                lot = await tenant.store.read(extcode, tenant.clock.now())
            except (RedisError, OSError):
                raise WebhookError(503, "STORE_UNAVAILABLE", "store unavailable") from None
        except WebhookError as exc:
            self._refused(request, OPTION_CHECK, exc)
            return exc.response()
        return web.json_response(option_check_answer(lot))

    def post_handler(
        self, name: str, endpoint: Endpoint[Any]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                tenant = self.tenant(request)
                self.authenticate(request, tenant)
                form = await _read_form(request, endpoint.form)
                try:
                    outcome = await self.apply(tenant, name, endpoint, form)
                except StoreConflict:
                    raise WebhookError(503, "STORE_BUSY", "lot busy, retry") from None
                except (RedisError, OSError):
                    raise WebhookError(503, "STORE_UNAVAILABLE", "store unavailable") from None
            except WebhookError as exc:
                self._refused(request, name, exc)
                return exc.response()
            log.info(
                "koban_webhook",
                tenant=tenant.name,
                webhook=name,
                extcode=form.extcode,
                outcome=outcome.outcome,
                created=outcome.created,
                drift=outcome.drift,
                events=outcome.events,
            )
            return web.json_response({"success": True})

        return handle

    async def apply(
        self, tenant: Tenant, name: str, endpoint: Endpoint[Any], form: WebhookForm
    ) -> Outcome:
        store = tenant.store
        keys = store.keys
        extcode, guid, third = form.extcode, form.lot_guid, _third_of(form)
        now = tenant.clock.now()
        ctx = Ctx(name, now, tenant.rules)
        step = endpoint.step(form, ctx)
        since = now - int(tenant.settings.tombstone_ttl.fixed_seconds())

        if not await store.redis.exists(keys.lot(extcode)):
            # Marked before it is created: a crash in between leaves a mark, never a lot
            # that nobody will sync.
            await mark_needs_sync(tenant, extcode)

        with_tombstones = endpoint.tombstones

        async def prefetch() -> Seen:
            tail = await store.redis.getrange(keys.history(extcode), -HISTORY_TAIL_BYTES, -1)
            tombs: list[Tombstone] = []
            if with_tombstones and third is not None:
                tombs = await _tombstones(store, extcode, third, since)
            raw = tail if isinstance(tail, bytes) else str(tail or "").encode()
            return Seen(tuple(tombs), raw, with_tombstones)

        def create() -> Lot:
            return Lot(extcode, guid=guid)

        def change(lot: Lot, counts: Counts) -> tuple[list[DomainEvent], Outcome]:
            seen = counts.extra if isinstance(counts.extra, Seen) else Seen()
            created = lot.rev == 0 and lot.version == 0
            events: list[DomainEvent] = []
            if created:
                imported: dict[str, object] = {
                    "program": None,
                    "label": None,
                    "status": lot.status,
                    "actor": "koban",
                    "pendingSync": True,
                    "webhook": name,
                }
                events.append(DomainEvent("lot.imported", now, imported))
            snapshot = copy.deepcopy(lot)
            try:
                applied = step(lot, seen)
            except RuleViolation as exc:
                _restore(lot, snapshot)
                drift = _drift(
                    ctx,
                    "refused_locally",
                    code=exc.code.value,
                    localStatus=lot.status,
                    thirdGuid=third,
                )
                applied = Applied([drift], "drift", drift=True)
            if (
                applied.drift
                and all(e.type == DRIFT for e in applied.events)
                and all(_recorded(seen.history_tail, e) for e in applied.events)
            ):
                applied = Applied([], "replay: drift already recorded")
            events.extend(applied.events)
            outcome = Outcome(applied.outcome, created, applied.drift, len(events), applied.resync)
            return events, outcome

        try:
            outcome = await store.mutate(extcode, change, now=now, create=create, prefetch=prefetch)
        except NeedTombstones:  # nothing was written: decide again, tombstones read
            with_tombstones = True
            outcome = await store.mutate(extcode, change, now=now, create=create, prefetch=prefetch)
        if outcome.drift or outcome.resync:
            await mark_needs_sync(tenant, extcode)
        return outcome

    async def fallback(self, request: web.Request) -> web.Response:
        rest = request.match_info.get("rest", "")
        if rest == OPTION_CHECK:
            return _error(405, "METHOD_NOT_ALLOWED", "use GET", {"Allow": "GET, HEAD"})
        if rest in POSTS:
            return _error(405, "METHOD_NOT_ALLOWED", "use POST", {"Allow": "POST"})
        return _error(404, "NOT_FOUND", "no such webhook")

    @staticmethod
    def _refused(request: web.Request, name: str, exc: WebhookError) -> None:
        log.warning(
            "koban_webhook_refused",
            tenant=request.match_info.get("tenant"),
            webhook=name,
            status=exc.status,
            code=exc.code,
            reason=exc.message,
        )


def add_webhook_routes(app: web.Application, tenants: Tenants) -> None:
    """Register Koban's webhooks under ``/koban/{tenant}/`` on `app`."""
    hooks = _Webhooks(tenants)
    app.router.add_get(PREFIX + OPTION_CHECK, hooks.option_check)
    for name, endpoint in POSTS.items():
        app.router.add_post(PREFIX + name, hooks.post_handler(name, endpoint))
    # Last: wrong methods and unknown names get a JSON answer too.
    app.router.add_route("*", PREFIX + "{rest:.*}", hooks.fallback)
