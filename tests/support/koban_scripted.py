"""A scripted stand-in for Koban's HTTP API, for client tests.

What it sets up and checks, in detail: docs/testing.md, `koban_scripted.py`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict

PREFIX = "/api/v1"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    json: Any = None
    raw: bytes | None = None
    action: Literal["reply", "drop", "hang"] = "reply"
    headers: dict[str, str] | None = None


DROP = Reply(action="drop")
HANG = Reply(action="hang")

# Koban's method paths (under the API prefix) as its documentation spells them, written
# here rather than taken from `service.koban.wire`, so a wrong path in the client fails;
# and the two commonest answers.
LOT_STATUS = "/ncOption/GetLotStatus"
ADD = "/ncOption/Add"
PROLONG = "/ncOption/Prolong"
UNDO = "/ncOption/Undo"
PRERESV = "/ncPreresv/Add"
DESIST = "/ncPreresv/Desist"
UPDATED = "/ncDeal/GetUpdated"
UPDATED_PROCESS = "/ncDeal/GetUpdatedProcess"
PROGRAMS = "/ncDealProcess/GetAll"
THIRD = "/ncThird/PostOne"
THIRD_BY_KEY = "/ncThird/GetOneByKey"
OK = Reply(json={"success": True})
FREE = Reply(json={"Result": 0, "MaxRank": 0, "EndDate": None})


@dataclass
class Seen:
    verb: str
    path: str  # under the prefix, e.g. "/ncOption/Add"
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: Any = None


Responder = Reply | Callable[[Seen], Reply] | Callable[[Seen], Awaitable[Reply]]


@dataclass
class _Script:
    queue: deque[Responder] = field(default_factory=deque)
    last: Responder | None = None

    def next(self) -> Responder | None:
        if self.queue:
            self.last = self.queue.popleft()
        return self.last


class ScriptedKoban:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._scripts: dict[tuple[str, str], _Script] = {}
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------ scripting

    def script(self, verb: str, path: str, *replies: Responder) -> None:
        """Append replies for ``verb path`` (path under /api/v1)."""
        entry = self._scripts.setdefault((verb.upper(), path), _Script())
        entry.queue.extend(replies)

    def requests(self, path: str | None = None) -> list[Seen]:
        return [s for s in self.seen if path is None or s.path == path]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    # ------------------------------------------------------------ server

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix(PREFIX)
        raw_body = await request.read()
        body: Any = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body = raw_body.decode("utf-8", "replace")
        seen = Seen(request.method, path, dict(request.query), CIMultiDict(request.headers), body)
        self.seen.append(seen)
        script = self._scripts.get((request.method, path))
        responder = script.next() if script else None
        if responder is None:
            return web.json_response({"success": False, "message": "not scripted"}, status=404)
        reply = responder(seen) if callable(responder) else responder
        if inspect.isawaitable(reply):  # a responder may act on the world before answering
            reply = await reply
        if reply.action == "drop":
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            if sock is not None:  # linger 0: close with a TCP reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            raise asyncio.CancelledError  # nothing more to do for this request
        if reply.action == "hang":
            await self._release.wait()
            return web.Response(status=504)
        if reply.raw is not None:
            return web.Response(status=reply.status, body=reply.raw, headers=reply.headers)
        return web.json_response(reply.json, status=reply.status, headers=reply.headers)

    async def start(self) -> ScriptedKoban:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedKoban:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
