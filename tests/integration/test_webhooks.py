"""Koban's webhooks over real HTTP (loopback) against the real Redis of the test session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from service.bootstrap import rules_from
from service.clock import FixedClock
from service.config import TenantSettings
from service.entrypoints.koban_webhooks import TOKEN_HEADER, add_webhook_routes
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from service.usecases.sweep import sweep_expiries
from statecharts.model import Lot
from tests.support.instants import ts

SECRET = "s3cret-webhook-token"
A = "A101"
X = "third-x"
Y = "third-y"


T0 = ts("2026-03-02T10:00:00Z")  # a tick
DAY = 86400


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    store: LotStore
    clock: FixedClock
    tenant: str
    # "generic": dates go as Koban's generic webhooks write them, /Date(ms)/.
    profile: str = "doc"

    def url(self, name: str) -> str:
        return f"/koban/{self.tenant}/{name}"

    async def post(
        self,
        name: str,
        fields: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        data = dict(fields)
        if self.profile == "generic":
            for key in ("ExpDate", "PrgDate"):
                value = data.get(key)
                seconds = isinstance(value, str) and value.isascii() and value.isdigit()
                if seconds and int(value or 0) <= 10**11:
                    data[key] = f"/Date({int(value) * 1000})/"
        resp = await self.client.post(
            self.url(name),
            data=data,
            headers={TOKEN_HEADER: SECRET} if headers is None else headers,
            params=params,
        )
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()

    async def hook(self, name: str, **fields: str) -> None:
        status, body = await self.post(name, fields)
        assert (status, body) == (200, {"success": True})

    async def check(self, extcode: str = A) -> dict[str, Any]:
        resp = await self.client.get(
            self.url("option-check"), params={"extcode": extcode}, headers={TOKEN_HEADER: SECRET}
        )
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body

    async def lot(self, extcode: str = A) -> Lot | None:
        return await self.store.load(extcode)

    async def types(self, extcode: str = A) -> list[str]:
        return [str(e["type"]).removeprefix("koban.") for e in await self.store.history(extcode)]

    async def stream(self) -> list[dict[str, Any]]:
        entries: Any = await self.store.redis.xrange(self.store.keys.events)
        return [orjson.loads(f[b"ce"]) for _, f in entries]

    async def needsync(self) -> set[str]:
        raw: set[Any] = await self.store.redis.smembers(self.store.keys.needs_sync)
        return {m.decode() if isinstance(m, bytes) else str(m) for m in raw}


MakeEnv = Callable[..., Awaitable[Env]]


@pytest.fixture(params=["doc", "generic"])
async def make_env(
    request: pytest.FixtureRequest, redis: Redis, tenant: str
) -> AsyncIterator[MakeEnv]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(**settings: Any) -> Env:
        values: dict[str, Any] = {"webhook_secret": SecretStr(SECRET)}
        values.update(settings)
        ts_ = TenantSettings(**values)
        rules = rules_from(ts_)
        store = LotStore(redis, tenant, rules)
        clock = FixedClock(T0 + 600)
        tenants = Tenants({tenant: Tenant(tenant, ts_, rules, store, clock)})
        app = web.Application()
        add_webhook_routes(app, tenants)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Env(client, store, clock, tenant, request.param)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()


def placed(
    third: str = X, rank: str = "1", exp: int = T0 + 2 * DAY, extcode: str = A
) -> dict[str, str]:
    """A full option-placed form, every field of the doc."""
    return {
        "Deal_Extcode": extcode,
        "Deal_Guid": "guid-" + extcode,
        "Third_Extcode": "ext-" + third,
        "Third_Guid": third,
        "Rank": rank,
        "ExpDate": str(exp),
        "Third_Name": "Dupont",
        "Third_FirstName": "Anne",
        "Third_EMail": "anne@example.org",
        "AssignedTo_Name": "Martin",
        "AssignedTo_FirstName": "Paul",
        "AssignedTo_EMail": "paul@example.org",
    }


def third_form(third: str = X, rank: str = "1", extcode: str = A) -> dict[str, str]:
    return {
        "Deal_Extcode": extcode,
        "Deal_Guid": "guid-" + extcode,
        "Third_Extcode": "ext-" + third,
        "Third_Guid": third,
        "Rank": rank,
    }


def expired(third: str = X, extcode: str = A) -> dict[str, str]:
    form = third_form(third, extcode=extcode)
    del form["Rank"]
    return form


# --- option-placed ------------------------------------------------------------------------


async def test_placed_for_an_unknown_lot_creates_it_and_marks_it_for_sync(env: Env) -> None:
    await env.hook("option-placed", **placed())
    lot = await env.lot()
    assert lot is not None and lot.guid == "guid-A101" and lot.status == "OPTION"
    (option,) = lot.options
    assert (option.holder, option.rank, option.deadline, option.source) == (
        X,
        1,
        T0 + 2 * DAY,
        "koban",
    )
    assert option.placed_at == T0 + 600
    assert await env.types() == ["lot.imported", "option.placed"]
    imported = (await env.store.history(A))[0]["data"]
    assert imported["actor"] == "koban" and imported["program"] is None
    assert await env.needsync() == {A}


async def test_a_placed_replay_ten_times_gives_one_event(env: Env) -> None:
    await env.store.import_lot(A, T0)
    for _ in range(10):
        await env.hook("option-placed", **placed())
    assert await env.types() == ["lot.imported", "option.placed"]
    assert len(await env.stream()) == 2
    assert await env.needsync() == set()  # imported by the service: no sync needed


async def test_a_late_placed_after_cancellation_does_not_bring_it_back(env: Env) -> None:
    await env.hook("option-placed", **placed())
    await env.hook("option-cancelled", **third_form())
    await env.hook("option-placed", **placed())
    lot = await env.lot()
    assert lot is not None and lot.options == [] and lot.status == "LIBRE"
    assert await env.types() == ["lot.imported", "option.placed", "option.cancelled"]


async def test_a_late_placed_for_an_api_option_cancelled_since_is_stale(env: Env) -> None:
    # Placed through the API (estimated deadline), cancelled before Koban's webhook came.
    await env.store.import_lot(A, T0)
    option = await env.store.place_local(A, X, None, T0 + 600)
    await env.store.cancel(A, 1, T0 + 900)
    await env.hook("option-placed", **placed(exp=T0 + 600 + 2 * DAY + 5))
    lot = await env.lot()
    assert lot is not None and lot.options == []
    assert option.source == "estimated"
    # A new option of the same third, placed after that one ended, is not stale.
    await env.hook("option-placed", **placed(exp=T0 + 900 + 2 * DAY))
    lot = await env.lot()
    assert lot is not None and [o.holder for o in lot.options] == [X]


async def test_placed_teaches_koban_deadline_for_an_option_placed_by_the_service(
    env: Env,
) -> None:
    await env.store.import_lot(A, T0)
    mine = await env.store.place_local(A, X, None, T0 + 600)
    koban = T0 + 2 * DAY + 3600  # on a tick: the effective expiry too
    for _ in range(3):
        await env.hook("option-placed", **placed(exp=koban))
    lot = await env.lot()
    assert lot is not None
    (option,) = lot.options
    assert option.id == mine.id
    assert (option.deadline, option.expiry, option.source) == (koban, koban, "koban")
    assert (await env.types())[-1] == "option.deadline_confirmed"
    assert (await env.types()).count("option.deadline_confirmed") == 1


async def test_placed_confirms_a_pending_intent_of_that_third(env: Env) -> None:
    await env.store.import_lot(A, T0)
    intent = await env.store.reserve_placement(A, X, None, T0 + 600)
    await env.hook("option-placed", **placed())
    lot = await env.lot()
    assert lot is not None and lot.intents == []
    (option,) = lot.options
    assert (option.holder, option.source, option.via_api) == (X, "koban", True)
    resolved = (await env.store.history(A))[-1]
    assert resolved["type"] == "koban.intent.resolved"
    assert resolved["data"]["intentId"] == intent.id


async def test_timestamps_in_milliseconds(env: Env) -> None:
    exp = T0 + 2 * DAY
    await env.hook("option-placed", **placed(exp=exp * 1000))
    lot = await env.lot()
    assert lot is not None and lot.options[0].deadline == exp


async def test_placed_identifies_an_opaque_placeholder(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.sync_status(A, "two_options", "OPTION", T0 + 600, rank1_end=T0 + DAY)
    await env.hook("option-placed", **placed(third=Y, rank="2"))
    lot = await env.lot()
    assert lot is not None
    assert [(o.rank, o.holder) for o in lot.options] == [(1, None), (2, Y)]
    assert (await env.store.history(A))[-1]["data"]["wasOpaque"] is True


async def test_placed_on_a_lot_that_cannot_take_it_records_drift_once(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, Y, None, 25000000, 500000, T0 + 600)
    for _ in range(3):
        await env.hook("option-placed", **placed())
    lot = await env.lot()
    assert lot is not None and lot.options == [] and lot.status == "PRERESV"
    history = await env.store.history(A)
    drifts = [e for e in history if e["type"] == "koban.sync.drift_detected"]
    assert len(drifts) == 1
    assert drifts[0]["data"]["reason"] == "option_not_placeable"
    assert drifts[0]["data"]["code"] == "LOT_PRERESERVED"
    assert await env.needsync() == {A}


# --- option-cancelled, option-prolonged ---------------------------------------------------


async def test_cancelled_applies_to_the_third_option_whatever_the_rank(env: Env) -> None:
    await env.hook("option-placed", **placed(third=X))
    await env.hook("option-placed", **placed(third=Y, rank="2"))
    await env.hook("option-cancelled", **third_form(X, rank="2"))  # rank: a hint only
    lot = await env.lot()
    assert lot is not None and [(o.rank, o.holder) for o in lot.options] == [(1, Y)]
    before = await env.types()
    await env.hook("option-cancelled", **third_form(X))  # replay: nothing active
    assert await env.types() == before


async def test_prolonged_sets_prgdate_as_the_deadline_once(env: Env) -> None:
    await env.hook("option-placed", **placed())
    until = T0 + 4 * DAY + 900
    form = {**third_form(), "ExpDate": str(T0 + 2 * DAY), "PrgDate": str(until * 1000)}
    for _ in range(5):
        await env.hook("option-prolonged", **form)
    lot = await env.lot()
    assert lot is not None
    (option,) = lot.options
    assert (option.deadline, option.expiry, option.prolonged) == (until, T0 + 4 * DAY + 1800, True)
    assert (await env.types()).count("option.prolonged") == 1
    # A prolongation for a third with nothing active: 200, no change.
    await env.hook("option-prolonged", **{**form, "Third_Guid": Y})
    assert (await env.types()).count("option.prolonged") == 1


async def test_a_prolongation_refused_locally_is_applied_with_drift(env: Env) -> None:
    await env.hook("option-placed", **placed())
    first = {**third_form(), "PrgDate": str(T0 + 3 * DAY)}
    await env.hook("option-prolonged", **first)
    await env.hook("option-prolonged", **{**first, "PrgDate": str(T0 + 4 * DAY)})
    lot = await env.lot()
    assert lot is not None and lot.options[0].deadline == T0 + 4 * DAY
    last = (await env.store.history(A))[-1]
    assert last["type"] == "koban.sync.drift_detected"
    assert last["data"]["code"] == "ALREADY_PROLONGED"


# --- option-expired -----------------------------------------------------------------------


async def test_expired_after_the_local_sweep_is_a_no_op(env: Env) -> None:
    env.clock.set(T0 - 3600)
    await env.hook("option-placed", **placed(exp=T0 - 60))  # effective expiry T0
    await sweep_expiries(env.store, T0)
    before = await env.types()
    assert before[-1] == "option.expired"
    env.clock.set(T0 + 120)
    await env.hook("option-expired", **expired())
    assert await env.types() == before


async def test_expired_before_the_local_expiry_expires_as_of_the_tick_with_drift(
    env: Env,
) -> None:
    env.clock.set(T0 - 3600)
    await env.hook("option-placed", **placed(third=X, exp=T0 + 2 * DAY))
    await env.hook("option-placed", **placed(third=Y, rank="2", exp=T0 + 2 * DAY + 60))
    env.clock.set(T0 + 300)
    for _ in range(3):
        await env.hook("option-expired", **expired(X))
    lot = await env.lot()
    assert lot is not None and [(o.rank, o.holder) for o in lot.options] == [(1, Y)]
    history = await env.store.history(A)
    tail = [(e["type"].removeprefix("koban."), e["time"]) for e in history[-3:]]
    assert tail == [
        ("option.expired", "2026-03-02T10:00:00Z"),
        ("option.promoted", "2026-03-02T10:00:00Z"),
        ("sync.drift_detected", "2026-03-02T10:05:00Z"),
    ]
    drift = history[-1]["data"]
    assert drift["reason"] == "expired_by_koban_earlier"
    assert drift["actor"] == "koban"
    assert drift["localExpiry"] == "2026-03-04T10:00:00Z"
    assert drift["kobanTick"] == "2026-03-02T10:00:00Z"
    assert drift["optionId"] == history[-3]["data"]["optionId"]
    assert len(history) == 6  # imported, 2 placed, expired, promoted, drift: once


async def test_expired_for_an_option_placed_after_the_latest_tick_is_stale(env: Env) -> None:
    env.clock.set(T0 + 60)
    await env.hook("option-placed", **placed())
    env.clock.set(T0 + 600)
    before = await env.types()
    await env.hook("option-expired", **expired())
    assert await env.types() == before
    lot = await env.lot()
    assert lot is not None and [o.holder for o in lot.options] == [X]


# --- reservation --------------------------------------------------------------------------


def validated(third: str = X) -> dict[str, str]:
    """A reservation-validated form with a handful of the doc's many fields."""
    return {
        "Lot_Code": A,
        "Vendeur_Groupe": "Groupe",
        "Res1Genre": "M",
        "_id": "preresa-guid",
        "DealId": "guid-A101",
        "ThirdId": third,
        "PrixVente": "250000.00",
        "Garantie": "5000.00",
        "OptionId": "",
        "PreresaDate": str(T0),
        "Res1Nom": "Dupont",
        "AssignedTo_EMail": "paul@example.org",
    }


async def test_reservation_validated_from_prereserved(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, X, None, 25000000, 500000, T0 + 600)
    for _ in range(3):
        await env.hook("reservation-validated", **validated())
    lot = await env.lot()
    assert lot is not None and lot.status == "RESV"
    assert await env.types() == ["lot.imported", "lot.prereserved", "lot.reserved"]


async def test_reservation_validated_without_prereservation_records_drift(env: Env) -> None:
    await env.hook("option-placed", **placed(third=Y))
    await env.hook("reservation-validated", **validated())
    lot = await env.lot()
    assert lot is not None and lot.status == "RESV" and lot.options == []
    history = await env.store.history(A)
    assert [e["type"].removeprefix("koban.") for e in history[-3:]] == [
        "option.superseded",
        "lot.reserved",
        "sync.drift_detected",
    ]
    assert history[-2]["data"]["thirdGuid"] == X


async def test_a_late_validated_after_withdrawal_does_not_reserve_again(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, X, None, 25000000, 500000, T0 + 600)
    await env.hook("reservation-validated", **validated())
    await env.hook("reservation-withdrawn", Deal_Extcode=A, Deal_Guid="guid-A101")
    await env.hook("reservation-validated", **validated())
    lot = await env.lot()
    assert lot is not None and lot.status == "LIBRE"
    reserved = [e for e in await env.store.history(A) if e["type"] == "koban.lot.reserved"]
    assert len(reserved) == 1 and reserved[0]["data"]["prereservationGuid"] == "preresa-guid"


async def test_reservation_withdrawn(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, X, None, 25000000, 500000, T0 + 600)
    form = {"Deal_Extcode": A, "Deal_Guid": "guid-A101"}
    for _ in range(3):
        await env.hook("reservation-withdrawn", **form)
    lot = await env.lot()
    assert lot is not None and lot.status == "LIBRE" and lot.prereservation is None
    assert (await env.types()).count("lot.withdrawn") == 1


# --- pre-check ----------------------------------------------------------------------------


async def test_option_check(env: Env) -> None:
    assert await env.check() == {"status": True, "rank": None}  # not imported yet
    await env.store.import_lot(A, T0)
    assert await env.check() == {"status": True, "rank": 1}
    await env.hook("option-placed", **placed())
    assert await env.check() == {"status": True, "rank": 2}
    intent = await env.store.reserve_placement(A, Y, None, T0 + 600)
    assert await env.check() == {"status": False, "rank": None}  # pending intent
    await env.store.confirm_placement(A, intent.id, T0 + 600)
    assert await env.check() == {"status": False, "rank": None}  # two options
    # Lazy expiry: at the tick both are due, the lot is free again as of the clock.
    env.clock.set(T0 + 2 * DAY + 1800)
    assert await env.check() == {"status": True, "rank": 1}


async def test_option_check_on_a_prereserved_lot(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, X, None, 25000000, 500000, T0 + 600)
    assert await env.check() == {"status": False, "rank": None}


async def test_option_check_needs_extcode_and_the_secret(env: Env) -> None:
    resp = await env.client.get(env.url("option-check"), headers={TOKEN_HEADER: SECRET})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "MALFORMED_REQUEST"
    resp = await env.client.get(env.url("option-check"), params={"extcode": A})
    assert resp.status == 401


# --- authentication -----------------------------------------------------------------------


async def assert_untouched(env: Env) -> None:
    assert await env.lot() is None
    assert await env.needsync() == set()
    assert await env.stream() == []


@pytest.mark.parametrize(
    "headers",
    [{}, {TOKEN_HEADER: "wrong"}, {TOKEN_HEADER: SECRET + "x"}, {TOKEN_HEADER: ""}],
)
async def test_wrong_or_missing_secret_is_401_and_changes_nothing(
    env: Env, headers: dict[str, str]
) -> None:
    status, body = await env.post("option-placed", placed(), headers=headers)
    assert status == 401
    assert body == {
        "success": False,
        "error": {"message": "missing or wrong webhook token", "code": "UNAUTHENTICATED"},
    }
    await assert_untouched(env)


async def test_secret_by_header_and_by_query_by_default(env: Env) -> None:
    status, _ = await env.post("option-placed", placed(), headers={}, params={"token": SECRET})
    assert status == 200
    status, _ = await env.post("option-placed", placed(), headers={TOKEN_HEADER: SECRET})
    assert status == 200
    # Both given: both must match.
    status, _ = await env.post(
        "option-placed", placed(), headers={TOKEN_HEADER: SECRET}, params={"token": "nope"}
    )
    assert status == 401


async def test_secret_by_header_only(make_env: MakeEnv) -> None:
    env = await make_env(webhook_auth={"header"})
    status, _ = await env.post("option-placed", placed(), headers={}, params={"token": SECRET})
    assert status == 401
    await assert_untouched(env)
    status, _ = await env.post("option-placed", placed(), headers={TOKEN_HEADER: SECRET})
    assert status == 200


async def test_secret_by_query_only(make_env: MakeEnv) -> None:
    env = await make_env(webhook_auth={"query"})
    status, _ = await env.post("option-placed", placed(), headers={TOKEN_HEADER: SECRET})
    assert status == 401
    await assert_untouched(env)
    status, _ = await env.post("option-placed", placed(), headers={}, params={"token": SECRET})
    assert status == 200


async def test_a_tenant_without_a_secret_refuses_every_webhook(make_env: MakeEnv) -> None:
    env = await make_env(webhook_secret=None)
    status, body = await env.post("option-placed", placed(), headers={TOKEN_HEADER: ""})
    assert status == 401 and body["success"] is False
    resp = await env.client.get(env.url("option-check"), params={"extcode": A, "token": ""})
    assert resp.status == 401
    await assert_untouched(env)


async def test_unknown_tenant_is_404(env: Env) -> None:
    resp = await env.client.post(
        "/koban/nobody/option-placed", data=placed(), headers={TOKEN_HEADER: SECRET}
    )
    assert resp.status == 404
    assert await resp.json() == {
        "success": False,
        "error": {"message": "unknown tenant", "code": "TENANT_UNKNOWN"},
    }


async def test_wrong_method_and_unknown_webhook_answer_json(env: Env) -> None:
    resp = await env.client.get(env.url("option-placed"), headers={TOKEN_HEADER: SECRET})
    assert resp.status == 405 and (await resp.json())["success"] is False
    resp = await env.client.post(env.url("option-nothing"), headers={TOKEN_HEADER: SECRET})
    assert resp.status == 404 and (await resp.json())["success"] is False


# --- malformed bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"Rank": "3"}, "Rank"),
        ({"Rank": "one"}, "Rank"),
        ({"ExpDate": "tomorrow"}, "ExpDate"),
        ({"ExpDate": "2026-13-45T10:00:00Z"}, "ExpDate"),
        ({"ExpDate": "/Date(abc)/"}, "ExpDate"),
        ({"ExpDate": "-5"}, "ExpDate"),
        ({"ExpDate": "9" * 30}, "ExpDate"),
        ({"ExpDate": ""}, "ExpDate"),
        ({"Third_Guid": ""}, "Third_Guid"),
        ({"Third_Guid": None}, "Third_Guid"),
        ({"Deal_Extcode": None}, "Deal_Extcode"),
        ({"Deal_Extcode": "A" * 300}, "Deal_Extcode"),
        ({"ExpDate": "\u0661\u0667\u0669\u0665\u0660\u0660\u0660\u0660\u0660\u0660"}, "ExpDate"),
        ({"Third_Guid": "p1/o2"}, "Third_Guid"),
        ({"Third_Guid": "p1|x"}, "Third_Guid"),
        ({"Deal_Extcode": "A1/B"}, "Deal_Extcode"),
    ],
)
async def test_garbage_fields_are_400_and_change_nothing(
    env: Env, change: dict[str, str | None], field: str
) -> None:
    form = placed()
    for key, value in change.items():
        if value is None:
            del form[key]
        else:
            form[key] = value
    status, body = await env.post("option-placed", form)
    assert status == 400
    assert body["success"] is False and body["error"]["code"] == "MALFORMED_REQUEST"
    assert field in body["error"]["message"]
    await assert_untouched(env)


async def test_wrong_content_type_oversized_and_unreadable_bodies_are_400(env: Env) -> None:
    url, auth = env.url("option-placed"), {TOKEN_HEADER: SECRET}
    resp = await env.client.post(url, json=placed(), headers=auth)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "MALFORMED_REQUEST"
    big = {**placed(), "Third_Name": "x" * (64 * 1024)}
    resp = await env.client.post(url, data=big, headers=auth)
    assert resp.status == 400 and "larger" in (await resp.json())["error"]["message"]
    form_type = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    resp = await env.client.post(url, data=b"Deal_Extcode=%FF%FE", headers=form_type)
    assert resp.status == 400
    twice = "&".join(f"{k}={v}" for k, v in placed().items()) + "&Third_Guid=other"
    resp = await env.client.post(url, data=twice.encode(), headers=form_type)
    assert resp.status == 400 and "twice" in (await resp.json())["error"]["message"]
    await assert_untouched(env)


async def test_empty_optional_fields_and_unknown_fields_are_accepted(env: Env) -> None:
    form = {**placed(), "Deal_Guid": "", "Third_Extcode": "", "Rank": "", "Whatever": "1"}
    await env.hook("option-placed", **form)
    lot = await env.lot()
    assert lot is not None and lot.guid is None and lot.options[0].rank == 1


# --- the other webhooks about unknown lots ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "form"),
    [
        ("option-cancelled", third_form()),
        ("option-prolonged", {**third_form(), "PrgDate": str(T0 + 3 * DAY)}),
        ("option-expired", expired()),
        ("reservation-withdrawn", {"Deal_Extcode": A, "Deal_Guid": "guid-A101"}),
    ],
)
async def test_any_webhook_about_an_unknown_lot_creates_it(
    env: Env, name: str, form: dict[str, str]
) -> None:
    await env.hook(name, **form)
    lot = await env.lot()
    assert lot is not None and lot.status == "LIBRE"
    assert await env.types() == ["lot.imported"]
    assert await env.needsync() == {A}


# --- access logs --------------------------------------------------------------------------
