"""Write routes of the API through the Koban sandbox: place, prolong, cancel, pre-reserve,
withdraw — with partner binding and the 202 pending answer when Koban's outcome is unknown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from service.config import ApiToken, Settings, TenantSettings
from service.entrypoints.api import build_api_app
from statecharts.ticks import ceil_tick, to_iso
from tests.support.api_harness import API_KEY, DAY, T0, USER_KEY, Api, running_api


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


async def test_place_two_options_in_koban_and_locally(api: Api) -> None:
    first = await api.place("L1", "p1", token="write")
    assert first.status == 201
    assert (first.body["rank"], first.body["thirdGuid"], first.body["partnerGuid"]) == (
        1,
        "p1",
        None,
    )
    second = await api.place("L1", "p2", rank=2, partnerGuid="cgp-2", token="write")
    assert second.status == 201 and second.body["rank"] == 2
    koban = api.koban.lots["L1"]
    assert sorted((o.rank, o.holder, o.partner) for o in koban.options) == [
        (1, "p1", None),
        (2, "p2", "cgp-2"),
    ]
    third = await api.place("L1", "p3")
    assert third.status == 409 and third.code == "LOT_FULL"
    assert third.body["source"] == "local" and third.body["kobanCode"] == "05"
    twice = await api.place("L2", "p1", rank=2)
    assert twice.status == 409 and twice.code == "RANK_NOT_AVAILABLE"
    again = await api.place("L1", "p1")
    assert again.status == 409 and again.code == "LOT_FULL"
    placed = [e for e in await api.events() if e["type"] == "koban.option.placed"]
    assert [e["data"]["actor"] for e in placed] == ["api", "api"]


async def test_partner_token_places_only_as_its_partner(api: Api) -> None:
    own = await api.place("L1", "p1", token="cgp1")
    assert own.status == 201 and own.body["partnerGuid"] == "cgp-1"
    explicit = await api.place("L2", "p1", token="cgp1", partnerGuid="cgp-1")
    assert explicit.status == 201
    other = await api.place("L3", "p2", token="cgp1", partnerGuid="cgp-2")
    assert other.status == 403 and other.code == "FORBIDDEN"
    assert not api.koban.lots["L3"].options
    assert api.koban.lots["L1"].options[0].partner == "cgp-1"


async def test_prolong_by_rank(api: Api) -> None:
    assert (await api.place("L1", "p1")).status == 201
    until = T0 + 4 * DAY
    answer = await api.post(
        "lots/L1/options/1/prolongation", {"until": to_iso(until), "thirdGuid": "p1"}
    )
    assert answer.status == 200
    body = answer.body
    assert (body["prolonged"], body["deadline"], body["deadlineSource"]) == (
        True,
        to_iso(until),
        "koban",
    )
    assert body["effectiveExpiry"] == to_iso(ceil_tick(until))
    assert api.koban.lots["L1"].options[0].deadline == until
    again = await api.post("lots/L1/options/1/prolongation", {"until": to_iso(until + DAY)})
    assert (again.status, again.code, again.body["kobanCode"]) == (409, "ALREADY_PROLONGED", "02")
    assert (await api.place("L2", "p2")).status == 201
    sooner = await api.post("lots/L2/options/1/prolongation", {"until": to_iso(T0 + 3600)})
    assert (sooner.status, sooner.code) == (422, "PROLONGATION_NOT_LATER")
    offset = await api.post(
        "lots/L2/options/1/prolongation", {"until": "2026-11-28T12:00:00+01:00"}
    )
    assert offset.status == 200 and offset.body["deadline"] == "2026-11-28T11:00:00Z"
    missing = await api.post("lots/L2/options/2/prolongation", {"until": to_iso(until)})
    assert (missing.status, missing.code) == (404, "OPTION_NOT_FOUND")


async def test_option_moved_sends_nothing_to_koban(api: Api) -> None:
    assert (await api.place("L1", "p1")).status == 201
    assert (await api.place("L1", "p2")).status == 201
    calls = dict(api.koban_client.calls)
    moved = await api.delete("lots/L1/options/1?thirdGuid=p2")
    assert (moved.status, moved.code) == (409, "OPTION_MOVED")
    prolong = await api.post(
        "lots/L1/options/2/prolongation", {"until": to_iso(T0 + 4 * DAY), "thirdGuid": "p1"}
    )
    assert (prolong.status, prolong.code) == (409, "OPTION_MOVED")
    assert dict(api.koban_client.calls) == calls
    assert len(api.koban.lots["L1"].options) == 2


async def test_cancel_promotes_rank_two(api: Api) -> None:
    first = (await api.place("L1", "p1")).body
    assert (await api.place("L1", "p2")).status == 201
    answer = await api.delete("lots/L1/options/1?thirdGuid=p1", token="write")
    assert answer.status == 200
    assert (answer.body["optionId"], answer.body["thirdGuid"]) == (first["optionId"], "p1")
    lot = (await api.get("lots/L1")).body
    assert [(o["rank"], o["thirdGuid"]) for o in lot["options"]] == [(1, "p2")]
    assert [(o.rank, o.holder) for o in api.koban.lots["L1"].options] == [(1, "p2")]
    gone = await api.delete("lots/L1/options/2")
    assert (gone.status, gone.code, gone.body["kobanCode"]) == (404, "OPTION_NOT_FOUND", "01")


async def test_partner_token_acts_only_on_its_partners_options(api: Api) -> None:
    assert (await api.place("L1", "p1", token="cgp1")).status == 201
    assert (await api.place("L1", "p2", token="cgp2")).status == 201
    assert (await api.place("L2", "p3")).status == 201  # no partner
    until = to_iso(T0 + 4 * DAY)
    for method, rest, body in (
        ("DELETE", "lots/L1/options/2", None),
        ("POST", "lots/L1/options/2/prolongation", {"until": until}),
        ("DELETE", "lots/L2/options/1", None),
    ):
        answer = await api.call(method, rest, json=body, token="cgp1")
        assert (answer.status, answer.code) == (403, "FORBIDDEN"), rest
    assert len(api.koban.lots["L1"].options) == 2 and api.koban.lots["L2"].options
    # Addressing its own prospect at a rank that is not theirs: moved, not forbidden.
    moved = await api.delete("lots/L1/options/2?thirdGuid=p1", token="cgp1")
    assert (moved.status, moved.code) == (409, "OPTION_MOVED")
    prolonged = await api.post("lots/L1/options/1/prolongation", {"until": until}, token="cgp1")
    assert prolonged.status == 200 and prolonged.body["thirdGuid"] == "p1"
    cancelled = await api.delete("lots/L1/options/2", token="cgp2")
    assert cancelled.status == 200 and cancelled.body["thirdGuid"] == "p2"


async def test_prereserve_and_withdraw(api: Api) -> None:
    option = (await api.place("L1", "p1")).body
    assert (await api.place("L1", "p2")).status == 201
    answer = await api.post(
        "lots/L1/prereservation",
        {"thirdGuid": "p1", "price": "250000.50", "deposit": 5000, "partnerGuid": "cgp-1"},
    )
    assert answer.status == 201
    lot = answer.body
    assert (lot["status"], lot["statePath"]) == ("PRERESV", ["prereserved"])
    assert lot["prereservation"]["thirdGuid"] == "p1"
    assert (lot["prereservation"]["price"], lot["prereservation"]["deposit"]) == (250000.5, 5000.0)
    assert [(o["rank"], o["thirdGuid"]) for o in lot["options"]] == [(1, "p2")]
    assert api.koban.lots["L1"].config == "prereserved"
    events = {e["type"]: e["data"] for e in await api.events()}
    assert events["koban.option.converted"]["optionId"] == option["optionId"]
    assert (
        events["koban.lot.prereserved"]["price"],
        events["koban.lot.prereserved"]["deposit"],
    ) == (
        250000.5,
        5000.0,
    )
    refused = await api.post(
        "lots/L1/prereservation", {"thirdGuid": "p3", "price": 1, "deposit": 0}
    )
    assert (refused.status, refused.code) == (409, "LOT_NOT_AVAILABLE")
    mismatch = await api.post("lots/L1/prereservation/withdrawal", {"thirdGuid": "p2"})
    assert (mismatch.status, mismatch.code) == (409, "PRERESERVATION_HOLDER_MISMATCH")
    partner = await api.post("lots/L1/prereservation/withdrawal", {"thirdGuid": "p1"}, token="cgp2")
    assert (partner.status, partner.code) == (403, "FORBIDDEN")
    withdrawn = await api.post(
        "lots/L1/prereservation/withdrawal", {"thirdGuid": "p1"}, token="cgp1"
    )
    assert withdrawn.status == 200
    assert (withdrawn.body["status"], withdrawn.body["prereservation"]) == ("OPTION", None)
    none = await api.post("lots/L1/prereservation/withdrawal", {"thirdGuid": "p1"})
    assert (none.status, none.code) == (409, "NOT_PRERESERVED")


async def test_partner_token_prereserves_as_its_partner(api: Api) -> None:
    other = await api.post(
        "lots/L1/prereservation",
        {"thirdGuid": "p1", "price": 1, "deposit": 0, "partnerGuid": "cgp-2"},
        token="cgp1",
    )
    assert (other.status, other.code) == (403, "FORBIDDEN")
    own = await api.post(
        "lots/L1/prereservation", {"thirdGuid": "p1", "price": 1, "deposit": 0}, token="cgp1"
    )
    assert own.status == 201 and own.body["prereservation"]["partnerGuid"] == "cgp-1"


async def test_unknown_outcome_answers_202_pending(api: Api) -> None:
    api.fault(timeout=True, hang_seconds=2, methods=["ncOption/Add"], count=1, apply=True)
    answer = await api.place("L1", "p1")
    assert answer.status == 202
    assert answer.body == {
        "status": "pending",
        "intentId": answer.body["intentId"],
        "extcode": "L1",
        "rank": 1,
        "thirdGuid": "p1",
    }
    lot = (await api.get("lots/L1")).body
    assert [(p["intentId"], p["rank"]) for p in lot["pendingPlacements"]] == [
        (answer.body["intentId"], 1)
    ]
    assert "place" in lot["allowedActions"]
    blocked = await api.place("L1", "p1")
    assert (blocked.status, blocked.code) == (409, "PROSPECT_ALREADY_HOLDS")


async def test_app_built_from_settings_talks_to_koban_with_the_tenants_keys(
    api: Api, redis: Redis
) -> None:
    """The default composition: tenants from the configuration, each with its Koban client
    from its own settings, in the app's HTTP session."""
    name = api.name  # same tenant, same keys in Redis: a second API process
    settings = Settings(
        tenants={
            name: TenantSettings(
                koban_base_url=api.extra["koban_url"],
                koban_api_key=SecretStr(API_KEY),
                koban_user_key=SecretStr(USER_KEY),
                api_tokens=[ApiToken(token=SecretStr("tok-second"), scopes={"write"})],
            )
        }
    )
    app = build_api_app(settings, redis, clock=api.clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        headers = {"Authorization": "Bearer tok-second"}
        placed = await client.post(
            f"/v1/tenants/{name}/lots/L5/options", json={"thirdGuid": "p4"}, headers=headers
        )
        assert placed.status == 201, await placed.text()
        assert (await placed.json())["placedAt"] == to_iso(T0)
    assert [o.holder for o in api.koban.lots["L5"].options] == ["p4"]
    seen = await api.get("lots/L5")
    assert [o["thirdGuid"] for o in seen.body["options"]] == ["p4"]
