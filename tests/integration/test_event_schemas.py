"""Every event of a mixed run validates against the JSON Schema served for its type.

The stack as `run` wires it: the API and the Koban sandbox on loopback ports, the
sandbox's webhooks coming back to the API, one sandbox tenant on a pinned test clock.
The workload: a stock sync, placements (rank 2 included), a prolongation, a cancellation
promoting rank 2,
a préréservation converting an option and its withdrawal, a reservation validated in
Koban, an option placed in Koban's UI, a placement whose outcome is unknown (its intent
resolved later), a status changed and an option placed in Koban behind the service's back
(a sync with drift), then the clock moved so that notices, expiries and promotions run
through the sweep. Each CloudEvent of the stream (and of the lots' histories) names its
schema in `dataschema`, under the configured `public_base_url`; the schema is fetched
from that path with a read token and the event's `data` validated with `jsonschema`.
"""

from __future__ import annotations

import asyncio
import json as _json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from pydantic import SecretStr
from redis.asyncio import Redis

from service.bootstrap import build_tenants, koban_from_settings, rules_from
from service.clock import FixedClock, TestClock
from service.config import ApiToken, TenantSettings, load_settings
from service.entrypoints.api import build_api_app
from service.event_schemas import DIRECT_ONLY, EVENT_SCHEMAS
from service.koban import KobanClient
from service.sandbox import WEBHOOK_KINDS, SandboxState, WebhookSender, build_sandbox_app
from service.sandbox.state import Fault
from service.sandbox.webhooks import OPTION_CHECK
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from service.usecases.intents import resolve_pending
from service.usecases.sync import sync_stock

PUBLIC = "https://options.example.test/base"
API_KEY, USER_KEY, SECRET = "k-api", "k-user", "schemas-webhook-secret"
ADMIN, READER, OTHER_READER = "tok-admin", "tok-read", "tok-other-read"
T0 = int(datetime.fromisoformat("2026-11-23T10:10:00+00:00").timestamp())
LOTS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8")
PROSPECTS = ("p1", "p2", "p3", "p4", "p5", "p6")


def _tokens(*specs: tuple[str, set[str]]) -> list[ApiToken]:
    return [ApiToken(token=SecretStr(tok), scopes=scopes) for tok, scopes in specs]  # type: ignore[arg-type]


@dataclass
class Stack:
    tenant: Tenant
    koban: SandboxState
    koban_client: KobanClient
    http: aiohttp.ClientSession
    api_url: str
    name: str

    async def call(
        self, method: str, rest: str, body: Any = None, token: str = ADMIN
    ) -> tuple[int, Any]:
        url = rest if rest.startswith("/") else f"/v1/tenants/{self.name}/{rest}"
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = _json.dumps(body), "application/json"
        async with self.http.request(
            method, self.api_url + url, data=data, headers=headers
        ) as response:
            return response.status, await response.json()

    async def delivered(self) -> None:
        await asyncio.wait_for(self.koban.webhooks.drain(), 60)
        assert self.koban.webhooks.stats.failed == 0

    async def events(self) -> list[dict[str, Any]]:
        store = self.tenant.store
        entries = cast(list[Any], await store.redis.xrange(store.keys.events))
        return [orjson.loads(fields[b"ce"]) for _, fields in entries]


@pytest.fixture
async def stack(redis: Redis, tenant: str) -> AsyncIterator[Stack]:
    clock = TestClock(FixedClock(T0))
    settings: dict[str, Any] = {
        "sandbox": True,
        "option_lifetime": "PT6H",
        "koban_api_key": SecretStr(API_KEY),
        "koban_user_key": SecretStr(USER_KEY),
        "webhook_secret": SecretStr(SECRET),
        "koban_rate_limit_per_s": 10_000.0,
        "api_tokens": _tokens((ADMIN, {"admin"}), (READER, {"read"})),
    }
    rules = rules_from(TenantSettings(**settings))
    # Koban's own lifetime differs from the service's estimate: its webhooks confirm the
    # real deadline (`option.deadline_confirmed`).
    koban_rules = rules_from(TenantSettings(**{**settings, "option_lifetime": "PT7H"}))
    sender = WebhookSender(token=SECRET, token_in=("header",), timeout=30)
    state = SandboxState(
        api_key=API_KEY, user_key=USER_KEY, rules=koban_rules, clock=clock.now, webhooks=sender
    )
    state.add_programme("SC", "Schémas")
    for code in LOTS:
        state.add_lot(code, programme="SC", amount=200_000.0)
    for guid in PROSPECTS:
        state.add_third(guid=guid, name=guid.upper(), first_name="F", email=f"{guid}@x.fr")
    sandbox = TestServer(build_sandbox_app(state, tick_interval=None), host="127.0.0.1")
    await sandbox.start_server()
    ts_ = TenantSettings(**{**settings, "koban_base_url": str(sandbox.make_url("/api/v1"))})
    t = Tenant(tenant, ts_, rules, LotStore(redis, tenant, rules, public_base_url=PUBLIC), clock)
    # A second tenant: its read token reads the (tenant-independent) schemas too.
    other_ts = TenantSettings(api_tokens=_tokens((OTHER_READER, {"read"})))
    other_rules = rules_from(other_ts)
    other = Tenant(
        tenant + "-o",
        other_ts,
        other_rules,
        LotStore(redis, tenant + "-o", other_rules, public_base_url=PUBLIC),
        clock,
    )

    def sandbox_follows(_tenant: Tenant, _now: int) -> None:
        state.catch_up()

    app = build_api_app(
        Tenants({tenant: t, other.name: other}), redis, on_clock_advanced=sandbox_follows
    )
    api = TestServer(app, host="127.0.0.1")
    await api.start_server()
    api_url = str(api.make_url("")).rstrip("/")
    hooks = f"{api_url}/koban/{tenant}/"
    targets = {kind: hooks + kind.replace("_", "-") for kind in WEBHOOK_KINDS}
    targets[OPTION_CHECK] = hooks + "option-check"
    sender.configure(targets=targets)
    http = aiohttp.ClientSession()
    try:
        koban = koban_from_settings(t, http)
        assert koban is not None
        report = await sync_stock(t, koban, clock.now(), full=True)
        assert report.imported == len(LOTS), report
        yield Stack(t, state, koban, http, api_url, tenant)
    finally:
        await http.close()
        await api.close()
        await sandbox.close()


async def run_workload(s: Stack) -> None:
    clock = cast(TestClock, s.tenant.clock)

    async def ok(status_body: tuple[int, Any], *expected: int) -> Any:
        status, body = status_body
        assert status in expected, (status, body)
        return body

    # Placements through the API (rank 2 too), a prolongation, a cancellation.
    await ok(await s.call("POST", "lots/S1/options", {"thirdGuid": "p1"}), 201)
    await ok(await s.call("POST", "lots/S1/options", {"thirdGuid": "p2"}), 201)
    lot = await ok(await s.call("GET", "lots/S1"), 200)
    deadline = datetime.fromisoformat(lot["options"][0]["deadline"].replace("Z", "+00:00"))
    until = (deadline + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    await ok(await s.call("POST", "lots/S1/options/1/prolongation", {"until": until}), 200)
    await ok(await s.call("POST", "lots/S2/options", {"thirdGuid": "p3"}), 201)
    await ok(await s.call("POST", "lots/S2/options", {"thirdGuid": "p5"}), 201)
    await ok(await s.call("DELETE", "lots/S2/options/1"), 200)  # rank 2 promoted
    # A préréservation converting the same prospect's option, then its withdrawal.
    await ok(await s.call("POST", "lots/S3/options", {"thirdGuid": "p4"}), 201)
    pre = {"thirdGuid": "p4", "price": 200000.0, "deposit": 5000.0}
    await ok(await s.call("POST", "lots/S3/prereservation", pre), 201)
    await ok(await s.call("POST", "lots/S3/prereservation/withdrawal", {"thirdGuid": "p4"}), 200)
    # Another's préréservation over an option, validated in Koban: the option superseded.
    await ok(await s.call("POST", "lots/S4/options", {"thirdGuid": "p1"}), 201)
    pre = {"thirdGuid": "p5", "price": 190000.0, "deposit": 4000.0}
    await ok(await s.call("POST", "lots/S4/prereservation", pre), 201)
    s.koban.validate_reservation("S4", "p5")
    # An option placed in Koban's UI: its webhook tells the service.
    s.koban.add_option("S5", "p6", via_api=False)
    await s.delivered()
    # A placement whose outcome is unknown (Koban carried it out, the answer was lost):
    # 202 pending; resolved once the grace has passed.
    s.koban.add_fault(Fault(reset=True, apply=True, methods=frozenset({"ncOption/Add"}), count=1))
    await ok(await s.call("POST", "lots/S6/options", {"thirdGuid": "p3"}), 202, 201)
    await s.delivered()
    clock.advance_to(clock.now() + 5 * 60)
    await resolve_pending(s.tenant, s.koban_client, clock.now())
    # Behind the service's back (no webhooks): a status changed, an option placed. A sync
    # mirrors both and records the drift.
    with s.koban.muted():
        s.koban.set_status("S7", "BLOQUE")
        s.koban.add_option("S8", "p2", via_api=False)
    await sync_stock(s.tenant, s.koban_client, clock.now(), full=True)
    # Time passes: notices, expiries and promotions through the sweep (POST …/clock); a
    # rank 2 placed meanwhile behind S5's Koban option is promoted by the sweep.
    for n in range(3):
        await ok(await s.call("POST", "clock", {"advanceBy": "PT4H"}), 200)
        await s.delivered()
        if n == 0:
            await ok(await s.call("POST", "lots/S5/options", {"thirdGuid": "p4"}), 201)
    promoted = [e for e in await s.events() if e["type"] == "koban.option.promoted"]
    assert {(e["subject"], e["data"]["actor"]) for e in promoted} == {
        ("S2", "api"),
        ("S5", "sweep"),
    }


async def test_every_event_of_a_mixed_run_validates_against_its_served_schema(
    stack: Stack,
) -> None:
    await run_workload(stack)
    events = await stack.events()
    histories = [
        e
        for code in LOTS
        for e in (await stack.call("GET", f"lots/{code}/history", token=READER))[1]["items"]
    ]
    schemas: dict[str, dict[str, Any]] = {}
    for event in events + histories:
        uri = event["dataschema"]
        assert uri == f"{PUBLIC}/v1/schemas/events/{event['type']}", event
        if event["type"] not in schemas:
            # Any tenant's read token reads the schemas.
            status, schema = await stack.call("GET", uri.removeprefix(PUBLIC), token=OTHER_READER)
            assert status == 200, (event["type"], schema)
            assert schema["$id"] == uri
            Draft202012Validator.check_schema(schema)
            schemas[event["type"]] = schema
        validator = Draft202012Validator(
            schemas[event["type"]], format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        errors = [
            f"{'/'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(event["data"])
        ]
        assert not errors, (event, errors)
    # Each lot's history gives back exactly the stream's CloudEvents (dataschema included).
    by_id = {e["id"]: e for e in events}
    assert len(histories) == len(events)
    for expanded in histories:
        assert expanded == by_id[expanded["id"]]
    seen = {e["type"] for e in events}
    streamed = set(EVENT_SCHEMAS) - DIRECT_ONLY
    assert seen == streamed, sorted(streamed ^ seen)


async def test_the_schemas_refuse_what_the_events_never_hold(stack: Stack) -> None:
    status, listing = await stack.call("GET", "/v1/schemas/events", token=READER)
    assert status == 200
    assert set(listing["types"]) == set(EVENT_SCHEMAS)
    _, placed = await stack.call("GET", "/v1/schemas/events/koban.option.placed", token=READER)
    [event] = [e for e in await stack.events() if e["type"] == "koban.lot.imported"][:1]
    check = Draft202012Validator(placed, format_checker=Draft202012Validator.FORMAT_CHECKER)
    good = {
        "optionId": "o1",
        "rank": 1,
        "thirdGuid": "p1",
        "partnerGuid": None,
        "placedAt": "2026-11-23T10:10:00Z",
        "deadline": "2026-11-25T10:10:00Z",
        "effectiveExpiry": "2026-11-25T10:30:00Z",
        "deadlineSource": "estimated",
        "prolonged": False,
        "actor": "api",
    }
    check.validate(good)
    for bad in (
        {k: v for k, v in good.items() if k != "optionId"},
        {**good, "rank": 3},
        {**good, "placedAt": "2026-11-23 10:10"},
        {**good, "actor": "someone"},
        {**good, "surprise": 1},
        event["data"],
    ):
        with pytest.raises(ValidationError):
            check.validate(bad)


async def test_schema_answers_for_unknown_types_and_callers(stack: Stack) -> None:
    status, body = await stack.call("GET", "/v1/schemas/events/koban.nothing", token=READER)
    assert (status, body["errorCode"]) == (404, "EVENT_TYPE_UNKNOWN")
    status, body = await stack.call("GET", "/v1/schemas/events/koban.lot.imported", token="nope")
    assert (status, body["errorCode"]) == (401, "UNAUTHENTICATED")
    status, body = await stack.call("GET", "/v1/schemas/events?x=1", token=READER)
    assert (status, body["errorCode"]) == (422, "VALIDATION_FAILED")


async def test_the_configured_public_base_url_reaches_every_tenant_store(
    tmp_path: Any, redis: Redis
) -> None:
    (tmp_path / "tenants.toml").write_text("[tenants.acme]\n")
    settings = load_settings(
        env={"KOBAN_OPTIONS_PUBLIC_BASE_URL": "https://opts.example.test"},
        tenants_file=tmp_path / "tenants.toml",
    )
    tenants = build_tenants(settings, redis)
    assert tenants["acme"].store.public_base_url == "https://opts.example.test"
