"""Structured logs (structlog) and the request id every line and response carries.

``configure_logging`` sets structlog up once per process (JSON lines, or a console
renderer). Every request gets an id (the caller's sane ``X-Request-ID``, else a fresh one),
bound into every log line of the request and echoed on every response; one
``http_request`` line per request (`log_access`). `RedactTokens` rewrites aiohttp's own
records that quote a URL (access log, over-long request lines) through `redact_token`, so
a webhook secret never reaches a log; it is installed on import and by `configure_logging`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import orjson
import structlog
from aiohttp import web

from service.entrypoints.koban_webhooks import redact_token

__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "IsoUtcStamper",
    "LineWriter",
    "RedactTokens",
    "assign_request_id",
    "configure_logging",
    "log_access",
    "redact_stdlib_logs",
    "request_id_of",
]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
# A caller's id is kept only when it is short and harmless in logs and headers.
_ACCEPTED_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

log = structlog.get_logger("service.entrypoints.api")

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


class IsoUtcStamper:
    """``timestamp``: ISO-8601 UTC with ``Z`` and microseconds, like structlog's
    ``TimeStamper(fmt="iso", utc=True)``; the date-and-seconds part is formatted once per
    second (≈ 0.3 µs a line instead of ≈ 1.5 µs for a ``datetime``)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: object, _name: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def _orjson_line(obj: object, **kw: Any) -> str:
    """A JSON line through orjson (≈ 0.4 µs against ≈ 3 µs for the standard library's);
    what orjson refuses (an integer beyond 64 bits) goes through the standard library."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS, **kw).decode()
    except orjson.JSONEncodeError:
        return json.dumps(obj, **kw)


class LineWriter:
    """structlog's logger for `configure_logging`: each rendered line goes to `stream`.

    Outside an event loop a line is written and flushed at once (as structlog's
    ``WriteLogger`` does). Inside one, lines wait at most `FLUSH_AFTER_S` (20 ms) and are
    then written together with one ``write`` + ``flush``, or as soon as `_MAX_PENDING` are
    waiting: under load one system call carries hundreds of requests' lines instead of a
    few (a file ``write`` per turn of the loop was ≈ 12 % of an availability read's CPU,
    measured with the access line on and off). Warnings, errors and worse flush everything
    waiting at once; lines keep their order; what waits is written at interpreter exit
    too. A process killed outright loses at most its last 20 ms of lines."""

    __slots__ = ("__weakref__", "_lock", "_pending", "_stream")
    _MAX_PENDING = 512
    FLUSH_AFTER_S = 0.02

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._lock = threading.Lock()
        _WRITERS.add(self)

    def __repr__(self) -> str:
        return f"<LineWriter(stream={self._stream!r})>"

    def msg(self, message: str) -> None:
        """Queue `message` (a line without its newline) for the next write."""
        with self._lock:  # another thread's flush may be taking the list
            pending = self._pending
            pending.append(message)
            waiting = len(pending)
        if waiting == 1:
            loop = asyncio._get_running_loop()  # None, where get_running_loop would raise
            if loop is not None:
                loop.call_later(self.FLUSH_AFTER_S, self.flush)
            else:  # no loop running in this thread: write it now
                self.flush()
        elif waiting >= self._MAX_PENDING:
            self.flush()

    def msg_now(self, message: str) -> None:
        """Write `message`, and everything queued before it, at once."""
        with self._lock:
            self._pending.append(message)
        self.flush()

    def flush(self) -> None:
        """Write and flush every queued line, in order."""
        with self._lock:
            lines, self._pending = self._pending, []
            if lines:
                lines.append("")
                self._stream.write("\n".join(lines))
                self._stream.flush()

    log = debug = info = msg
    warn = warning = err = error = critical = exception = fatal = failure = msg_now


class LineWriterFactory:
    """structlog's ``logger_factory``: one `LineWriter` per stream, shared by every logger,
    so that lines keep their order."""

    __slots__ = ("writer",)

    def __init__(self, stream: TextIO) -> None:
        self.writer = LineWriter(stream)

    def __call__(self, *_args: Any) -> LineWriter:
        return self.writer


_WRITERS: weakref.WeakSet[LineWriter] = weakref.WeakSet()


@atexit.register
def _flush_writers() -> None:
    for writer in list(_WRITERS):
        with contextlib.suppress(OSError, ValueError):  # a closed stream: nothing to save
            writer.flush()


@dataclass(slots=True)
class _Fast:
    """The configuration `configure_logging` installed: its processors, factory and
    wrapper (to recognise it), whether it logs at INFO, and one logger of its factory."""

    processors: list[structlog.typing.Processor]
    factory: Any
    wrapper: Any
    info: bool
    logger: LineWriter
    stamper: IsoUtcStamper
    json: bool

    def current(self) -> bool:
        """Is structlog still configured this way (a test may have reconfigured it)?"""
        config = structlog.get_config()
        return (
            config["processors"] is self.processors
            and config["logger_factory"] is self.factory
            and config["wrapper_class"] is self.wrapper
            and config["context_class"] is dict
        )


_fast: _Fast | None = None


def configure_logging(
    fmt: Literal["json", "console"] = "json",
    level: Literal["debug", "info", "warning", "error"] = "info",
) -> None:
    """Process-wide structlog set-up: context variables merged into every line; aiohttp's
    standard-library records redacted. JSON lines are rendered by orjson and written with
    one ``write`` + ``flush`` each."""
    global _fast
    redact_stdlib_logs()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_line)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    stamper = IsoUtcStamper()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamper,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
    ]
    factory = LineWriterFactory(sys.stderr)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    wrapper = structlog.make_filtering_bound_logger(threshold)
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper,
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    _fast = _Fast(
        processors, factory, wrapper, threshold <= logging.INFO, factory(), stamper, fmt == "json"
    )


def log_access(method: str, path: str, status: int, seconds: float) -> None:
    """The request's one ``http_request`` line (``token`` query values redacted).

    Module loggers are lazy proxies that assemble a bound logger on every call, so tests
    may reconfigure structlog at any time (``cache_logger_on_first_use`` would pin the
    first configuration for good). Under the configuration `configure_logging` installed,
    checked on every call, this line skips that assembly and structlog's dispatch: the
    event dict it would build goes through what the processors would do to it (for JSON:
    the context variables, the level, the time, orjson; for the console: the processors
    themselves) to the same logger (`tests/integration/test_api_errors.py` checks both
    write the same line). Under any other configuration it is logged through structlog."""
    if "token" in path.lower():
        path = redact_token(path)
    duration_ms = round(seconds * 1000, 2)
    fast = _fast
    if fast is None or not fast.current():
        log.info("http_request", method=method, path=path, status=status, duration_ms=duration_ms)
        return
    if not fast.info:
        return
    # What `BoundLogger.info` builds: its (empty) context, the keywords, then the event.
    event: Any = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "event": "http_request",
    }
    logger = fast.logger
    if fast.json:
        # The processors' work, without their calls: no stack or exception to render here.
        structlog.contextvars.merge_contextvars(logger, "info", event)
        event["level"] = "info"
        fast.stamper(logger, "info", event)
        logger.msg(_orjson_line(event))
        return
    for processor in fast.processors:
        event = processor(logger, "info", event)
    logger.msg(event)


class _RequestIds:
    """Fresh request ids: 32 hex digits, a random 64-bit prefix drawn once per process (and
    again in a forked child) followed by a 64-bit counter. Unique across the API's processes
    and restarts as far as 64 random bits go, without a ``getrandom`` system call per
    request (``os.urandom(16)`` was ≈ 2 % of an availability read's CPU)."""

    __slots__ = ("_counter", "_prefix")
    _counter: itertools.count[int]
    _prefix: str

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_new_request_id = _RequestIds()
os.register_at_fork(after_in_child=_new_request_id.reseed)


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    return given if given and _ACCEPTED_ID.fullmatch(given) else _new_request_id()


def assign_request_id(request: web.Request) -> str:
    """Give the request its id (the API's middleware does, before anything else)."""
    rid = request[REQUEST_ID] = _request_id(request)
    return rid


def request_id_of(request: web.Request) -> str:
    """The request's id (assigned on first use, so even early failures have one)."""
    try:
        return request[REQUEST_ID]
    except KeyError:
        return assign_request_id(request)
