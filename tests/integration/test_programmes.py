"""Programmes stored by the stock sync (Koban's GetAll) and listed with their lots."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service.sandbox import Fault
from service.usecases.sync import sync_stock
from tests.support.api_harness import LOTS, Api, running_api


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        await sync_stock(running.tenant, running.koban_client, running.clock.now(), full=True)
        yield running


async def test_programmes_are_listed_with_their_lots_per_status(api: Api) -> None:
    assert (await api.place("L1", "p1", token="write")).status == 201
    listed = await api.get("programmes", token="read")
    assert listed.status == 200, listed.body
    assert listed.body == {
        "items": [
            {
                "code": "HAR",
                "label": "Les Jardins d'Harmonie",
                "lots": {"total": 8, "byStatus": {"LIBRE": 7, "OPTION": 1}},
            },
            {
                "code": "BEL",
                "label": "Le Belvédère",
                "lots": {"total": 1, "byStatus": {"LIBRE": 1}},
            },
        ]
    }


async def test_a_programme_s_lots_are_paged_and_filtered(api: Api) -> None:
    assert (await api.place("L3", "p1", token="write")).status == 201
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        query = "programmes/HAR/lots?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await api.get(query, token="read")
        assert page.status == 200, page.body
        seen += [lot["extcode"] for lot in page.body["items"]]
        cursor = page.body["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(LOTS)
    optioned = await api.get("programmes/HAR/lots?status=OPTION", token="read")
    assert [lot["extcode"] for lot in optioned.body["items"]] == ["L3"]
    unknown = await api.get("programmes/NOPE/lots", token="read")
    assert (unknown.status, unknown.code) == (404, "PROGRAMME_UNKNOWN")


async def test_a_failing_getall_keeps_the_list_and_the_sync_goes_on(api: Api) -> None:
    api.koban.add_fault(Fault(status=503, methods=frozenset({"ncDealProcess/GetAll"}), count=1))
    report = await sync_stock(api.tenant, api.koban_client, api.clock.now(), full=True)
    assert report.seen == len(api.koban.lots)
    listed = await api.get("programmes", token="read")
    assert [p["code"] for p in listed.body["items"]] == ["HAR", "BEL"]
