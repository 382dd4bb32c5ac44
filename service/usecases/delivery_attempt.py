"""One delivery attempt: the POST of an event to a subscriber's URL (never redirected, the
answer read at most 1 KiB, errors described without the URL), and the per-tenant pieces
every attempt uses: the target policy, the ``webhook-id``, the retry delays.
The worker that schedules attempts is `service.usecases.delivery`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from service.config import TenantSettings
from service.outbound.targets import TargetPolicy, TargetRefused, check_url

__all__ = [
    "ANSWER_KEPT",
    "CONTENT_TYPE",
    "GONE_REASON",
    "AttemptResult",
    "policy_of",
    "retry_delays",
    "send",
    "webhook_id",
]

CONTENT_TYPE = "application/cloudevents+json"
ANSWER_KEPT = 1024  # bytes of a receiver's answer read, at most
GONE_REASON = "the receiver answered 410 Gone"


def policy_of(settings: TenantSettings) -> TargetPolicy:
    return TargetPolicy(settings.allow_private_targets, settings.allow_http_targets)


def webhook_id(tenant: str, event_id: str) -> str:
    """CloudEvent ids are unique per tenant only: the receiver's idempotency key names it."""
    return f"{tenant}:{event_id}"


def retry_delays(settings: TenantSettings) -> list[int]:
    return [int(d.fixed_seconds()) for d in settings.delivery_retry_schedule]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _refused_reason(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TargetRefused):
            return str(seen)
        for inner in getattr(seen, "exceptions", ()) or ():
            found = _refused_reason(inner)
            if found:
                return found
        seen = seen.__cause__ or getattr(seen, "os_error", None)
        if seen is exc:
            break
    return None


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    policy: TargetPolicy,
) -> AttemptResult:
    """POST `body` once; never follows a redirect, reads at most 1 KiB of the answer.
    Errors are described without the URL (it may hold credentials)."""
    started = time.monotonic()

    def done(status: int | None, error: str | None) -> AttemptResult:
        return AttemptResult(status, error, int((time.monotonic() - started) * 1000))

    refused = check_url(url, policy)
    if refused is not None:
        return done(None, f"target refused: {refused}")
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": CONTENT_TYPE, **headers},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            await response.content.read(ANSWER_KEPT)
            return done(response.status, None)
    except TimeoutError:
        return done(None, f"timeout after {timeout_s:g} s")
    except aiohttp.ClientConnectorError as exc:
        reason = _refused_reason(exc)
        if reason is not None:
            return done(None, reason)
        return done(
            None, f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
        )
    except aiohttp.ClientError as exc:
        return done(None, f"{type(exc).__name__}")
    except TargetRefused as exc:
        return done(None, str(exc))
    except OSError as exc:
        return done(None, f"connection failed: {exc.strerror or type(exc).__name__}")
