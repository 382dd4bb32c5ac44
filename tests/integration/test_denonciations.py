"""Prospects and dénonciations over HTTP against the Koban sandbox: the three steps, the
lookup of a prospect Koban already knows (found, failed, off, impossible), the refusals,
and a retry that finishes the job after Koban's answers were lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from service.config import ApiToken
from service.entrypoints.api.auth import Caller
from service.entrypoints.api.errors import ApiError
from service.entrypoints.api.routes_denonciations import _by
from tests.support.api_harness import Api, captured_logs, running_api
from tests.support.running import running_api_with

ALICE = {"lastName": "Martin", "firstName": "Alice", "email": "alice@example.fr"}


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


def calls(api: Api, *methods: str) -> list[int]:
    return [api.koban.calls[m] for m in methods]


def thirds_with(api: Api, email: str) -> list[str]:
    return [t.guid for t in api.koban.prospects.values() if t.email == email]


async def sandbox_control(api: Api, rest: str, body: dict[str, Any]) -> Any:
    url = api.extra["koban_url"].removesuffix("/api/v1") + "/_sandbox/" + rest
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def denounce(api: Api, prospect: dict[str, Any], key: str | None = None, **kw: Any) -> Any:
    headers = {"Idempotency-Key": key} if key else None
    body = {"programme": "HAR", "prospect": prospect, **kw.pop("extra", {})}
    return await api.post("denonciations", body, headers=headers, **kw)


async def non_lot_events(api: Api) -> list[dict[str, Any]]:
    return [e for e in await api.events() if "sequence" not in e]


STEPS = ("ncDenonc/CheckDenonc", "ncThird/PostOne", "ncDenonc/Create")


async def test_a_new_prospect_is_created_denounced_then_optioned(api: Api) -> None:
    made = await denounce(api, ALICE, key="k-new", token="write")
    assert made.status == 201, made.body
    guid = made.body["thirdGuid"]
    assert made.body == {
        "thirdGuid": guid,
        "programme": "HAR",
        "createdProspect": True,
        "by": None,
    }
    assert calls(api, *STEPS) == [1, 1, 1]
    assert thirds_with(api, "alice@example.fr") == [guid]
    assert api.koban.denonciations.made == {("HAR", guid): None}
    placed = await api.place("L1", guid, token="write")
    assert placed.status == 201, placed.body
    events = await non_lot_events(api)
    assert [(e["type"], e["subject"], e["id"]) for e in events] == [
        ("koban.prospect.created", f"prospect:{guid}", f"prospect:{guid}:1"),
        (
            "koban.denonciation.created",
            f"denonciation:HAR:{guid}",
            f"denonciation:HAR:{guid}:1",
        ),
    ]
    for event in events:
        assert event["partitionkey"] == event["subject"]
        assert "lotversion" not in event
    assert events[1]["data"]["createdProspect"] is True


async def test_an_existing_prospect_is_only_denounced(api: Api) -> None:
    made = await denounce(api, {"lastName": "P1", "email": "p1@x.fr"}, extra={"cgpGuid": "cgp-1"})
    assert made.status == 201, made.body
    assert made.body["createdProspect"] is False
    assert made.body["thirdGuid"] == "p1"  # CheckDenonc names no guid: the e-mail lookup does
    assert made.body["by"] == "cgp-1"
    assert calls(api, *STEPS) == [1, 0, 1]  # no PostOne; besides Create, only a read
    assert api.koban.denonciations.made == {("HAR", "p1"): "cgp-1"}


LOOKUP = "ncThird/GetOneByKey"


async def test_an_existing_prospect_is_named_by_its_e_mail_once_per_key(api: Api) -> None:
    api.fault(status=502, apply=True, methods=["ncDenonc/Create"], count=1)
    p2 = {"lastName": "P2", "email": "P2@X.fr"}
    lost = await denounce(api, p2, key="k-known")
    assert (lost.status, lost.code) == (502, "KOBAN_OUTCOME_UNKNOWN")
    made = await denounce(api, p2, key="k-known")
    assert made.status == 201, made.body
    assert made.body == {
        "thirdGuid": "p2",
        "programme": "HAR",
        "createdProspect": False,
        "by": None,
    }
    # Found on the first attempt and kept in the key's progress: not asked again.
    assert calls(api, *STEPS, LOOKUP) == [2, 0, 1, 1]
    (event,) = await non_lot_events(api)
    assert event["subject"] == "denonciation:HAR:p2"
    assert (event["data"]["thirdGuid"], event["data"]["createdProspect"]) == ("p2", False)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"status": 503}, "unavailable"),
        ({"reset": True}, "unavailable"),
        ({"timeout": True, "hang_seconds": 5}, "unavailable"),
        ({"errorcode": "01"}, "not_found"),
    ],
)
async def test_a_failed_lookup_leaves_third_guid_null_and_denounces(
    api: Api, fault: dict[str, Any], reason: str
) -> None:
    api.fault(methods=[LOOKUP], **fault)
    with captured_logs() as lines:
        made = await denounce(api, {"lastName": "P3", "email": "p3@x.fr"}, key="k-fail")
    assert made.status == 201, made.body
    assert (made.body["thirdGuid"], made.body["createdProspect"]) == (None, False)
    assert calls(api, *STEPS) == [1, 0, 1]
    assert api.koban.calls[LOOKUP] >= 1  # aiohttp resends a GET once on a reset connection
    assert api.koban.denonciations.made == {("HAR", "p3"): None}
    (failed,) = [line for line in lines if line["event"] == "prospect_lookup_failed"]
    assert (failed["reason"], failed["programme"], failed["tenant"]) == (reason, "HAR", api.name)
    assert [line for line in lines if "p3@x.fr" in repr(line) or "P3" in repr(line)] == []


async def test_without_an_e_mail_an_existing_prospect_is_not_looked_up(api: Api) -> None:
    made = await denounce(api, {"lastName": "P4", "firstName": "F"})  # found by name
    assert made.status == 201, made.body
    assert (made.body["thirdGuid"], made.body["createdProspect"]) == (None, False)
    assert calls(api, *STEPS, LOOKUP) == [1, 0, 1, 0]


async def test_prospect_lookup_off_asks_nothing(redis: Redis, tenant: str) -> None:
    async with running_api_with(redis, tenant, prospect_lookup="off") as api:
        made = await denounce(api, {"lastName": "P5", "email": "p5@x.fr"})
        assert made.status == 201, made.body
        assert made.body["thirdGuid"] is None
        assert calls(api, *STEPS, LOOKUP) == [1, 0, 1, 0]


async def test_check_reports_what_koban_says(api: Api) -> None:
    body = {"programme": "HAR", "lastName": "P2", "email": "p2@x.fr"}
    answer = await api.post("denonciations/check", body, token="write")
    assert answer.status == 200
    assert answer.body == {"possible": True, "reason": None, "prospectExists": True}
    await sandbox_control(api, "programmes/HAR/denonciation", {"activated": False})
    answer = await api.post("denonciations/check", body, token="write")
    assert answer.body == {"possible": False, "reason": "MODULE_DISABLED", "prospectExists": True}


@pytest.mark.parametrize("reason", ["MODULE_DISABLED", "ALREADY_DENOUNCED"])
async def test_refusals_are_409_with_the_reason_and_write_nothing(api: Api, reason: str) -> None:
    if reason == "MODULE_DISABLED":
        await sandbox_control(api, "programmes/HAR/denonciation", {"activated": False})
    else:
        await sandbox_control(api, "denonciations", {"thirdGuid": "p3", "programme": "HAR"})
    refused = await denounce(api, {"lastName": "P3", "email": "p3@x.fr"}, key="k-ref")
    assert refused.status == 409
    assert refused.code == "DENONCIATION_IMPOSSIBLE"
    assert refused.body["errors"] == [{"field": "reason", "message": reason}]
    assert reason in refused.body["message"]
    assert calls(api, *STEPS) == [1, 0, 0]
    assert await non_lot_events(api) == []


async def test_a_retry_after_lost_answers_finishes_and_creates_nothing_twice(api: Api) -> None:
    api.fault(status=502, apply=True, methods=["ncThird/PostOne"], count=1)
    api.fault(status=502, apply=True, methods=["ncDenonc/Create"], count=1)
    first = await denounce(api, ALICE, key="k-retry")
    assert (first.status, first.code) == (502, "KOBAN_OUTCOME_UNKNOWN")
    second = await denounce(api, ALICE, key="k-retry")
    assert (second.status, second.code) == (502, "KOBAN_OUTCOME_UNKNOWN")
    third = await denounce(api, ALICE, key="k-retry")
    assert third.status == 201, third.body
    guid = third.body["thirdGuid"]
    assert third.body["createdProspect"] is True
    assert thirds_with(api, "alice@example.fr") == [guid]
    assert api.koban.denonciations.made == {("HAR", guid): None}
    assert [e["type"] for e in await non_lot_events(api)] == [
        "koban.prospect.created",
        "koban.denonciation.created",
    ]
    again = await denounce(api, ALICE, key="k-retry")
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.body == third.body


async def test_a_partner_denounces_only_by_its_own_cgp(api: Api) -> None:
    refused = await denounce(api, ALICE, token="cgp1", extra={"cgpGuid": "cgp-2"})
    assert (refused.status, refused.code) == (403, "FORBIDDEN")
    assert calls(api, *STEPS) == [0, 0, 0]
    read_only = await denounce(api, ALICE, token="read")
    assert (read_only.status, read_only.code) == (403, "FORBIDDEN")


def test_a_partner_token_with_a_cgp_denounces_by_it() -> None:
    tenant: Any = object()
    partner = Caller(tenant, "t", frozenset({"write"}), "part-1", "cgp-9")
    assert _by(partner, None) == "cgp-9"
    assert _by(partner, "cgp-9") == "cgp-9"
    with pytest.raises(ApiError) as refused:
        _by(partner, "cgp-1")
    assert refused.value.status == 403
    staff = Caller(tenant, "t", frozenset({"write"}), None)
    assert _by(staff, "cgp-1") == "cgp-1"


async def test_prospects_and_cgps_are_made_by_extcode(api: Api) -> None:
    made = await api.post("prospects", {**ALICE, "extcode": "crm-42"}, token="write")
    assert made.status == 201, made.body
    again = await api.post("prospects", {**ALICE, "extcode": "crm-42", "phone": "0601020304"})
    assert again.body == made.body  # PostOne upserts by Extcode: the same third
    keyed = await api.post("prospects", ALICE, headers={"Idempotency-Key": "pk"})
    assert keyed.body["extcode"].startswith("kop-")
    cgp = await api.post("cgps", {"lastName": "Cabinet Durand"}, token="admin")
    assert cgp.status == 201
    assert api.koban.prospects[cgp.body["cgpGuid"]].type == "CGP"
    refused = await api.post("cgps", {"lastName": "Cabinet"}, token="write")
    assert refused.status == 403
    types = [e["type"] for e in await non_lot_events(api)]
    assert types == ["koban.prospect.created"] * 4


async def test_cgps_carry_the_tenant_s_cgp_status_code(redis: Redis, tenant: str) -> None:
    async with running_api_with(redis, tenant, cgp_status_code="PARTENAIRE") as api:
        api.koban.cgp_status_code = "PARTENAIRE"  # the Koban this tenant talks to
        cgp = await api.post("cgps", {"lastName": "Cabinet Martin"}, token="admin")
        assert cgp.status == 201, cgp.body
        third = api.koban.prospects[cgp.body["cgpGuid"]]
        assert (third.type, third.as_json()["Status"]) == ("CGP", {"Code": "PARTENAIRE"})
        prospect = await api.post("prospects", {"lastName": "Prospect"}, token="write")
        assert api.koban.prospects[prospect.body["thirdGuid"]].as_json()["Status"] == {
            "Code": "PROSPECT"
        }


async def test_a_partner_token_s_denonciation_is_by_its_configured_cgp(
    redis: Redis, tenant: str
) -> None:
    tokens = [
        ApiToken(
            token=SecretStr("tok-cgp-conf"),
            scopes={"write"},
            partner_guid="part-9",
            cgp_guid="cgp-1",
        ),
        ApiToken(token=SecretStr("tok-admin"), scopes={"admin"}),
    ]
    async with running_api_with(redis, tenant, api_tokens=tokens) as api:
        made = await denounce(api, ALICE, token="tok-cgp-conf")
        assert made.status == 201, made.body
        assert made.body["by"] == "cgp-1"
        assert api.koban.denonciations.made == {("HAR", made.body["thirdGuid"]): "cgp-1"}
        other = await denounce(
            api,
            {**ALICE, "email": "b@example.fr"},
            token="tok-cgp-conf",
            extra={"cgpGuid": "cgp-2"},
        )
        assert (other.status, other.code) == (403, "FORBIDDEN")
        events = await non_lot_events(api)
        assert [e["data"]["partnerGuid"] for e in events] == ["part-9", "part-9"]
