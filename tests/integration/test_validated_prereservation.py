"""The validated préréservation over HTTP against the sandbox: Koban's AddValid with the
doc's fields, the lot PRERESV and ``validated``, its event, and who may not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service.koban.add_valid import FIELDS, add_valid_body
from tests.support.api_harness import T0, Api, running_api

DOSSIER = {
    "thirdGuid": "p1",
    "price": "245000.50",
    "deposit": 5000,
    "assignedToId": "sales-7",
    "preresaDate": "2026-11-23T09:00:00Z",
    "res1Genre": "MME",
    "res1Nom": "Martin",
    "res1Prenom": "Alice",
    "res1DateNaissance": "1980-02-29",
    "annexe1Cents": 1200000,
    "apportCents": 3000000,
    "res2": False,
    "ptz": True,
    "tva": "20",
}


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


async def test_a_validated_dossier_prereserves_the_lot(api: Api) -> None:
    placed = await api.place("L2", "p1", token="write")
    assert placed.status == 201
    made = await api.post("lots/L2/prereservation/validated", DOSSIER, token="write")
    assert made.status == 201, made.body
    assert made.body["status"] == "PRERESV"
    pre = made.body["prereservation"]
    assert (pre["thirdGuid"], pre["price"], pre["deposit"], pre["validated"]) == (
        "p1",
        245000.5,
        5000.0,
        True,
    )
    sent = api.koban.dossiers["L2"]
    assert sent["Deal"] == {"Extcode": "L2"}
    assert (sent["ThirdId"], sent["PrixVente"], sent["Garantie"]) == ("p1", 245000.5, 5000.0)
    assert (sent["Annexe1_cent"], sent["Apport_cent"], sent["Res1DateNaissance"]) == (
        1200000,
        3000000,
        "1980-02-29",
    )
    assert (sent["Res2"], sent["PTZ"], sent["AssignedToId"]) == ("N", "O", "sales-7")
    assert sent["PreresaDate"] == T0 - 4200
    assert api.koban.lots["L2"].config == "prereserved"
    prereserved = [e for e in await api.events() if e["type"] == "koban.lot.prereserved"]
    assert [e["data"]["validated"] for e in prereserved] == [True]
    assert prereserved[0]["data"]["convertedOptionId"] == placed.body["optionId"]
    got = await api.get("lots/L2", token="read")
    assert got.body["prereservation"]["validated"] is True


async def test_partners_and_bad_dossiers_are_refused_without_a_write(api: Api) -> None:
    partner = await api.post("lots/L3/prereservation/validated", DOSSIER, token="cgp1")
    assert (partner.status, partner.code) == (403, "FORBIDDEN")
    bad = await api.post(
        "lots/L3/prereservation/validated", {**DOSSIER, "annexe1Cents": 1.5}, token="write"
    )
    assert (bad.status, bad.code) == (422, "VALIDATION_FAILED")
    assert api.koban.calls["ncPreresv/AddValid"] == 0
    assert not [e for e in await api.events() if e["type"] == "koban.lot.prereserved"]


async def test_an_unknown_prospect_is_koban_s_02(api: Api) -> None:
    refused = await api.post(
        "lots/L4/prereservation/validated", {**DOSSIER, "thirdGuid": "nobody"}, token="write"
    )
    assert refused.status == 404, refused.body
    assert refused.code == "PROSPECT_UNKNOWN"


async def test_a_lost_answer_is_502_and_queues_the_lot(api: Api) -> None:
    api.fault(status=502, apply=True, methods=["ncPreresv/AddValid"], count=1)
    lost = await api.post("lots/L5/prereservation/validated", DOSSIER, token="write")
    assert (lost.status, lost.code) == (502, "KOBAN_OUTCOME_UNKNOWN")
    queued = await api.store.redis.smembers(api.store.keys.needs_sync)
    assert b"L5" in queued


def test_every_field_of_the_doc_table_is_written() -> None:
    values = {attribute: 1 for attribute, _, _ in FIELDS}
    body = add_valid_body("L1", values)
    assert set(body) == {"Deal"} | {wire for _, wire, _ in FIELDS}
    assert len(FIELDS) == 45
