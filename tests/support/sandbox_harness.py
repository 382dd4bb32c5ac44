"""The Koban sandbox over real HTTP on loopback, with a webhook receiver that records every
call, a manual clock at `T0` and a small stock (`running_sandbox`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.sandbox import SandboxState, WebhookSender, build_sandbox_app, populate
from service.sandbox.webhooks import WEBHOOK_KINDS

API_KEY = "sandbox-api-key"
USER_KEY = "sandbox-user-key"
HOOK_TOKEN = "hook-secret"
HEADERS = {"X-ncApi": API_KEY, "X-ncUser": USER_KEY, "Accept": "application/json"}
T0 = 1_800_000_600  # 2027-01-15T08:10:00Z, ten minutes after a tick
DAY = 86_400
TICK = 1_800


def ceil_to_tick(ts: int) -> int:
    return -(-ts // TICK) * TICK


# --------------------------------------------------------------------------- helpers


@dataclass
class HookCall:
    kind: str
    method: str
    fields: list[tuple[str, str]]
    query: dict[str, str]
    headers: dict[str, str]

    @property
    def form(self) -> dict[str, str]:
        return dict(self.fields)


@dataclass
class Receiver:
    """A small webhook receiver on loopback that records every call."""

    calls: list[HookCall] = field(default_factory=list)
    check_answer: dict[str, Any] = field(default_factory=lambda: {"status": True, "rank": 1})
    base_url: str = ""

    def of(self, kind: str) -> list[HookCall]:
        return [c for c in self.calls if c.kind == kind]

    async def handle(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        form = await request.post() if request.method == "POST" else {}
        self.calls.append(
            HookCall(
                kind=kind,
                method=request.method,
                fields=[(k, str(v)) for k, v in form.items()],
                query=dict(request.query),
                headers=dict(request.headers),
            )
        )
        if request.method == "GET":
            return web.json_response(self.check_answer)
        return web.json_response({"success": True})

    def targets(self) -> dict[str, str]:
        kinds = [*WEBHOOK_KINDS, "option_check"]
        return {k: f"{self.base_url}/hooks/{k}" for k in kinds}


@contextlib.asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/hooks/{kind}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.base_url = f"http://{host}:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


class ManualClock:
    def __init__(self, start: int) -> None:
        self.t = start

    def __call__(self) -> int:
        return self.t


@dataclass
class Harness:
    state: SandboxState
    client: TestClient[web.Request, web.Application]
    receiver: Receiver
    clock: ManualClock

    async def koban(
        self,
        method: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        client_timeout: float | None = None,
    ) -> tuple[int, Any]:
        verb = "GET" if body is None else "POST"
        kwargs: dict[str, Any] = {"headers": HEADERS if headers is None else headers}
        if body is not None:
            kwargs["json"] = body
        if params is not None:
            kwargs["params"] = {k: str(v) for k, v in params.items()}
        if client_timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=client_timeout)
        async with self.client.request(verb, f"/api/v1/{method}", **kwargs) as response:
            return response.status, await response.json(content_type=None)

    async def control(
        self, verb: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        async with self.client.request(verb, f"/_sandbox/{path}", **kwargs) as response:
            return response.status, await response.json(content_type=None)

    async def delivered(self) -> Receiver:
        """Wait until every webhook fired so far reached the receiver."""
        status, _ = await self.control("GET", "webhooks")
        assert status == 200
        return self.receiver

    # Koban calls used by many tests
    async def add(
        self, extcode: str, third: str, rank: int | None = None, **extra: Any
    ) -> tuple[int, Any]:
        body: dict[str, Any] = {"Third": {"Guid": third}, "Deal": {"Extcode": extcode}}
        if rank is not None:
            body["Rank"] = rank
        body.update(extra)
        return await self.koban("ncOption/Add", body)

    async def status(self, extcode: str) -> dict[str, Any]:
        code, answer = await self.koban("ncOption/GetLotStatus", params={"extcode": extcode})
        assert code == 200
        return dict(answer)

    async def post_third(self, name: str, **extra: Any) -> str:
        body: dict[str, Any] = {
            "Label": name,
            "FirstName": "Test",
            "EMail": f"{name}@example.com",
            "Status": {"Code": "PROSPECT"},
        }
        body.update(extra)
        params = {"uniqueproperty": "Extcode"}
        code, answer = await self.koban("ncThird/PostOne", body, params=params)
        assert code == 200 and answer["success"] is True, answer
        return str(answer["Result"])


def small_stock(state: SandboxState) -> None:
    state.add_programme("HAR", "Les Jardins d'Harmonie", guid="prog-har")
    state.add_programme("QUA", "Quai des Arts", guid="prog-qua")
    for n in range(1, 8):
        state.add_lot(f"HAR-A10{n}", programme="HAR", amount=200_000.0 + n, guid=f"lot-a10{n}")
    state.add_lot("HAR-P01", programme="HAR", link="HAR-A101", guid="lot-p01")
    state.add_lot("QUA-A101", programme="QUA", guid="lot-qua-a101")
    for n in range(1, 6):
        state.add_third(
            guid=f"p{n}",
            name=f"Name{n}",
            first_name=f"First{n}",
            email=f"p{n}@example.com",
            extcode=f"EXT-P{n}",
        )
    state.add_third(guid="cgp1", type="CGP", name="Conseil", extcode="EXT-CGP1")


@contextlib.asynccontextmanager
async def running_sandbox(
    *, demo: bool = False, tick_interval: float | None = None, **state_kwargs: Any
) -> AsyncIterator[Harness]:
    async with running_receiver() as receiver:
        clock = ManualClock(T0)
        sender = WebhookSender(receiver.targets(), token=HOOK_TOKEN)
        state = SandboxState(
            api_key=API_KEY, user_key=USER_KEY, clock=clock, webhooks=sender, **state_kwargs
        )
        if demo:
            populate(state)
        else:
            small_stock(state)
        app = build_sandbox_app(state, tick_interval=tick_interval)
        client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(app, host="127.0.0.1")
        )
        await client.start_server()
        try:
            yield Harness(state, client, receiver, clock)
        finally:
            await client.close()
