"""Async client for Koban's API: one per tenant, with retries and a rate limit.

What a caller may conclude: a ``KobanAnswer`` with ``success=False`` is a refusal (nothing
changed; map it with `koban_refusal`); ``KobanOutcomeUnknown`` (writes only) may have
reached Koban and is never resent, so the caller keeps its intent pending;
``KobanUnavailable`` means nothing was sent, or a read kept failing after its retries, or
Koban answered 429; ``KobanError`` is an answer retrying will not fix. Reads retry with
full-jitter backoff; writes only when nothing was sent. Every attempt takes a slot from the
tenant's leaky-bucket limiter. The contract in full: docs/koban-wire.md.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

import aiohttp
import orjson
from aiolimiter import AsyncLimiter
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from service.koban import add_valid, wire
from service.koban import denonciation as denonc
from service.koban.denonciation import Contact, DenonciationCheck
from service.koban.wire import (
    Account,
    DealPage,
    Endpoint,
    KobanAnswer,
    LotStatus,
    Program,
    ThirdKind,
)
from statecharts.errors import ErrorCode

__all__ = [
    "KobanClient",
    "KobanError",
    "KobanMethod",
    "KobanOutcomeUnknown",
    "KobanUnavailable",
    "is_unknown_prospect",
    "koban_refusal",
]

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


class KobanError(Exception):
    """Koban answered something unexpected (401/403/4xx, unreadable body). Not retried."""

    def __init__(self, message: str, *, status: int | None = None, envelope: bool = False) -> None:
        super().__init__(message)
        self.status = status
        # The answer carried Koban's envelope (`success: false`, a message): Koban itself
        # refused, rather than a wrong URL or a proxy (docs/koban-wire.md, the 404 guess).
        self.envelope = envelope


class KobanUnavailable(Exception):
    """Koban could not be reached (after retries); for a write, nothing was sent.

    ``transient`` is true when the failure was of a retryable kind (network, 5xx)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.retry_after = retry_after  # seconds Koban asked us to wait (its 429's Retry-After)


class KobanOutcomeUnknown(KobanUnavailable):
    """A write that may have reached Koban: keep the intent pending, never resend blindly."""


# --------------------------------------------------------------------------------------
# Refusal codes → service error codes
# --------------------------------------------------------------------------------------


class KobanMethod(StrEnum):
    """Koban write methods whose refusal codes have a meaning."""

    ADD = "Add"
    PROLONG = "Prolong"
    UNDO = "Undo"
    PRERESV = "PreresvAdd"
    DESIST = "PreresvDesist"


_REFUSALS: dict[KobanMethod, dict[str, ErrorCode]] = {
    KobanMethod.ADD: {
        "01": ErrorCode.PROSPECT_OPTION_LIMIT,
        "02": ErrorCode.LOT_NOT_AVAILABLE,
        "03": ErrorCode.USER_OPTION_LIMIT,
        "04": ErrorCode.LOT_PRERESERVED,
        "05": ErrorCode.LOT_FULL,
    },
    KobanMethod.PROLONG: {"01": ErrorCode.OPTION_NOT_FOUND, "02": ErrorCode.ALREADY_PROLONGED},
    KobanMethod.UNDO: {"01": ErrorCode.OPTION_NOT_FOUND},
    KobanMethod.PRERESV: {"01": ErrorCode.LOT_UNKNOWN, "02": ErrorCode.PROSPECT_UNKNOWN},
    KobanMethod.DESIST: {"01": ErrorCode.LOT_UNKNOWN, "02": ErrorCode.PROSPECT_UNKNOWN},
}

_METHOD_ALIASES: dict[str, KobanMethod] = {
    **{m.value.lower(): m for m in KobanMethod},
    "preresv": KobanMethod.PRERESV,
    "desist": KobanMethod.DESIST,
}

REFUSAL_FALLBACK: dict[KobanMethod, ErrorCode] = {
    KobanMethod.ADD: ErrorCode.LOT_NOT_AVAILABLE,
    KobanMethod.PROLONG: ErrorCode.OPTION_NOT_FOUND,
    KobanMethod.UNDO: ErrorCode.OPTION_NOT_FOUND,
    KobanMethod.PRERESV: ErrorCode.LOT_NOT_AVAILABLE,
    KobanMethod.DESIST: ErrorCode.NOT_PRERESERVED,
}
"""An unknown or missing code: the closest generic refusal of that method. Add/Preresv →
LOT_NOT_AVAILABLE (409: Koban will not do it on this lot), Prolong/Undo → OPTION_NOT_FOUND
(no option Koban will act on), Desist → NOT_PRERESERVED. The caller should treat it like
any refusal that contradicts local state: record drift and reconcile the lot."""


def koban_refusal(method: str, code: str | None) -> ErrorCode:
    """The service's error code for Koban's refusal ``code`` to ``method``.

    ``method`` is a :class:`KobanMethod` value (``"Add"``, ``"Prolong"``, ``"Undo"``,
    ``"PreresvAdd"`` or ``"Preresv"``, ``"PreresvDesist"`` or ``"Desist"``), any case.
    ``code`` is normalised (``5`` → ``"05"``). Unknown codes fall back per
    :data:`REFUSAL_FALLBACK`; an unknown method raises ``ValueError``.
    """
    koban_method = _METHOD_ALIASES.get(method.lower())
    if koban_method is None:
        raise ValueError(f"not a Koban write method: {method!r}")
    normalised = wire.normalise_error_code(code)
    known = _REFUSALS[koban_method].get(normalised) if normalised else None
    return known if known is not None else REFUSAL_FALLBACK[koban_method]


def is_unknown_prospect(exc: BaseException) -> bool:
    """Koban's answer to a write naming a prospect it does not know: HTTP 404 carrying its
    envelope (``success: false`` and a message). Koban documents no answer for this case,
    so this is a guess (docs/koban-wire.md); a 404 without the envelope is a wrong URL or
    method and stays a `KobanError` (502 KOBAN_ERROR at the API)."""
    return isinstance(exc, KobanError) and exc.status == 404 and exc.envelope


# --------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------

_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
_NOT_SENT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP-date); None if absent or
    unreadable. An HTTP-date is real time, like the header itself, not a tenant's clock."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_transient(exc: BaseException) -> bool:
    return (
        isinstance(exc, KobanUnavailable)
        and not isinstance(exc, KobanOutcomeUnknown)
        and exc.transient
    )


def _encode(body: Mapping[str, Any]) -> bytes:
    """A request body as JSON bytes (what ``json=`` sends, built by orjson: aiohttp's JSON
    payload showed in the API's profile under placement load, docs/benchmarks.md); what
    orjson refuses goes through the standard library."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def _is_envelope(raw: bytes) -> bool:
    """Whether an error answer is Koban's envelope: a JSON object with ``success: false``."""
    try:
        body = _decode(raw)
    except ValueError:
        return False
    if not isinstance(body, Mapping):
        return False
    folded = {str(k).lower(): v for k, v in body.items()}
    return "success" in folded and folded["success"] in (False, 0, "false", "False")


def _decode(body: bytes) -> Any:
    """A JSON answer (a UTF-8 BOM tolerated) through orjson; what orjson refuses (NaN, an
    integer beyond 64 bits, bad UTF-8) goes through the standard library, which decides."""
    try:
        return orjson.loads(body[3:] if body.startswith(b"\xef\xbb\xbf") else body)
    except orjson.JSONDecodeError:
        return json.loads(body.decode("utf-8-sig"))


class KobanClient:
    """One tenant's Koban client. The ``session`` belongs to the caller (app cleanup_ctx).

    ``calls`` counts ``(method, outcome)`` with outcome one of ``ok``, ``refused``,
    ``retry`` (one per retried attempt), ``unavailable``, ``outcome_unknown``, ``error``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        user_key: str,
        *,
        timeout_s: float = 10,
        connect_timeout_s: float = 3,
        retries: int = 3,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        retry_after_max_s: float = 30.0,
        rate_per_s: float = 5.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = {
            wire.HEADER_API_KEY: api_key,
            wire.HEADER_USER_KEY: user_key,
            "Accept": "application/json",
        }
        self._body_headers = {**self._headers, "Content-Type": "application/json"}
        # A connect timeout shorter than the total one: when it fires, nothing was sent
        # (aiohttp raises ConnectionTimeoutError), so even a write may be retried.
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(connect_timeout_s, timeout_s)
        )
        self._retries = retries
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._retry_after_max_s = retry_after_max_s
        self._sleep = sleep
        # Bucket of max(1, rate) so rates below one per second still admit one request.
        burst = max(1.0, rate_per_s)
        self.limiter = AsyncLimiter(burst, burst / rate_per_s)
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._urls: dict[str, URL] = {}

    # ---------------------------------------------------------------- transport

    def _url(self, endpoint: Endpoint) -> URL:
        """The endpoint's URL, parsed once (aiohttp re-parses a string on every call)."""
        url = self._urls.get(endpoint.path)
        if url is None:
            url = self._urls[endpoint.path] = URL(self._base_url + endpoint.path)
        return url

    def _unavailable(self, endpoint: Endpoint, why: str, **kw: Any) -> KobanUnavailable:
        return KobanUnavailable(f"Koban {endpoint.name}: {why}", **kw)

    def _unknown(self, endpoint: Endpoint, why: str, **kw: Any) -> KobanOutcomeUnknown:
        return KobanOutcomeUnknown(f"Koban {endpoint.name}: outcome unknown ({why})", **kw)

    async def _attempt(
        self,
        endpoint: Endpoint,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
    ) -> tuple[int, bytes]:
        """One HTTP exchange → (status, body), or a Koban* exception classifying the failure
        (a 5xx too: outcome unknown for a write, a transient unavailability for a read)."""
        await self.limiter.acquire()  # what `async with limiter` does (its exit is a no-op)
        try:
            async with self._session.request(
                endpoint.verb,
                self._url(endpoint),
                headers=self._headers if body is None else self._body_headers,
                params=params,
                data=None if body is None else _encode(body),
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status, raw = response.status, await response.read()
                if status == 429:
                    # Koban turned the request away before doing anything: resending is
                    # safe for a write too, once the wait it asked for has passed.
                    wait = _retry_after(response.headers.get("Retry-After"))
                    raise self._unavailable(
                        endpoint,
                        "HTTP 429 (rate limited)",
                        status=status,
                        transient=wait is None or wait <= self._retry_after_max_s,
                        retry_after=wait,
                    )
        except _NOT_SENT_ERRORS as exc:
            raise self._unavailable(endpoint, f"cannot connect: {exc!r}", transient=True) from exc
        except aiohttp.InvalidURL as exc:
            raise KobanError(f"Koban {endpoint.name}: bad URL {exc}") from exc
        except _NETWORK_ERRORS as exc:
            if endpoint.is_write:
                raise self._unknown(endpoint, repr(exc)) from exc
            raise self._unavailable(endpoint, repr(exc), transient=True) from exc
        if status >= 500:
            if endpoint.is_write:
                raise self._unknown(endpoint, f"HTTP {status}", status=status)
            raise self._unavailable(endpoint, f"HTTP {status}", status=status, transient=True)
        return status, raw

    def _count_failure(self, endpoint: Endpoint, exc: BaseException) -> None:
        if isinstance(exc, KobanOutcomeUnknown):
            self.calls[(endpoint.name, "outcome_unknown")] += 1
        elif isinstance(exc, KobanUnavailable):
            self.calls[(endpoint.name, "unavailable")] += 1
        elif isinstance(exc, KobanError):
            self.calls[(endpoint.name, "error")] += 1

    async def _exchange(
        self,
        endpoint: Endpoint,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> tuple[int, bytes]:
        """The exchange with retries; a 5xx is returned as such only on a write.

        The first attempt runs on its own: building tenacity's retry loop costs about as
        much CPU as the HTTP exchange itself (docs/benchmarks.md), and most calls succeed at
        once. Only a retryable failure builds the loop, which replays that failure as its
        own first attempt: attempts, backoff and counts are those of one loop over all."""
        try:
            return await self._attempt(endpoint, params, body)
        except (KobanUnavailable, KobanError) as exc:
            if self._retries == 0 or not _is_transient(exc):
                self._count_failure(endpoint, exc)
                raise
            first: BaseException | None = exc

        def before_sleep(_state: RetryCallState) -> None:
            self.calls[(endpoint.name, "retry")] += 1

        backoff = wait_random_exponential(multiplier=self._backoff_base_s, max=self._backoff_max_s)

        def wait(state: RetryCallState) -> float:
            failed = state.outcome.exception() if state.outcome is not None else None
            asked = getattr(failed, "retry_after", None)
            return max(asked, backoff(state)) if asked is not None else backoff(state)

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop_after_attempt(1 + self._retries),
            wait=wait,
            retry=retry_if_exception(_is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first is not None:
                        failed, first = first, None
                        raise failed
                    return await self._attempt(endpoint, params, body)
        except (KobanUnavailable, KobanError) as exc:
            self._count_failure(endpoint, exc)
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _fail(self, endpoint: Endpoint, exc: KobanError | KobanUnavailable) -> NoReturn:
        self._count_failure(endpoint, exc)
        raise exc

    def _client_error(
        self, endpoint: Endpoint, status: int, raw: bytes
    ) -> KobanError | KobanUnavailable:
        detail = raw[:200].decode("utf-8", "replace")
        return KobanError(
            f"Koban {endpoint.name}: HTTP {status}: {detail}",
            status=status,
            envelope=_is_envelope(raw),
        )

    async def _read(self, endpoint: Endpoint, params: Mapping[str, str] | None = None) -> Any:
        """A GET → decoded JSON (2xx only)."""
        status, raw = await self._exchange(endpoint, params=params)
        if not 200 <= status < 300:
            self._fail(endpoint, self._client_error(endpoint, status, raw))
        try:
            return _decode(raw)
        except ValueError as exc:
            self._fail(endpoint, KobanError(f"Koban {endpoint.name}: unreadable body: {exc}"))

    def _parse_read(self, endpoint: Endpoint, parse: Callable[[Any], T], payload: Any) -> T:
        try:
            result = parse(payload)
        except (ValidationError, ValueError, TypeError) as exc:
            self._fail(endpoint, KobanError(f"Koban {endpoint.name}: unexpected answer: {exc}"))
        self.calls[(endpoint.name, "ok")] += 1
        return result

    async def _write(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        params: Mapping[str, str] | None = None,
    ) -> KobanAnswer:
        """A POST → KobanAnswer (success or business refusal)."""
        status, raw = await self._exchange(endpoint, params=params, body=body)
        answer: KobanAnswer | None
        try:
            answer = KobanAnswer.model_validate(_decode(raw))
        except (ValidationError, ValueError):
            answer = None
        if 200 <= status < 300:
            if answer is None:
                # Koban took the request and answered 2xx: it may well have applied it.
                self._fail(endpoint, self._unknown(endpoint, f"unreadable {status} answer"))
        elif 400 <= status < 500 and status not in (401, 403, 407):
            # A refusal carried by a 4xx is still a refusal when it has a code.
            if answer is None or answer.success or answer.error_code is None:
                self._fail(endpoint, self._client_error(endpoint, status, raw))
        else:
            self._fail(endpoint, self._client_error(endpoint, status, raw))
        assert answer is not None
        self.calls[(endpoint.name, "ok" if answer.success else "refused")] += 1
        return answer

    # ---------------------------------------------------------------- reads

    async def read_raw(self, endpoint: Endpoint, params: Mapping[str, str] | None = None) -> Any:
        """A read's decoded JSON, unparsed (for `koban check`, which judges the shapes)."""
        payload = await self._read(endpoint, params)
        self.calls[(endpoint.name, "ok")] += 1
        return payload

    async def get_lot_status(self, extcode: str) -> LotStatus:
        endpoint = wire.GET_LOT_STATUS
        payload = await self._read(endpoint, wire.lot_status_params(extcode))
        return self._parse_read(endpoint, LotStatus.model_validate, payload)

    async def get_updated(
        self, updated: int, page_size: int = 200, process_code: str | None = None
    ) -> AsyncIterator[DealPage]:
        """Lots updated since ``updated`` (UNIX s), page by page until ``s >= Length``.

        With ``process_code``, GetUpdatedProcess for that programme. Stops early on an empty
        page (a shrinking ``Length`` must not loop forever)."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        endpoint = wire.DEAL_GET_UPDATED if process_code is None else wire.DEAL_GET_UPDATED_PROCESS
        start = 0
        while True:
            params = wire.updated_params(updated, start, page_size, process_code)
            payload = await self._read(endpoint, params)
            page = self._parse_read(endpoint, DealPage.model_validate, payload)
            yield page
            # Skipped deals count: they took their places on the page.
            start += page.raw_count
            if start >= page.length or not page.raw_count:
                return

    async def get_programs(self) -> list[Program]:
        endpoint = wire.DEAL_PROCESS_GET_ALL
        payload = await self._read(endpoint)
        return self._parse_read(endpoint, wire.parse_programs, payload)

    # ---------------------------------------------------------------- writes

    async def add_option(
        self,
        extcode: str,
        third_guid: str,
        rank: int,
        date_option: int,
        partner_guid: str | None = None,
    ) -> KobanAnswer:
        body = wire.add_body(extcode, third_guid, rank, date_option, partner_guid)
        return await self._write(wire.OPTION_ADD, body)

    async def prolong_option(self, extcode: str, rank: int, until: int) -> KobanAnswer:
        return await self._write(wire.OPTION_PROLONG, wire.prolong_body(extcode, rank, until))

    async def undo_option(self, extcode: str, rank: int) -> KobanAnswer:
        return await self._write(wire.OPTION_UNDO, wire.undo_body(extcode, rank))

    async def add_prereservation(
        self,
        extcode: str,
        third_guid: str,
        price_cents: int,
        deposit_cents: int,
        partner_guid: str | None = None,
    ) -> KobanAnswer:
        body = wire.preresv_add_body(extcode, third_guid, price_cents, deposit_cents, partner_guid)
        return await self._write(wire.PRERESV_ADD, body)

    async def desist(self, extcode: str, third_guid: str) -> KobanAnswer:
        return await self._write(wire.PRERESV_DESIST, wire.desist_body(extcode, third_guid))

    async def post_account(self, account: Account) -> str:
        """``ncThird/PostOne?uniqueproperty=Extcode`` with Koban's account structure → the
        third's Guid, read from ``Result``. The same ``Extcode`` twice updates one third.

        A refusal raises ``KobanError`` (no code table for PostOne); a success without a
        Guid raises ``KobanOutcomeUnknown`` (the third exists but we cannot name it)."""
        endpoint = wire.THIRD_POST_ONE
        answer = await self._write(endpoint, account.wire(), wire.third_params())
        if not answer.success:
            raise KobanError(
                f"Koban {endpoint.name}: refused {answer.error_code}: {answer.message}",
                envelope=True,
            )
        guid = answer.new_guid
        if guid is None:
            raise self._unknown(endpoint, "success without a Guid in Result")
        return guid

    async def post_third(
        self,
        label: str,
        first_name: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        kind: ThirdKind = "PROSPECT",
        *,
        cell: str | None = None,
        extcode: str | None = None,
    ) -> str:
        """A prospect or CGP from its coordinates (`wire.account`) → its Guid."""
        return await self.post_account(
            wire.account(label, first_name, email, phone, kind, cell=cell, extcode=extcode)
        )

    # ---------------------------------------------------------------- dénonciations

    async def check_denonciation(self, programme: str, contact: Contact) -> DenonciationCheck:
        """ncDenonc/CheckDenonc. It changes nothing in Koban, so a lost answer is only
        ``KobanUnavailable`` (asking again is harmless), never an unknown outcome."""
        endpoint = denonc.CHECK_DENONC
        try:
            status, raw = await self._exchange(
                endpoint, body=denonc.denonciation_body(programme, contact)
            )
        except KobanOutcomeUnknown as exc:
            raise KobanUnavailable(str(exc), status=exc.status, transient=True) from exc
        if not 200 <= status < 300:
            self._fail(endpoint, self._client_error(endpoint, status, raw))
        try:
            payload = _decode(raw)
        except ValueError as exc:
            self._fail(endpoint, KobanError(f"Koban {endpoint.name}: unreadable body: {exc}"))
        return self._parse_read(endpoint, denonc.parse_check, payload)

    async def create_denonciation(
        self, programme: str, contact: Contact, by: str | None = None
    ) -> KobanAnswer:
        """ncDenonc/Create; `by` is the CGP's guid. A refusal is an answer, not raised."""
        body = denonc.denonciation_body(programme, contact, by)
        return await self._write(denonc.CREATE_DENONC, body)

    # ---------------------------------------------------------------- validated préréservation

    async def add_valid_prereservation(
        self, extcode: str, values: Mapping[str, Any]
    ) -> KobanAnswer:
        """ncPreresv/AddValid; `values` keyed as `add_valid.FIELDS` names them."""
        body = add_valid.add_valid_body(extcode, values)
        return await self._write(add_valid.ADD_VALID, body)
