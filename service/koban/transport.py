"""The HTTP side of the Koban client: one exchange, its retries (full-jitter backoff, a
429's Retry-After honoured), the tenant's leaky-bucket limiter, and how an answer is read
(a GET's JSON, a POST's `KobanAnswer`). Reads retry; writes only when nothing was sent.
Koban's methods themselves are `service.koban.client.KobanClient`.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import time
from collections.abc import Awaitable, Callable, Mapping
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

from service.koban import wire
from service.koban.errors import KobanError, KobanOutcomeUnknown, KobanUnavailable
from service.koban.wire import Endpoint, KobanAnswer

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

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


class KobanTransport:
    """One tenant's exchanges with Koban. The ``session`` belongs to the caller (app cleanup_ctx).

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
        return self._json_answer(endpoint, status, raw)

    async def _find(self, endpoint: Endpoint, params: Mapping[str, str]) -> Any | None:
        """A GET that looks one thing up → decoded JSON, or None (counted ``refused``)
        when Koban's envelope says ``success: false`` on a 2xx or a 404: it has no such
        thing. A 404 without the envelope is a wrong URL or method: a `KobanError`."""
        status, raw = await self._exchange(endpoint, params=params)
        if (200 <= status < 300 or status == 404) and _is_envelope(raw):
            self.calls[(endpoint.name, "refused")] += 1
            return None
        return self._json_answer(endpoint, status, raw)

    def _json_answer(self, endpoint: Endpoint, status: int, raw: bytes) -> Any:
        """A 2xx answer's decoded JSON; anything else fails as a `KobanError`."""
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
