"""The webhooks the Koban sandbox calls, as Koban does: POST, form-encoded, the doc's fields.

`FIELDS` lists, per kind, exactly the parameter names of the Koban doc's tables (see
docs/koban-wire.md); `make_webhook` builds a body with every one of them, in the doc's
order, missing values sent as empty strings (Koban's forms carry empty fields rather than
omitting them; a receiver must not rely on either).

`WebhookSender` delivers them with aiohttp, one at a time and in the order they were
fired (a single queue worker), to a target URL configured per kind, authenticated by a
token in the header `X-Koban-Webhook-Token` and/or the query parameter `token`. A delivery
is attempted once (no retry: the doc says nothing of Koban retrying); a failure (connection
error, timeout, non-2xx, or a JSON reply with `success: false`) is logged and counted,
never raised. `drop_next(n)` silently drops the next n webhooks fired (for tests of missed
webhooks). `drain()` waits until everything fired so far has been delivered or has failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import aiohttp
import structlog
from yarl import URL

log = structlog.get_logger("service.sandbox.webhooks")

WebhookKind = Literal[
    "option_placed",
    "option_cancelled",
    "option_prolonged",
    "option_expired",
    "reservation_validated",
    "reservation_withdrawn",
    "lead",
]
WEBHOOK_KINDS: tuple[WebhookKind, ...] = get_args(WebhookKind)
# Koban's pre-check (GET ?extcode=) before a placement made in Koban's UI; optional.
OPTION_CHECK = "option_check"
TokenPlace = Literal["header", "query"]
TOKEN_HEADER = "X-Koban-Webhook-Token"

_RESERVATION_VALIDATED = (
    "Lot_Code",
    "Vendeur_Groupe",
    "Res1Genre",
    "_id",
    "DealId",
    "ThirdId",
    "PrixVente",
    "Garantie",
    "AssignedToId",
    "OptionId",
    "PreresaDate",
    "Annexe1_cent",
    "Annexe2_cent",
    "Annexe3_cent",
    "Annexe4_cent",
    "Annexe5_cent",
    "DealProcessId",
    "Res1Nom",
    "Res1Prenom",
    "Res1DateNaissance",
    "CanalOrigine_sId",
    "CanalOrigine_Label",
    "Res1NomSCI",
    "Res1Adr_Street",
    "Res1Adr_Complement",
    "Res1Adr_ZipCode",
    "Res1Adr_City",
    "Res1Phone",
    "Res1Mail",
    "Res2",
    "Res2Nom",
    "Res2Prenom",
    "Res2Phone",
    "Res2Mail",
    "AutreParking",
    "Options",
    "FraisNotaireMontant_cent",
    "Apport_cent",
    "PretImmo1_cent",
    "TVA",
    "PretImmo2_cent",
    "CanalVente_Label",
    "Res1Profession_Label",
    "Res2DateNaissance",
    "Res2Profession_Label",
    "Res2Adr_Street",
    "Res2Adr_ZipCode",
    "Res2Adr_City",
    "FraisNotaireOffert",
    "NatureAchat_Label",
    "PlusieursPrets",
    "PTZ",
    "PTZMontant_cent",
    "AssignedTo_Name",
    "AssignedTo_FirstName",
    "AssignedTo_EMail",
)

FIELDS: dict[WebhookKind, tuple[str, ...]] = {
    "option_placed": (
        "Deal_Extcode",
        "Deal_Guid",
        "Third_Extcode",
        "Third_Guid",
        "Rank",
        "ExpDate",
        "Third_Name",
        "Third_FirstName",
        "Third_EMail",
        "AssignedTo_Name",
        "AssignedTo_FirstName",
        "AssignedTo_EMail",
    ),
    "option_cancelled": ("Deal_Extcode", "Deal_Guid", "Third_Extcode", "Third_Guid", "Rank"),
    "option_prolonged": (
        "Deal_Extcode",
        "Deal_Guid",
        "Third_Extcode",
        "Third_Guid",
        "Rank",
        "ExpDate",
        "PrgDate",
    ),
    "option_expired": ("Deal_Extcode", "Deal_Guid", "Third_Extcode", "Third_Guid"),
    "reservation_validated": _RESERVATION_VALIDATED,
    "reservation_withdrawn": ("Deal_Extcode", "Deal_Guid"),
    # "Transmission d'une demande d'un lead"; `Tags` and `MoreFields` may also be sent as
    # indexed fields (`Tags[0].Label`), which `service.sandbox.leads` builds itself.
    "lead": (
        "Contact_Type",
        "Lead_Guid",
        "Third_Guid",
        "Name",
        "FirstName",
        "EMail",
        "Phone",
        "Mobile",
        "Tags",
        "MoreFields",
        "Optin",
        "Comments",
    ),
}


@dataclass(frozen=True, slots=True)
class Webhook:
    """One notification: its kind and its form fields (exactly `FIELDS[kind]`, in order)."""

    kind: WebhookKind
    fields: dict[str, str]


def make_webhook(kind: WebhookKind, values: Mapping[str, object]) -> Webhook:
    """A webhook with every doc field of `kind`; None/missing values become ""."""
    names = FIELDS[kind]
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"not a field of the {kind} webhook: {sorted(unknown)}")
    fields = {}
    for name in names:
        value = values.get(name)
        fields[name] = "" if value is None else str(value)
    return Webhook(kind, fields)


@dataclass(slots=True)
class Delivery:
    """What happened to one webhook (the URL is shown without its query: no token)."""

    kind: str
    fields: dict[str, str]
    at: float
    url: str | None = None
    status: int | None = None
    outcome: Literal["pending", "delivered", "failed", "dropped", "no_target"] = "pending"
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "url": self.url,
            "status": self.status,
            "outcome": self.outcome,
            "error": self.error,
            "fields": self.fields,
        }


@dataclass(slots=True)
class WebhookStats:
    fired: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    no_target: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "fired": self.fired,
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "noTarget": self.no_target,
        }


@dataclass(slots=True)
class _Config:
    targets: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    token_in: frozenset[TokenPlace] = frozenset({"header", "query"})


def _redacted(url: str) -> str:
    return str(URL(url).with_query(None))


class WebhookSender:
    """Delivers sandbox webhooks in firing order; never raises on a delivery failure.

    `targets` maps a kind (`WEBHOOK_KINDS`, or `"option_check"` for Koban's pre-check
    GET) to a URL; a kind without a target is recorded as `no_target` and not sent.
    `session` is the caller's aiohttp session; without one, `start()` opens (and `close()`
    closes) a private session.
    """

    def __init__(
        self,
        targets: Mapping[str, str] | None = None,
        *,
        token: str | None = None,
        token_in: Collection[TokenPlace] = ("header", "query"),
        session: aiohttp.ClientSession | None = None,
        timeout: float = 5.0,
        history: int = 500,
    ) -> None:
        self._config = _Config()
        self.configure(targets=targets or {}, token=token, token_in=token_in)
        self._session = session
        self._own_session = False
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._queue: asyncio.Queue[tuple[Webhook, Delivery]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._drop = 0
        self.stats = WebhookStats()
        self.deliveries: deque[Delivery] = deque(maxlen=history)

    # ----------------------------------------------------------------- configuration

    def configure(
        self,
        *,
        targets: Mapping[str, str | None] | None = None,
        token: str | None = None,
        token_in: Collection[TokenPlace] | None = None,
    ) -> None:
        """Replace the targets (a None URL removes a kind), the token and where it goes."""
        if targets is not None:
            allowed = {*WEBHOOK_KINDS, OPTION_CHECK}
            new: dict[str, str] = {}
            for kind, url in targets.items():
                if kind not in allowed:
                    raise ValueError(f"unknown webhook kind {kind!r}")
                if url is None:
                    continue
                parsed = URL(url)
                if parsed.scheme not in ("http", "https") or not parsed.host:
                    raise ValueError(f"webhook target for {kind} is not an http(s) URL")
                new[kind] = url
            self._config.targets = new
        if token is not None:
            self._config.token = token or None
        if token_in is not None:
            places = frozenset(token_in)
            if not places or not places <= {"header", "query"}:
                raise ValueError("token_in must name 'header' and/or 'query'")
            self._config.token_in = places

    @property
    def targets(self) -> dict[str, str]:
        return dict(self._config.targets)

    def describe(self) -> dict[str, object]:
        """The configuration without the token's value."""
        return {
            "targets": {k: _redacted(v) for k, v in self._config.targets.items()},
            "tokenSet": self._config.token is not None,
            "tokenIn": sorted(self._config.token_in),
            "dropNext": self._drop,
            "stats": self.stats.as_json(),
        }

    def drop_next(self, count: int) -> None:
        """Silently drop the next `count` webhooks fired (replaces any previous count)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        self._drop = count

    # ----------------------------------------------------------------- lifecycle

    async def start(self, session: aiohttp.ClientSession | None = None) -> None:
        """Start the delivery worker (idempotent) on the running loop."""
        if session is not None:
            self._session = session
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="sandbox-webhooks")

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded by `drain_timeout`), stop the worker, close."""
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(), drain_timeout)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                _, record = self._queue.get_nowait()
                self._fail(record, "sandbox closed before delivery")
            self._queue = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._own_session = False

    # ----------------------------------------------------------------- firing

    def fire(self, hook: Webhook) -> Delivery:
        """Queue one webhook (or drop it, or note that its kind has no target)."""
        record = Delivery(hook.kind, dict(hook.fields), time.time())
        self.stats.fired += 1
        self.deliveries.append(record)
        if self._drop > 0:
            self._drop -= 1
            record.outcome = "dropped"
            self.stats.dropped += 1
            log.info("sandbox_webhook_dropped", kind=hook.kind)
            return record
        url = self._config.targets.get(hook.kind)
        if url is None:
            record.outcome = "no_target"
            self.stats.no_target += 1
            return record
        record.url = _redacted(url)
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._queue.put_nowait((hook, record))
        return record

    async def drain(self) -> None:
        """Wait until every webhook fired so far is delivered or failed."""
        if self._queue is None:
            return
        if self._worker is None or self._worker.done():
            # No worker (not started): deliver inline.
            while not self._queue.empty():
                hook, record = self._queue.get_nowait()
                await self._deliver(hook, record)
                self._queue.task_done()
            return
        await self._queue.join()

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            hook, record = await queue.get()
            try:
                await self._deliver(hook, record)
            except Exception as exc:  # never let the worker die
                self._fail(record, repr(exc))
            finally:
                queue.task_done()

    def _request_target(self, url: str) -> tuple[URL, dict[str, str]]:
        target = URL(url)
        headers: dict[str, str] = {}
        token = self._config.token
        if token is not None:
            if "header" in self._config.token_in:
                headers[TOKEN_HEADER] = token
            if "query" in self._config.token_in:
                target = target.update_query(token=token)
        return target, headers

    def _fail(self, record: Delivery, error: str) -> None:
        record.outcome = "failed"
        record.error = error
        self.stats.failed += 1
        log.warning(
            "sandbox_webhook_failed",
            kind=record.kind,
            url=record.url,
            status=record.status,
            error=error,
        )

    async def _deliver(self, hook: Webhook, record: Delivery) -> None:
        url = self._config.targets.get(hook.kind)
        if url is None:  # target removed after firing
            record.outcome = "no_target"
            self.stats.no_target += 1
            return
        record.url = _redacted(url)
        target, headers = self._request_target(url)
        session = self._session
        if session is None:
            self._fail(record, "no HTTP session (sender not started)")
            return
        try:
            async with session.post(
                target, data=hook.fields, headers=headers, timeout=self._timeout
            ) as response:
                record.status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._fail(record, f"{type(exc).__name__}: {exc}")
            return
        if not 200 <= record.status < 300:
            self._fail(record, f"HTTP {record.status}")
            return
        answer = _json_or_none(body)
        if isinstance(answer, dict) and answer.get("success") is False:
            self._fail(record, f"receiver answered success=false: {answer.get('error')!r}")
            return
        record.outcome = "delivered"
        self.stats.delivered += 1

    async def check_option(self, extcode: str) -> tuple[bool, int | None] | None:
        """Koban's pre-check GET before a UI placement: (status, rank), or None when no
        target is configured. A failing or malformed answer counts as a refusal."""
        url = self._config.targets.get(OPTION_CHECK)
        if url is None:
            return None
        target, headers = self._request_target(url)
        target = target.update_query(extcode=extcode)
        session = self._session
        if session is None:
            return (False, None)
        try:
            async with session.get(target, headers=headers, timeout=self._timeout) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("sandbox_option_check_failed", url=_redacted(url), error=repr(exc))
            return (False, None)
        answer = _json_or_none(body)
        if status != 200 or not isinstance(answer, dict):
            return (False, None)
        rank = answer.get("rank")
        return (
            answer.get("status") is True,
            rank if isinstance(rank, int) and not isinstance(rank, bool) else None,
        )


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
