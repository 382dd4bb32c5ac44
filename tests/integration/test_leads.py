"""Koban's lead webhook: both encodings of Tags/MoreFields, the dedup window, the event,
and the contact details behind ``GET …/leads/{id}``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from redis.asyncio import Redis

from service.koban.lead_form import LeadFormError, parse_lead_form
from tests.support.api_harness import Api
from tests.support.running import WEBHOOK_SECRET, running_api_with

CONTACT = {
    "name": "Lefèvre",
    "firstName": "Jeanne",
    "email": "jeanne.lefevre@example.fr",
    "phone": "0102030405",
    "mobile": "0607080910",
    "comments": "Rappeler après 18h",
    "optin": "true",
}
TAGS = [
    {"TagCategoryCode": "PROGRAMME", "Label": "HAR"},
    {"TagCategoryCode": "NBPIECES", "Label": "T3"},
]
MORE = [{"FieldId": "budget", "Value": "250000"}]


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api_with(redis, tenant) as running:
        yield running


async def send_lead(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    url = api.extra["koban_url"].removesuffix("/api/v1") + "/_sandbox/leads"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
    assert answer["delivery"]["outcome"] == "delivered", answer["delivery"]
    return answer


async def lead_events(api: Api) -> list[dict[str, Any]]:
    return [e for e in await api.events() if e["type"] == "koban.lead.received"]


@pytest.mark.parametrize("encoding", ["json", "indexed"])
async def test_a_lead_is_one_event_and_its_contact_is_kept(api: Api, encoding: str) -> None:
    body = {**CONTACT, "tags": TAGS, "moreFields": MORE, "encoding": encoding, "leadGuid": "ld-1"}
    await send_lead(api, body)
    events = await lead_events(api)
    assert [(e["subject"], e["id"], e["partitionkey"]) for e in events] == [
        ("lead:ld-1", "lead:ld-1:1", "lead:ld-1")
    ]
    data = events[0]["data"]
    assert data["programmes"] == ["HAR"]
    assert data["tags"] == [
        {"tagCategoryCode": "PROGRAMME", "label": "HAR"},
        {"tagCategoryCode": "NBPIECES", "label": "T3"},
    ]
    assert data["moreFieldIds"] == ["budget"]
    for value in (CONTACT["name"], CONTACT["email"], CONTACT["phone"], "250000"):
        assert value not in str(events[0])
    got = await api.get("leads/ld-1", token="read")
    assert got.status == 200, got.body
    assert (got.body["name"], got.body["email"], got.body["mobile"]) == (
        "Lefèvre",
        "jeanne.lefevre@example.fr",
        "0607080910",
    )
    assert got.body["moreFields"] == [{"fieldId": "budget", "value": "250000"}]
    assert got.body["receivedAt"] == "2026-11-23T10:10:00Z"


async def test_the_same_form_three_times_is_one_event(api: Api) -> None:
    form = {
        "Contact_Type": "Third",
        "Lead_Guid": "",
        "Third_Guid": "p1",
        "Name": "P1",
        "EMail": "p1@x.fr",
        "Tags[0].TagCategoryCode": "PROGRAMME",
        "Tags[0].Label": "HAR",
    }
    for _ in range(3):
        async with api.client.post(
            f"/koban/{api.name}/lead",
            data=urlencode(form),
            headers={
                "X-Koban-Webhook-Token": WEBHOOK_SECRET,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        ) as response:
            assert response.status == 200
            assert await response.json() == {"success": True}
    assert [e["id"] for e in await lead_events(api)] == ["lead:p1:1"]
    # Another form for the same person is news.
    await send_lead(api, {"thirdGuid": "p1", "name": "P1", "comments": "again"})
    assert [e["id"] for e in await lead_events(api)] == ["lead:p1:1", "lead:p1:2"]


async def test_leads_are_not_for_partners_nor_unknown(api: Api) -> None:
    await send_lead(api, {**CONTACT, "leadGuid": "ld-2"})
    refused = await api.get("leads/ld-2", token="cgp1")
    assert (refused.status, refused.code) == (403, "FORBIDDEN")
    missing = await api.get("leads/nope", token="read")
    assert (missing.status, missing.code) == (404, "LEAD_UNKNOWN")


async def test_a_lead_webhook_without_a_token_or_guid_is_refused(api: Api) -> None:
    path = f"/koban/{api.name}/lead"
    form = "Name=X&EMail=x%40y.fr"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with api.client.post(path, data=form, headers=headers) as response:
        assert response.status == 401
    headers["X-Koban-Webhook-Token"] = WEBHOOK_SECRET
    async with api.client.post(path, data=form, headers=headers) as response:
        assert response.status == 400
        assert "Lead_Guid" in (await response.json())["error"]["message"]
    assert await lead_events(api) == []


async def test_a_wrong_method_on_the_lead_webhook_is_405(api: Api) -> None:
    path = f"/koban/{api.name}/lead"
    async with api.client.get(path, headers={"X-Koban-Webhook-Token": WEBHOOK_SECRET}) as answer:
        assert (answer.status, answer.headers["Allow"]) == (405, "POST")
        assert (await answer.json())["success"] is False
    assert await lead_events(api) == []


def test_both_encodings_read_the_same() -> None:
    as_json = parse_lead_form(
        [
            ("Lead_Guid", "g"),
            ("Tags", '[{"TagCategoryCode": "PROGRAMME", "Label": "HAR"}]'),
            ("MoreFields", '[{"FieldId": "f1", "Value": "v"}]'),
        ]
    )
    dotted = parse_lead_form(
        [
            ("Lead_Guid", "g"),
            ("Tags[0].TagCategoryCode", "PROGRAMME"),
            ("Tags[0].Label", "HAR"),
            ("MoreFields[0].FieldId", "f1"),
            ("MoreFields[0].Value", "v"),
        ]
    )
    bracketed = parse_lead_form(
        [
            ("Lead_Guid", "g"),
            ("Tags[0][TagCategoryCode]", "PROGRAMME"),
            ("Tags[0][Label]", "HAR"),
            ("MoreFields[0][FieldId]", "f1"),
            ("MoreFields[0][Value]", "v"),
        ]
    )
    assert as_json == dotted == bracketed
    assert as_json.tags == (("PROGRAMME", "HAR"),)
    with pytest.raises(LeadFormError):
        parse_lead_form([("Lead_Guid", "g"), ("Tags", "{not json")])
    with pytest.raises(LeadFormError):
        parse_lead_form([("Lead_Guid", "g"), ("Name", "a"), ("Name", "b")])
