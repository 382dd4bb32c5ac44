"""Koban's inbound webhooks over HTTP, under ``/koban/{tenant}/…``.

``GET option-check?extcode=`` answers Koban's pre-check; the six form-encoded POSTs are
applied by `service.usecases.koban_webhooks` and answered ``{"success": true}``. Refusals
are ``{"success": false, "error": {"message", "code"}}`` with 400 (malformed), 401 (token),
404 (tenant) or 503 (store). The tenant is looked up first, then the token, then the form:
nothing is read or written before all three pass. docs/webhooks.md has the details.
"""

from __future__ import annotations

import codecs
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from pydantic import ValidationError

from service.koban.webhook_forms import MAX_IDENTIFIER, WebhookForm
from service.storage.errors import STORE_FAILURES
from service.storage.store import StoreConflict
from service.tenancy import Tenant, Tenants
from service.usecases.koban_webhooks import WEBHOOKS, Webhook, apply_webhook
from statecharts.webhook_rules import option_check_answer

__all__ = [
    "MAX_BODY",
    "TOKEN_HEADER",
    "TOKEN_QUERY",
    "add_webhook_routes",
    "option_check_answer",
    "redact_token",
]

log = structlog.get_logger("service.entrypoints.koban_webhooks")

PREFIX = "/koban/{tenant}/"
TOKEN_HEADER = "X-Koban-Webhook-Token"
TOKEN_QUERY = "token"
MAX_BODY = 64 * 1024
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 500
# Encodings a form body may declare (codecs' canonical names); UTF-8 when none is declared.
CHARSETS = frozenset({"utf-8", "iso8859-1", "cp1252", "ascii"})
OPTION_CHECK = "option-check"
# Koban's lead webhook (its handler lives in koban_lead_webhook); named here so that a wrong
# method on it is a 405 like the others'.
LEAD = "lead"

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


# --------------------------------------------------------------------------- reading


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


async def read_form_pairs(request: web.Request) -> list[tuple[str, str]]:
    """A webhook's form body as (name, value) pairs, in order: the content type, charset,
    size and field count checked; anything unreadable is a 400 `WebhookError`."""
    if request.content_type != FORM_CONTENT_TYPE:
        raise _malformed(f"expected Content-Type {FORM_CONTENT_TYPE}")
    charset = _charset(request.charset)
    body = await _read_body(request)
    try:
        return parse_qsl(
            body.decode(charset),
            keep_blank_values=True,
            encoding=charset,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (LookupError, UnicodeDecodeError, ValueError):
        raise _malformed("unreadable form body") from None


async def _read_form(request: web.Request, form: type[F]) -> F:
    pairs = await read_form_pairs(request)
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
            except STORE_FAILURES:
                raise WebhookError(503, "STORE_UNAVAILABLE", "store unavailable") from None
        except WebhookError as exc:
            self._refused(request, OPTION_CHECK, exc)
            return exc.response()
        return web.json_response(option_check_answer(lot))

    def post_handler(
        self, name: str, webhook: Webhook[Any]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                tenant = self.tenant(request)
                self.authenticate(request, tenant)
                form = await _read_form(request, webhook.form)
                try:
                    outcome = await apply_webhook(tenant, name, form)
                except StoreConflict:
                    raise WebhookError(503, "STORE_BUSY", "lot busy, retry") from None
                except STORE_FAILURES:
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

    async def fallback(self, request: web.Request) -> web.Response:
        rest = request.match_info.get("rest", "")
        if rest == OPTION_CHECK:
            return _error(405, "METHOD_NOT_ALLOWED", "use GET", {"Allow": "GET, HEAD"})
        if rest in WEBHOOKS or rest == LEAD:
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
    for name, webhook in WEBHOOKS.items():
        app.router.add_post(PREFIX + name, hooks.post_handler(name, webhook))
    # Last: wrong methods and unknown names get a JSON answer too.
    app.router.add_route("*", PREFIX + "{rest:.*}", hooks.fallback)
