"""Names, e-mails and phones never reach a log line or an event: the new flows (prospect,
dénonciation with lost answers, of a known prospect looked up by e-mail, validated
dossier, lead webhook and its read) run with every structlog line captured, and none of
the contact's values is in any of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
from redis.asyncio import Redis

from tests.support.api_harness import Api, captured_logs
from tests.support.running import WEBHOOK_SECRET, running_api_with

NAME, FIRST = "Zéphirine", "Oudinot"
EMAIL, PHONE, MOBILE = "zephirine.oudinot@example.fr", "0147200001", "0611223344"
SECRETS = (NAME, FIRST, EMAIL, PHONE, MOBILE, "zephirine", "0147200001", "33 44")


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api_with(redis, tenant) as running:
        yield running


async def _run_flows(api: Api) -> None:
    prospect = {"lastName": NAME, "firstName": FIRST, "email": EMAIL, "phone": PHONE}
    assert (await api.post("prospects", {**prospect, "mobile": MOBILE})).status == 201
    api.fault(status=502, apply=True, methods=["ncThird/PostOne"], count=1)
    body = {"programme": "HAR", "prospect": {**prospect, "email": "z2@example.fr"}}
    key = {"Idempotency-Key": "pd-1"}
    assert (await api.post("denonciations", body, headers=key)).status == 502
    assert (await api.post("denonciations", body, headers=key)).status == 201
    refused = await api.post("denonciations", body, headers={"Idempotency-Key": "pd-2"})
    assert refused.status == 409
    bad = {**body, "prospect": {**prospect, "email": f"{NAME} at nowhere"}}
    assert (await api.post("denonciations", bad)).status == 422
    # A prospect Koban knows: its lookup by e-mail fails (logged), then succeeds.
    api.fault(status=503, methods=["ncThird/GetOneByKey"], count=1)
    known = {"programme": "BEL", "prospect": prospect}
    assert (await api.post("denonciations", known)).body["thirdGuid"] is None
    found = await api.post("denonciations", {**known, "programme": "HAR"})
    assert found.body["thirdGuid"] is not None
    check = {"programme": "HAR", "lastName": NAME, "email": EMAIL, "phone": PHONE}
    assert (await api.post("denonciations/check", check)).status == 200
    dossier = {
        "thirdGuid": "p1",
        "price": 100000,
        "deposit": 1000,
        "res1Nom": NAME,
        "res1Prenom": FIRST,
        "res1Phone": PHONE,
        "res1Mail": EMAIL,
    }
    assert (await api.post("lots/L1/prereservation/validated", dossier)).status == 201
    form = {
        "Lead_Guid": "ld-pd",
        "Name": NAME,
        "FirstName": FIRST,
        "EMail": EMAIL,
        "Phone": PHONE,
        "Mobile": MOBILE,
        "Tags[0].TagCategoryCode": "PROGRAMME",
        "Tags[0].Label": "HAR",
        "Comments": f"call {PHONE}",
    }
    headers = {
        "X-Koban-Webhook-Token": WEBHOOK_SECRET,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    for _ in range(2):
        async with api.client.post(
            f"/koban/{api.name}/lead", data=urlencode(form), headers=headers
        ) as response:
            assert response.status == 200
    bad_form = urlencode({**form, "Lead_Guid": f"{NAME}/x"})
    async with api.client.post(
        f"/koban/{api.name}/lead", data=bad_form, headers=headers
    ) as response:
        assert response.status == 400
    lead = await api.get("leads/ld-pd", token="read")
    assert lead.body["email"] == EMAIL  # the contact is there, behind the API


async def test_no_contact_detail_in_any_log_line_or_event(api: Api) -> None:
    with captured_logs() as lines:
        await _run_flows(api)
    assert len(lines) > 10
    assert "prospect_lookup_failed" in {line["event"] for line in lines}
    text = repr(lines)
    leaked = [s for s in SECRETS if s in text]
    assert leaked == [], [line for line in lines if any(s in repr(line) for s in leaked)][:3]
    events: list[dict[str, Any]] = await api.events()
    kinds = {e["type"] for e in events}
    assert {"koban.prospect.created", "koban.denonciation.created"} <= kinds
    assert {"koban.lead.received", "koban.lot.prereserved"} <= kinds
    assert [s for s in SECRETS if s in repr(events)] == []
