"""Read routes of the API: the lot, availability, listing, history, options, prospects —
with lazy expiry (a due option reads as expired before the sweep) and partner redaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from redis.asyncio import Redis

from statecharts.ticks import ceil_tick, to_iso
from tests.support.api_harness import DAY, T0, Api, running_api


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


def deadline_of(placed: int) -> int:
    return placed + 2 * DAY  # P2D in Europe/Paris, no DST change in late November


async def two_options(api: Api, lot: str = "L1") -> tuple[dict[str, Any], dict[str, Any]]:
    first = await api.place(lot, "p1", partnerGuid="cgp-1")
    api.clock.advance(60)
    second = await api.place(lot, "p2", token="cgp2")
    assert (first.status, second.status) == (201, 201)
    return first.body, second.body


# --------------------------------------------------------------------------- the lot


async def test_lot_shows_state_options_and_next_tick(api: Api) -> None:
    free = await api.get("lots/L1", token="read")
    assert free.status == 200
    assert free.body == {
        "extcode": "L1",
        "status": "LIBRE",
        "statePath": ["free"],
        "version": 1,
        "program": "HAR",
        "label": "Lot L1",
        "secondary": False,
        "link": None,
        "modifiedAt": to_iso(T0 - 3600),
        "options": [],
        "pendingPlacements": [],
        "prereservation": None,
        "nextTick": None,
        "allowedActions": ["place", "prereserve"],
    }
    await two_options(api)
    lot = (await api.get("lots/L1", token="read")).body
    assert lot["status"] == "OPTION" and lot["statePath"] == ["optioned", "two_options"]
    assert lot["version"] == 3
    assert lot["allowedActions"] == ["prolong", "cancel", "prereserve"]
    first, second = lot["options"]
    assert first == {
        "extcode": "L1",
        "optionId": first["optionId"],
        "rank": 1,
        "thirdGuid": "p1",
        "partnerGuid": "cgp-1",
        "placedAt": to_iso(T0),
        "deadline": to_iso(deadline_of(T0)),
        "effectiveExpiry": to_iso(ceil_tick(deadline_of(T0))),
        "deadlineSource": "estimated",
        "prolonged": False,
        "opaque": False,
        "redacted": False,
    }
    assert second["rank"] == 2 and second["partnerGuid"] == "cgp-2"
    assert all(v.endswith("Z") for o in lot["options"] for k, v in o.items() if k.endswith("At"))
    assert lot["nextTick"] == to_iso(ceil_tick(deadline_of(T0)))


async def test_partner_tokens_see_other_partners_holders_redacted(api: Api) -> None:
    await two_options(api)
    await api.post(
        "lots/L2/prereservation", {"thirdGuid": "p3", "price": 100, "deposit": 10}, token="cgp1"
    )
    seen = (await api.get("lots/L1", token="cgp1")).body["options"]
    assert [(o["thirdGuid"], o["partnerGuid"], o["redacted"]) for o in seen] == [
        ("p1", "cgp-1", False),
        (None, None, True),
    ]
    admin = (await api.get("lots/L1", token="read")).body["options"]
    assert [o["thirdGuid"] for o in admin] == ["p1", "p2"]
    pre = (await api.get("lots/L2", token="cgp2")).body["prereservation"]
    assert pre["thirdGuid"] is None and pre["redacted"] and pre["price"] == 100.0
    history = (await api.get("lots/L1/history", token="cgp2")).body["items"]
    placed = [e["data"] for e in history if e["type"] == "koban.option.placed"]
    assert [(d["thirdGuid"], d.get("redacted", False)) for d in placed] == [
        (None, True),
        ("p2", False),
    ]
    listed = (await api.get("options?thirdGuid=p1", token="cgp2")).body["items"]
    assert [(o["thirdGuid"], o["redacted"]) for o in listed] == [(None, True)]


async def test_reads_apply_lazy_expiry_without_writing(api: Api) -> None:
    await two_options(api)
    expiry = ceil_tick(deadline_of(T0))
    api.clock.set(expiry)  # both due at that tick; nothing swept
    lot = (await api.get("lots/L1")).body
    assert (lot["status"], lot["options"], lot["nextTick"]) == ("LIBRE", [], None)
    assert lot["allowedActions"] == ["place", "prereserve"]
    stored = await api.store.load("L1")
    assert stored is not None and len(stored.options) == 2  # nothing written by the read
    assert (await api.get("options")).body["items"] == []
    availability = (await api.get("lots/L1/availability?thirdGuid=p1")).body
    assert (availability["result"], availability["canPlace"]) == (0, True)


async def test_unknown_lot_is_404(api: Api) -> None:
    for rest in ("lots/NOPE", "lots/NOPE/history"):
        answer = await api.get(rest)
        assert answer.status == 404 and answer.code == "LOT_UNKNOWN"


async def test_history_is_oldest_first_and_complete(api: Api) -> None:
    first, _ = await two_options(api)
    assert (await api.delete("lots/L1/options/1")).status == 200
    answer = await api.get("lots/L1/history", token="read")
    assert answer.status == 200 and answer.body["extcode"] == "L1"
    items = answer.body["items"]
    assert [e["type"] for e in items] == [
        "koban.lot.imported",
        "koban.option.placed",
        "koban.option.placed",
        "koban.option.cancelled",
        "koban.option.promoted",
    ]
    assert [e["sequence"] for e in items] == sorted(e["sequence"] for e in items)
    assert items[3]["data"]["optionId"] == first["optionId"]
    assert all(e["time"].endswith("Z") and e["specversion"] == "1.0" for e in items)


# --------------------------------------------------------------------------- availability


async def test_availability_mirrors_get_lot_status(api: Api) -> None:
    async def availability(lot: str, query: str = "") -> dict[str, Any]:
        answer = await api.get(f"lots/{lot}/availability{query}", token="read")
        assert answer.status == 200
        return dict(answer.body)

    free = await availability("L1")
    assert free == {
        "extcode": "L1",
        "result": 0,
        "maxRank": 0,
        "endDate": None,
        "canPlace": True,
        "nextRank": 1,
        "reason": None,
        "status": "LIBRE",
        "koban": None,
        "drift": None,
    }
    assert (await api.place("L1", "p1")).status == 201
    one = await availability("L1")
    expiry = to_iso(ceil_tick(deadline_of(T0)))
    assert (one["result"], one["maxRank"], one["endDate"], one["nextRank"]) == (1, 1, expiry, 2)
    holder = await availability("L1", "?thirdGuid=p1")
    assert (holder["canPlace"], holder["reason"]) == (False, "PROSPECT_ALREADY_HOLDS")
    assert (await api.place("L1", "p2")).status == 201
    two = await availability("L1", "?thirdGuid=p3")
    assert (two["result"], two["maxRank"], two["canPlace"], two["reason"]) == (
        -3,
        2,
        False,
        "LOT_FULL",
    )
    assert (
        await api.post("lots/L2/prereservation", {"thirdGuid": "p3", "price": 1, "deposit": 0})
    ).status == 201
    pre = await availability("L2")
    assert (pre["result"], pre["reason"], pre["status"]) == (-2, "LOT_PRERESERVED", "PRERESV")
    await api.store.sync_status("L3", "blocked", "BLOQUE", T0)
    blocked = await availability("L3")
    assert (blocked["result"], blocked["status"], blocked["reason"]) == (
        -4,
        "BLOQUE",
        "LOT_NOT_AVAILABLE",
    )
    unknown = await availability("NOPE")
    assert (unknown["result"], unknown["canPlace"], unknown["status"]) == (-1, False, None)


async def test_availability_counts_the_prospect_limit(api: Api) -> None:
    for lot in ("L1", "L2", "L3"):
        assert (await api.place(lot, "p1")).status == 201
    answer = (await api.get("lots/L4/availability?thirdGuid=p1")).body
    assert (answer["canPlace"], answer["reason"]) == (False, "PROSPECT_OPTION_LIMIT")
    assert (await api.get("lots/L4/availability")).body["canPlace"] is True
    # An option of p1 lazily expired on L4 itself does not count (as a write would judge).
    assert (await api.place("L4", "p2")).status == 201


async def test_availability_from_koban_reports_drift(api: Api) -> None:
    agreed = (await api.get("lots/L1/availability?source=koban")).body
    assert agreed["koban"] == {"result": 0, "maxRank": 0, "endDate": None}
    assert agreed["drift"] is False
    api.koban.add_option("L2", "p5", via_api=False)  # placed in Koban's UI, webhook missed
    drift = (await api.get("lots/L2/availability?source=koban")).body
    assert drift["result"] == 0 and drift["koban"]["result"] == 1 and drift["drift"] is True
    assert (await api.place("L3", "p1")).status == 201
    assert (await api.get("lots/L3/availability?source=koban")).body["drift"] is False


# --------------------------------------------------------------------------- listings


async def test_lot_listing_pages_through_equal_modification_times(api: Api) -> None:
    for n in range(25):  # imported at the same instant: one run of equal scores
        await api.store.import_lot(f"Z{n:02d}", T0 - 60, program="ZED")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "lots?program=ZED&limit=7" + (f"&cursor={cursor}" if cursor else "")
        body = (await api.get(query, token="read")).body
        seen += [item["extcode"] for item in body["items"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
        if pages == 2:  # a lot modified meanwhile moves to the end, and is seen again
            await api.store.place_local("Z00", "p1", None, T0)
    assert seen[:25] == [f"Z{n:02d}" for n in range(25)]
    assert seen[25:] == ["Z00"] and pages == 4


async def test_lot_listing_filters(api: Api) -> None:
    await two_options(api, "L1")
    api.clock.advance(DAY)
    assert (await api.place("L2", "p3")).status == 201
    await api.store.sync_status("L3", "blocked", "BLOQUE", T0)

    async def codes(query: str) -> list[str]:
        answer = await api.get(f"lots?{query}", token="read")
        assert answer.status == 200, answer
        return [item["extcode"] for item in answer.body["items"]]

    assert await codes("status=OPTION") == ["L1", "L2"]
    assert await codes("status=option,bloque") == ["L3", "L1", "L2"]
    assert await codes("program=BEL") == ["P1"]
    assert await codes("program=HAR&status=LIBRE") == ["L4", "L5", "L6", "L7", "L8"]
    before = quote(to_iso(ceil_tick(deadline_of(T0)) + 1))
    assert await codes(f"expiringBefore={before}") == ["L1"]
    after = quote(to_iso(T0 + 60))
    assert await codes(f"modifiedAfter={after}") == ["L2"]
    everything = (await api.get("lots?limit=1000")).body
    assert len(everything["items"]) == 9 and everything["nextCursor"] is None


async def test_options_listing_filters_and_pages(api: Api) -> None:
    await two_options(api, "L1")
    api.clock.advance(3600)
    assert (await api.place("L2", "p3", partnerGuid="cgp-1")).status == 201
    api.clock.advance(3600)
    assert (await api.place("L3", "p1")).status == 201

    async def listed(query: str) -> list[tuple[str, str]]:
        answer = await api.get(f"options?{query}", token="read")
        assert answer.status == 200, answer
        return [(o["extcode"], o["thirdGuid"]) for o in answer.body["items"]]

    everything = await listed("")
    assert sorted(everything[:2]) == [("L1", "p1"), ("L1", "p2")]
    assert everything[2:] == [("L2", "p3"), ("L3", "p1")]
    assert await listed("thirdGuid=p1") == [("L1", "p1"), ("L3", "p1")]
    assert await listed("partnerGuid=cgp-1") == [("L1", "p1"), ("L2", "p3")]
    cut = quote(to_iso(ceil_tick(deadline_of(T0 + 3600)) + 1))
    assert [c for c, _ in await listed(f"expiringBefore={cut}")] == ["L1", "L1", "L2"]
    first = (await api.get("options?limit=3")).body
    assert len(first["items"]) == 3 and first["nextCursor"]
    rest = (await api.get(f"options?limit=3&cursor={first['nextCursor']}")).body
    assert [o["extcode"] for o in rest["items"]] == ["L3"] and rest["nextCursor"] is None


async def test_prospect_shows_options_pending_and_allowance(api: Api) -> None:
    empty = (await api.get("prospects/p1", token="read")).body
    assert empty == {
        "thirdGuid": "p1",
        "options": [],
        "pendingPlacements": [],
        "maxOptions": 3,
        "remaining": 3,
    }
    assert (await api.place("L1", "p1")).status == 201
    assert (await api.place("L2", "p1", token="cgp2")).status == 201
    api.fault(timeout=True, hang_seconds=2, methods=["ncOption/Add"], count=1)
    pending = await api.place("L3", "p1")
    assert pending.status == 202
    body = (await api.get("prospects/p1", token="read")).body
    assert sorted(o["extcode"] for o in body["options"]) == ["L1", "L2"]
    assert [(p["extcode"], p["intentId"]) for p in body["pendingPlacements"]] == [
        ("L3", pending.body["intentId"])
    ]
    assert body["remaining"] == 0
    partner = (await api.get("prospects/p1", token="cgp1")).body
    assert sorted((o["extcode"], o["redacted"]) for o in partner["options"]) == [
        ("L1", True),
        ("L2", True),
    ]
    api.clock.set(ceil_tick(deadline_of(T0)))  # both options due: lazily expired
    later = (await api.get("prospects/p1")).body
    assert later["options"] == [] and later["remaining"] == 2
