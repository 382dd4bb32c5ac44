"""Target checks at connect time (docs/subscriptions.md): every address a connection is
about to use is checked after DNS, so literals, names resolving to loopback and a
rebinding resolver are refused before a byte is sent; no redirects followed; a slow
receiver times out.

Refused targets are never contacted: the check runs in the connector's socket factory,
before ``connect()`` (10.0.0.1 and 169.254.169.254 are refused, not tried)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from service.outbound.targets import TargetPolicy, guarded_session
from service.usecases.delivery import send
from tests.support.subscriptions import Receiver, serving

STRICT = TargetPolicy(allow_private=False, allow_http=True)
OPEN = TargetPolicy(allow_private=True, allow_http=True)


class Rebinding(AbstractResolver):
    """Answers every name with 127.0.0.1 (a name that resolved elsewhere at creation)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


async def post(policy: TargetPolicy, url: str, **kw: Any) -> tuple[int | None, str | None]:
    async with guarded_session(policy, **kw) as session:
        result = await send(session, url, b"{}", {}, 2.0, policy)
    return result.status, result.error


async def test_loopback_literals_and_names_are_refused_before_connecting() -> None:
    async with serving(Receiver()) as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        for url in (
            receiver.url,
            f"http://localhost:{port}/hook",
            f"http://[::ffff:127.0.0.1]:{port}/hook",
        ):
            status, error = await post(STRICT, url)
            assert status is None and error is not None and error.startswith("target refused")
        assert receiver.requests == 0
        assert (await post(OPEN, receiver.url))[0] == 401  # reached: unsigned, refused


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.0.0.1:9/x", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]:9/x", "loopback"),
        ("http://100.64.0.1/x", "CGNAT"),
        ("http://0.0.0.0:9/x", "unspecified"),
    ],
)
async def test_private_literals_are_refused_without_traffic(url: str, kind: str) -> None:
    status, error = await post(STRICT, url)
    assert status is None and error is not None
    assert error.startswith("target refused") and kind in error


async def test_a_rebinding_name_is_refused_at_connect_time() -> None:
    async with serving(Receiver()) as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        resolver = Rebinding()
        status, error = await post(STRICT, f"http://hooks.example:{port}/hook", resolver=resolver)
        assert resolver.asked == ["hooks.example"]
        assert status is None and error == "target refused: 127.0.0.1 is a loopback address"
        assert receiver.requests == 0
        allowed = await post(OPEN, f"http://hooks.example:{port}/hook", resolver=Rebinding())
        assert allowed[0] == 401 and receiver.requests == 1


async def test_redirects_are_not_followed_and_answers_are_read_no_further_than_1_kib() -> None:
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=307, headers={"Location": "/elsewhere"})

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=200)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        for _ in range(64):  # 4 MiB if anybody read it all
            await response.write(b"x" * 65536)
        return response

    app = web.Application()
    app.router.add_post("/hook", redirect)
    app.router.add_post("/elsewhere", elsewhere)
    app.router.add_post("/big", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        status, error = await post(OPEN, f"http://127.0.0.1:{port}/hook")
        assert (status, error, hits) == (307, None, ["/hook"])
        assert (await post(OPEN, f"http://127.0.0.1:{port}/big")) == (200, None)
    finally:
        await runner.cleanup()


async def test_a_slow_receiver_times_out() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with guarded_session(OPEN) as session:
            result = await send(session, f"http://127.0.0.1:{port}/hook", b"{}", {}, 0.2, OPEN)
    finally:
        await runner.cleanup()
    assert result.status is None and result.error == "timeout after 0.2 s"


async def test_http_is_refused_where_the_tenant_wants_https() -> None:
    https_only = TargetPolicy(allow_private=True, allow_http=False)
    status, error = await post(https_only, "http://127.0.0.1:9/x")
    assert status is None and error is not None and "https" in error
