"""Structured logs (structlog) and the request id every line and response carries.

``configure_logging`` sets structlog up once per process: JSON lines by default, a
console renderer for a person. Every request gets an id — the caller's ``X-Request-ID``
when it is a sane token, else a fresh one — bound into structlog's context variables for
the whole request (every log line of the request carries ``request_id``), stored on the
request, and echoed on every response (errors, 404s and streamed responses included,
through ``on_response_prepare``). One ``http_request`` line per request, with the query's
``token`` redacted.

aiohttp logs through the standard library, and some of its records quote a request line
or a URL: the access log (``%r``), a request line too long for its parser (the first bytes
of the URL, in the exception's text, at ERROR: printed to stderr even when nothing is
configured). `RedactTokens` rewrites such records (message and exception text) through
`service.webhooks.redact_token`; it is installed on aiohttp's loggers when this module is
imported (so before any app serves) and again by `configure_logging`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Literal

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from structlog.contextvars import bind_contextvars, reset_contextvars

from service.webhooks import redact_token

__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "RedactTokens",
    "configure_logging",
    "redact_stdlib_logs",
    "request_id_middleware",
    "request_id_of",
    "stamp_request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
# A caller's id is kept only when it is short and harmless in logs and headers.
_ACCEPTED_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

log = structlog.get_logger("service.api")

# aiohttp's loggers (a filter applies to the records created at its own logger).
AIOHTTP_LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
)


class RedactTokens(logging.Filter):
    """Every ``token`` query value in a record's message and exception text → ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: its handler reports it
            message = str(record.msg)
        redacted = redact_token(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_token(record.exc_text)
        return True


def redact_stdlib_logs() -> None:
    """Install `RedactTokens` on aiohttp's loggers (once each)."""
    for name in AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


redact_stdlib_logs()


def configure_logging(
    fmt: Literal["json", "console"] = "json",
    level: Literal["debug", "info", "warning", "error"] = "info",
) -> None:
    """Process-wide structlog set-up: context variables merged into every line; aiohttp's
    standard-library records redacted."""
    redact_stdlib_logs()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _ACCEPTED_ID.fullmatch(given) else os.urandom(16).hex()


def request_id_of(request: web.Request) -> str:
    """The request's id (assigned on first use, so even early failures have one)."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = _request_id(request)
        request[REQUEST_ID] = rid
    return rid


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: the id in the log context, one access line per request."""
    rid = request_id_of(request)
    started = time.perf_counter()
    status = 500
    bound = bind_contextvars(request_id=rid)  # what bound_contextvars does, minus contextlib
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        try:
            path = request.path_qs
            log.info(
                "http_request",
                method=request.method,
                path=redact_token(path) if "token" in path.lower() else path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        finally:
            reset_contextvars(**bound)


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, streamed or not, carries the id."""
    response.headers[REQUEST_ID_HEADER] = request_id_of(request)
