"""The Koban sandbox over real HTTP on loopback: headers, lifecycle, limits, paging, thirds,
faults, the clock's expiry ticks and the webhooks it calls (captured by a loopback receiver).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from service.sandbox import SandboxState, populate
from service.sandbox.state import default_rules
from tests.support.sandbox_harness import (
    API_KEY,
    DAY,
    HEADERS,
    HOOK_TOKEN,
    T0,
    TICK,
    USER_KEY,
    Harness,
    ManualClock,
    ceil_to_tick,
    running_sandbox,
)


@pytest.fixture
async def sb() -> AsyncIterator[Harness]:
    async with running_sandbox() as harness:
        yield harness


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-ncApi": API_KEY},
        {"X-ncUser": USER_KEY},
        {"X-ncApi": "wrong", "X-ncUser": USER_KEY},
        {"X-ncApi": API_KEY, "X-ncUser": "wrong"},
    ],
)
async def test_missing_or_wrong_keys_get_401_json(sb: Harness, headers: dict[str, str]) -> None:
    for method, body in (("ncOption/GetLotStatus", None), ("ncOption/Add", {})):
        params = {"extcode": "HAR-A101"} if body is None else None
        status, answer = await sb.koban(method, body, params=params, headers=headers)
        assert status == 401
        assert answer["success"] is False and answer["message"]
    assert sb.state.lots["HAR-A101"].options == []


async def test_right_keys_are_accepted(sb: Harness) -> None:
    assert (await sb.status("HAR-A101"))["Result"] == 0


async def test_malformed_body_is_400(sb: Harness) -> None:
    async with sb.client.post(
        "/api/v1/ncOption/Add", data=b"{not json", headers=HEADERS
    ) as response:
        assert response.status == 400
        assert (await response.json())["success"] is False
    status, answer = await sb.koban("ncOption/Add", {"Third": {"Guid": "p1"}})
    assert status == 400 and "Deal.Extcode" in answer["message"]


# --------------------------------------------------------------------------- lifecycle


async def test_place_prolong_undo_lifecycle_with_webhooks(sb: Harness) -> None:
    expiry1 = ceil_to_tick(T0 + 2 * DAY)
    assert await sb.add("HAR-A101", "p1", 1, DateOption=T0) == (200, {"success": True})
    assert await sb.status("HAR-A101") == {
        "Result": 1,
        "MaxRank": 1,
        "EndDate": expiry1,
        "Status": "OPTION",
    }
    sb.clock.t = T0 + 3600
    assert (await sb.add("HAR-A101", "p2", 2, Part={"Guid": "cgp1"}))[1] == {"success": True}
    two = await sb.status("HAR-A101")
    assert (two["Result"], two["MaxRank"], two["EndDate"]) == (-3, 2, expiry1)

    until = T0 + 4 * DAY + 60
    ok = await sb.koban(
        "ncOption/Prolong", {"Deal": {"Extcode": "HAR-A101"}, "Rank": 1, "DateProlongation": until}
    )
    assert ok == (200, {"success": True})
    assert (await sb.status("HAR-A101"))["EndDate"] == ceil_to_tick(until)

    # Undo rank 1: rank 2 (p2) is promoted and keeps its own deadline.
    assert await sb.koban("ncOption/Undo", {"Deal": {"Extcode": "HAR-A101"}, "Rank": 1}) == (
        200,
        {"success": True},
    )
    after = await sb.status("HAR-A101")
    assert after == {
        "Result": 1,
        "MaxRank": 1,
        "EndDate": ceil_to_tick(T0 + 3600 + 2 * DAY),
        "Status": "OPTION",
    }
    _, view = await sb.control("GET", "lots/HAR-A101")
    assert [(o["rank"], o["thirdGuid"], o["partnerGuid"]) for o in view["options"]] == [
        (1, "p2", "cgp1")
    ]

    receiver = await sb.delivered()
    placed = receiver.of("option_placed")
    assert [c.form["Third_Guid"] for c in placed] == ["p1", "p2"]
    assert placed[0].form == {
        "Deal_Extcode": "HAR-A101",
        "Deal_Guid": "lot-a101",
        "Third_Extcode": "EXT-P1",
        "Third_Guid": "p1",
        "Rank": "1",
        "ExpDate": str(expiry1),
        "Third_Name": "Name1",
        "Third_FirstName": "First1",
        "Third_EMail": "p1@example.com",
        "AssignedTo_Name": sb.state.sales_rep.name,
        "AssignedTo_FirstName": sb.state.sales_rep.first_name,
        "AssignedTo_EMail": sb.state.sales_rep.email,
    }
    assert placed[1].form["Rank"] == "2"
    (prolonged,) = receiver.of("option_prolonged")
    assert prolonged.form == {
        "Deal_Extcode": "HAR-A101",
        "Deal_Guid": "lot-a101",
        "Third_Extcode": "EXT-P1",
        "Third_Guid": "p1",
        "Rank": "1",
        "ExpDate": str(ceil_to_tick(until)),
        "PrgDate": str(until),
    }
    (cancelled,) = receiver.of("option_cancelled")
    assert cancelled.form == {
        "Deal_Extcode": "HAR-A101",
        "Deal_Guid": "lot-a101",
        "Third_Extcode": "EXT-P1",
        "Third_Guid": "p1",
        "Rank": "1",
    }
    for call in receiver.calls:
        assert call.method == "POST"
        assert call.headers["X-Koban-Webhook-Token"] == HOOK_TOKEN
        assert call.query == {"token": HOOK_TOKEN}
        assert call.headers["Content-Type"].startswith("application/x-www-form-urlencoded")


async def test_prereserve_and_desist(sb: Harness) -> None:
    await sb.add("HAR-A102", "p1")
    await sb.add("HAR-A102", "p2")
    body = {
        "Deal": {"Extcode": "HAR-A102"},
        "Third": {"Guid": "p1"},
        "PrixVente": 250000.00,
        "Garantie": 5000.5,
    }
    assert await sb.koban("ncPreresv/Add", body) == (200, {"success": True})
    assert (await sb.status("HAR-A102"))["Result"] == -2
    _, view = await sb.control("GET", "lots/HAR-A102")
    assert view["status"] == "PRERESV"
    assert view["prereservation"]["price"] == "250000.00"
    assert view["prereservation"]["deposit"] == "5000.50"
    # p1's option was converted; p2's stays, promoted to rank 1.
    assert [(o["rank"], o["thirdGuid"]) for o in view["options"]] == [(1, "p2")]
    assert (await sb.add("HAR-A102", "p3"))[1]["errorcode"] == "04"

    # Only the pre-reserving prospect may desist (undocumented refusal: 409).
    status, answer = await sb.koban(
        "ncPreresv/Desist", {"Deal": {"Extcode": "HAR-A102"}, "Third": {"Guid": "p2"}}
    )
    assert status == 409 and answer["success"] is False and "errorcode" not in answer
    assert answer["reason"] == "PRERESERVATION_HOLDER_MISMATCH"
    desist = {"Deal": {"Extcode": "HAR-A102"}, "Third": {"Guid": "p1"}}
    assert await sb.koban("ncPreresv/Desist", desist) == (200, {"success": True})
    back = await sb.status("HAR-A102")
    assert (back["Result"], back["MaxRank"], back["Status"]) == (1, 1, "OPTION")
    status, answer = await sb.koban("ncPreresv/Desist", desist)
    assert status == 409 and answer["reason"] == "NOT_PRERESERVED"
    receiver = await sb.delivered()
    (withdrawn,) = receiver.of("reservation_withdrawn")
    assert withdrawn.fields == [("Deal_Extcode", "HAR-A102"), ("Deal_Guid", "lot-a102")]


# --------------------------------------------------------------------------- limits


async def test_koban_limits_and_refusal_codes(sb: Harness) -> None:
    for extcode in ("HAR-A101", "HAR-A102", "HAR-A103"):
        assert (await sb.add(extcode, "p1"))[1] == {"success": True}
    refused = await sb.add("HAR-A104", "p1")
    assert refused[0] == 200 and refused[1]["success"] is False
    assert refused[1]["errorcode"] == "01" and refused[1]["message"]

    await sb.add("HAR-A101", "p2")
    assert (await sb.add("HAR-A101", "p3"))[1]["errorcode"] == "05"

    status, answer = await sb.add("HAR-A102", "p1")
    assert (status, answer["reason"]) == (409, "PROSPECT_ALREADY_HOLDS")
    status, answer = await sb.add("HAR-A105", "p2", rank=2)
    assert (status, answer["reason"]) == (409, "RANK_NOT_AVAILABLE")
    assert "errorcode" not in answer

    await sb.control("POST", "lots/HAR-A106/status", {"status": "BLOQUE"})
    assert (await sb.add("HAR-A106", "p4"))[1]["errorcode"] == "02"

    status, answer = await sb.add("HAR-A999", "p4")
    assert status == 404 and answer["reason"] == "LOT_UNKNOWN"


async def test_user_limit_counts_only_api_placements() -> None:
    rules = replace(default_rules(), max_options_per_user=2)
    async with running_sandbox(rules=rules) as sb:
        # A placement made in Koban's UI does not count toward the API user's limit.
        status, _ = await sb.control("POST", "lots/HAR-A107/options", {"thirdGuid": "p5"})
        assert status == 201
        assert (await sb.add("HAR-A101", "p1"))[1] == {"success": True}
        assert (await sb.add("HAR-A102", "p2"))[1] == {"success": True}
        assert (await sb.add("HAR-A103", "p3"))[1]["errorcode"] == "03"
        await sb.koban("ncOption/Undo", {"Deal": {"Extcode": "HAR-A101"}, "Rank": 1})
        assert (await sb.add("HAR-A103", "p3"))[1] == {"success": True}


# --------------------------------------------------------------------------- stock


async def test_get_updated_paging_and_updated_filter(sb: Harness) -> None:
    pages: list[str] = []
    start = 0
    while True:
        status, page = await sb.koban(
            "ncDeal/GetUpdated", params={"updated": 0, "s": start, "l": 4}
        )
        assert status == 200 and page["Length"] == 9
        assert len(page["List"]) <= 4
        pages.extend(lot["Extcode"] for lot in page["List"])
        start += 4
        if start >= page["Length"]:
            break
    assert pages == [*(f"HAR-A10{n}" for n in range(1, 8)), "HAR-P01", "QUA-A101"]

    lot = next(x for x in (await sb.koban("ncDeal/GetUpdated", params={"updated": 0}))[1]["List"])
    assert set(lot) == {
        "Guid",
        "Extcode",
        "Label",
        "Status",
        "Result",
        "Process",
        "Amountprev",
        "Tags",
        "MoreFields",
        "Type",
        "Link",
        "Updated",
    }
    assert lot["Process"] == {"Code": "HAR", "Label": "Les Jardins d'Harmonie", "Guid": "prog-har"}

    t1 = T0 + 5000
    status, _ = await sb.control("POST", "clock", {"advanceTo": t1})
    assert status == 200
    await sb.add("HAR-A103", "p1")
    await sb.control("POST", "lots/QUA-A101/status", {"status": "BLOQUE"})
    _, changed = await sb.koban("ncDeal/GetUpdated", params={"updated": t1, "s": 0, "l": 100})
    assert changed["Length"] == 2
    assert [(x["Extcode"], x["Status"], x["Updated"]) for x in changed["List"]] == [
        ("HAR-A103", "OPTION", t1),
        ("QUA-A101", "BLOQUE", t1),
    ]
    _, none = await sb.koban("ncDeal/GetUpdated", params={"updated": t1 + 1})
    assert none == {"Length": 0, "List": []}
    # milliseconds are accepted for `updated`
    _, ms = await sb.koban("ncDeal/GetUpdated", params={"updated": t1 * 1000})
    assert ms["Length"] == 2

    _, qua = await sb.koban("ncDeal/GetUpdatedProcess", params={"updated": 0, "processcode": "QUA"})
    assert [x["Extcode"] for x in qua["List"]] == ["QUA-A101"] and qua["Length"] == 1
    _, processes = await sb.koban("ncDealProcess/GetAll")
    # Koban's published process structure: no `Code`, the programme's code is `Extcode`.
    assert [(p["Guid"], p["Extcode"], p["Label"], p["IsActive"]) for p in processes] == [
        ("prog-har", "HAR", "Les Jardins d'Harmonie", True),
        ("prog-qua", "QUA", "Quai des Arts", True),
    ]
    assert all("Code" not in p for p in processes)
    _, secondary = await sb.koban("ncDeal/GetUpdatedProcess", params={"processcode": "HAR"})
    p01 = next(x for x in secondary["List"] if x["Extcode"] == "HAR-P01")
    assert (p01["Type"], p01["Link"]) == ("Secondary", "lot-a101")


async def test_status_control_sold_and_custom(sb: Harness) -> None:
    await sb.add("HAR-A104", "p1")
    await sb.control("POST", "lots/HAR-A104/status", {"status": "sold"})
    await sb.control(
        "POST", "lots/HAR-A105/status", {"status": "RESA_PROMO", "label": "Réservé promoteur"}
    )
    _, page = await sb.koban("ncDeal/GetUpdated", params={"updated": 0})
    lots = {x["Extcode"]: x for x in page["List"]}
    assert (lots["HAR-A104"]["Status"], lots["HAR-A104"]["Result"]) == ("RESV", "WON")
    assert lots["HAR-A105"]["Status"] == {"Code": "RESA_PROMO", "Label": "Réservé promoteur"}
    # The sold lot's option ended; the prospect's count is free again.
    assert (await sb.status("HAR-A104"))["Result"] == 0
    assert (await sb.add("HAR-A104", "p2"))[1]["errorcode"] == "02"
    status, _ = await sb.control("POST", "lots/HAR-A105/status", {"status": "OPTION"})
    assert status == 400
    await sb.control("POST", "lots/HAR-A104/status", {"status": "LIBRE"})
    assert (await sb.add("HAR-A104", "p2"))[1] == {"success": True}


# --------------------------------------------------------------------------- thirds


async def test_post_one_then_option_and_unknown_third(sb: Harness) -> None:
    status, answer = await sb.add("HAR-A101", "never-created")
    assert status == 404
    assert answer == {
        "success": False,
        "message": "third not found",
        "reason": "PROSPECT_UNKNOWN",
    }
    status, answer = await sb.koban(
        "ncPreresv/Add", {"Deal": {"Extcode": "HAR-A101"}, "Third": {"Guid": "never-created"}}
    )
    assert (status, answer["success"], answer["errorcode"]) == (200, False, "02")

    guid = await sb.post_third("Nouveau", Type={"Code": "PART"}, Extcode="CRM-42")
    assert await sb.add("HAR-A101", guid) == (200, {"success": True})
    # Same Extcode: the same third is updated (upsert), its Guid returned.
    assert await sb.post_third("Nouveau2", Extcode="CRM-42") == guid
    cgp = await sb.post_third("Cabinet", Status={"Code": "CGP"})
    assert cgp != guid
    status, answer = await sb.koban("ncThird/PostOne", {"FirstName": "no label"})
    assert status == 400 and answer["success"] is False
    _, thirds = await sb.control("GET", "prospects")
    by_guid = {t["Guid"]: t for t in thirds}
    assert by_guid[guid]["Label"] == "Nouveau2" and by_guid[cgp]["Status"] == {"Code": "CGP"}
    receiver = await sb.delivered()
    assert receiver.of("option_placed")[0].form["Third_Extcode"] == "CRM-42"


# --------------------------------------------------------------------------- faults


async def test_fault_latency(sb: Harness) -> None:
    status, _ = await sb.control(
        "POST", "faults", {"latency_ms": 300, "methods": ["ncOption/GetLotStatus"], "count": 1}
    )
    assert status == 201
    started = time.monotonic()
    await sb.status("HAR-A101")
    assert time.monotonic() - started >= 0.29
    started = time.monotonic()
    await sb.status("HAR-A101")
    assert time.monotonic() - started < 0.25


async def test_fault_503_then_recovers_and_methods_filter(sb: Harness) -> None:
    await sb.control("POST", "faults", {"status": 503, "methods": ["ncOption/Add"], "count": 2})
    assert (await sb.status("HAR-A101"))["Result"] == 0  # other methods unaffected
    for _ in range(2):
        status, answer = await sb.add("HAR-A101", "p1")
        assert status == 503 and answer["success"] is False
    assert sb.state.lots["HAR-A101"].options == []
    assert await sb.add("HAR-A101", "p1") == (200, {"success": True})
    _, listed = await sb.control("GET", "faults")
    assert listed == {"faults": []}


async def test_fault_errorcode_and_clear(sb: Harness) -> None:
    await sb.control("POST", "faults", {"errorcode": 5, "methods": ["ncOption/Add"]})
    for extcode in ("HAR-A101", "HAR-A102"):
        assert await sb.add(extcode, "p1") == (
            200,
            {"success": False, "errorcode": "05", "message": "injected error"},
        )
    assert (await sb.status("HAR-A101"))["Result"] == 0
    assert await sb.control("DELETE", "faults") == (200, {"faults": []})
    assert await sb.add("HAR-A101", "p1") == (200, {"success": True})


async def test_fault_timeout_hangs_longer_than_client_timeout(sb: Harness) -> None:
    await sb.control("POST", "faults", {"timeout": True, "methods": ["ncOption/Add"], "count": 1})
    with pytest.raises(asyncio.TimeoutError):
        await sb.koban(
            "ncOption/Add",
            {"Third": {"Guid": "p1"}, "Deal": {"Extcode": "HAR-A101"}},
            client_timeout=0.3,
        )
    assert sb.state.lots["HAR-A101"].options == []


async def test_fault_applied_then_503_unknown_outcome(sb: Harness) -> None:
    await sb.control(
        "POST", "faults", {"status": 500, "apply": True, "methods": ["ncOption/Add"], "count": 1}
    )
    status, _ = await sb.add("HAR-A101", "p1")
    assert status == 500
    # Koban did place it: GetLotStatus and the webhook tell.
    assert (await sb.status("HAR-A101"))["Result"] == 1
    receiver = await sb.delivered()
    assert [c.form["Third_Guid"] for c in receiver.of("option_placed")] == ["p1"]


async def test_fault_validation(sb: Harness) -> None:
    for bad in (
        {},
        {"status": 404},
        {"errorcode": "abc"},
        {"latency_ms": -1},
        {"timeout": True, "methods": ["ncNope/Nothing"]},
        {"timeout": True, "count": 0},
        {"timeout": True, "surprise": 1},
    ):
        status, answer = await sb.control("POST", "faults", bad)
        assert status == 400, bad
        assert answer["success"] is False


# --------------------------------------------------------------------------- clock


async def test_clock_advancing_fires_expiry_webhooks_at_ticks(sb: Harness) -> None:
    await sb.add("HAR-A101", "p1")  # placed at T0: expires at ceil_tick(T0 + 2 days)
    sb.clock.t = T0 + 900  # the injected clock moves on its own too
    await sb.add("HAR-A101", "p2")  # rank 2: ceil_tick(T0 + 900 + 2 days), the same tick
    await sb.add("HAR-A102", "p3", DateOption=T0 + 3000)  # expires one tick later
    expiry = ceil_to_tick(T0 + 2 * DAY)
    assert ceil_to_tick(T0 + 900 + 2 * DAY) == expiry
    assert ceil_to_tick(T0 + 3000 + 2 * DAY) == expiry + TICK

    _, clock = await sb.control("GET", "clock")
    assert clock["now"] == T0 + 900 and clock["nextTick"] == ceil_to_tick(T0 + 901)

    status, answer = await sb.control("POST", "clock", {"advanceTo": expiry - 1})
    assert status == 200 and answer["ticksRun"][-1] == expiry - TICK
    assert answer["ticksRun"][0] == ceil_to_tick(T0 + 1)
    assert sb.receiver.of("option_expired") == []
    assert (await sb.status("HAR-A101"))["MaxRank"] == 2

    status, answer = await sb.control("POST", "clock", {"advanceTo": expiry})
    assert (status, answer["ticksRun"], answer["now"]) == (200, [expiry], expiry)
    expired = sb.receiver.of("option_expired")
    assert [c.fields for c in expired] == [
        [
            ("Deal_Extcode", "HAR-A101"),
            ("Deal_Guid", "lot-a101"),
            ("Third_Extcode", "EXT-P1"),
            ("Third_Guid", "p1"),
        ],
        [
            ("Deal_Extcode", "HAR-A101"),
            ("Deal_Guid", "lot-a101"),
            ("Third_Extcode", "EXT-P2"),
            ("Third_Guid", "p2"),
        ],
    ]
    for call in expired:
        assert call.headers["X-Koban-Webhook-Token"] == HOOK_TOKEN
        assert call.query["token"] == HOOK_TOKEN
    assert (await sb.status("HAR-A101"))["Result"] == 0
    assert (await sb.status("HAR-A102"))["Result"] == 1

    _, answer = await sb.control("POST", "clock", {"advanceBy": "PT45M"})
    assert answer["ticksRun"] == [expiry + TICK]
    assert [c.form["Third_Guid"] for c in sb.receiver.of("option_expired")] == ["p1", "p2", "p3"]
    _, changed = await sb.koban("ncDeal/GetUpdated", params={"updated": expiry})
    assert {x["Extcode"] for x in changed["List"]} == {"HAR-A101", "HAR-A102"}

    status, answer = await sb.control("POST", "clock", {"advanceTo": T0})
    assert status == 422 and answer["reason"] == "CLOCK_BACKWARDS"


async def test_promoted_rank2_expires_at_its_own_tick(sb: Harness) -> None:
    await sb.add("HAR-A101", "p1", DateOption=T0)
    await sb.add("HAR-A101", "p2", DateOption=T0 + 2 * TICK)
    first = ceil_to_tick(T0 + 2 * DAY)
    await sb.control("POST", "clock", {"advanceTo": first})
    assert [c.form["Third_Guid"] for c in sb.receiver.of("option_expired")] == ["p1"]
    promoted = await sb.status("HAR-A101")
    assert (promoted["Result"], promoted["EndDate"]) == (1, first + 2 * TICK)
    await sb.control("POST", "clock", {"advanceTo": first + 2 * TICK})
    assert [c.form["Third_Guid"] for c in sb.receiver.of("option_expired")] == ["p1", "p2"]


async def test_injected_clock_alone_expires_on_next_request_and_ticker() -> None:
    async with running_sandbox(tick_interval=0.05) as sb:
        await sb.add("HAR-A101", "p1")
        sb.clock.t = ceil_to_tick(T0 + 2 * DAY) + 10
        for _ in range(100):
            if sb.receiver.of("option_expired"):
                break
            await asyncio.sleep(0.02)
        assert [c.form["Third_Guid"] for c in sb.receiver.of("option_expired")] == ["p1"]


# --------------------------------------------------------------------------- webhooks


async def test_webhook_failures_are_counted_never_crash(sb: Harness) -> None:
    sb.state.webhooks.configure(
        targets={**sb.receiver.targets(), "option_placed": "http://127.0.0.1:9/down"}
    )
    assert await sb.add("HAR-A101", "p1") == (200, {"success": True})
    _, report = await sb.control("GET", "webhooks")
    assert report["stats"]["failed"] == 1
    assert report["deliveries"][-1]["outcome"] == "failed"
    assert "token" not in report["deliveries"][-1]["url"]
    assert (await sb.status("HAR-A101"))["Result"] == 1


async def test_drop_next_webhooks(sb: Harness) -> None:
    status, _ = await sb.control("POST", "webhooks/drop", {"count": 2})
    assert status == 200
    for extcode in ("HAR-A101", "HAR-A102", "HAR-A103"):
        await sb.add(extcode, "p1")
    receiver = await sb.delivered()
    assert [c.form["Deal_Extcode"] for c in receiver.of("option_placed")] == ["HAR-A103"]
    _, report = await sb.control("GET", "webhooks")
    assert report["stats"]["dropped"] == 2


async def test_webhook_token_placement_is_configurable(sb: Harness) -> None:
    status, answer = await sb.control("PUT", "webhooks", {"tokenIn": ["header"]})
    assert status == 200 and answer["tokenIn"] == ["header"]
    assert "hook-secret" not in str(answer)
    await sb.add("HAR-A101", "p1")
    (call,) = (await sb.delivered()).of("option_placed")
    assert call.query == {} and call.headers["X-Koban-Webhook-Token"] == HOOK_TOKEN


async def test_ui_controls_fire_their_webhooks(sb: Harness) -> None:
    status, answer = await sb.control(
        "POST", "lots/HAR-A101/options", {"thirdGuid": "p1", "partnerGuid": "cgp1"}
    )
    assert status == 201 and answer["rank"] == 1
    (placed,) = sb.receiver.of("option_placed")  # control answers after delivery
    assert placed.form["Deal_Extcode"] == "HAR-A101"
    (check,) = sb.receiver.of("option_check")
    assert check.method == "GET" and check.query["extcode"] == "HAR-A101"

    sb.receiver.check_answer = {"status": False, "rank": None}
    status, _ = await sb.control("POST", "lots/HAR-A102/options", {"thirdGuid": "p2"})
    assert status == 409
    assert sb.state.lots["HAR-A102"].options == []
    status, _ = await sb.control("POST", "lots/HAR-A102/options", {"thirdGuid": "nobody"})
    assert status == 404

    await sb.koban(
        "ncPreresv/Add",
        {"Deal": {"Extcode": "HAR-A101"}, "Third": {"Guid": "p1"}, "PrixVente": 210000},
    )
    status, answer = await sb.control("POST", "lots/HAR-A101/reservation")
    assert status == 200
    (validated,) = sb.receiver.of("reservation_validated")
    form = validated.form
    assert (form["Lot_Code"], form["DealId"], form["ThirdId"]) == ("HAR-A101", "lot-a101", "p1")
    assert form["PrixVente"] == "210000.00" and form["DealProcessId"] == "prog-har"
    assert form["OptionId"] and form["_id"] and form["PreresaDate"] == str(T0)
    _, view = await sb.control("GET", "lots/HAR-A101")
    assert view["status"] == "RESV" and view["options"] == []

    status, _ = await sb.control("POST", "lots/HAR-A101/withdrawal", {})
    assert status == 200
    (withdrawn,) = sb.receiver.of("reservation_withdrawn")
    assert withdrawn.form == {"Deal_Extcode": "HAR-A101", "Deal_Guid": "lot-a101"}
    assert (await sb.status("HAR-A101"))["Result"] == 0

    status, answer = await sb.control("POST", "lots/HAR-A101/withdrawal", {})
    assert status == 409 and answer["reason"] == "NOT_PRERESERVED"
    status, _ = await sb.control("GET", "lots/NOPE")
    assert status == 404


# --------------------------------------------------------------------------- quirks, demo


async def test_quirks_mode_answers_with_koban_other_spellings(sb: Harness) -> None:
    await sb.control("POST", "settings", {"quirks": True})
    assert await sb.add("HAR-A101", "p1") == (200, {"Success": True})
    _, refused = await sb.add("HAR-A102", "nobody")
    assert refused["Success"] is False and refused["Message"] == "third not found"
    _, full = await sb.koban("ncOption/Undo", {"Deal": {"Extcode": "HAR-A109"}, "Rank": 1})
    assert full == {"Success": False, "ErrorCode": 1, "Message": full["Message"]}
    assert (await sb.status("HAR-A101"))["EndDate"] == ceil_to_tick(T0 + 2 * DAY) * 1000
    _, page = await sb.koban("ncDeal/GetUpdated", params={"updated": 0, "l": 1})
    assert page["List"][0]["Updated"] == T0 * 1000
    await sb.control("POST", "settings", {"quirks": False, "twoOptionsResult": 1})
    await sb.add("HAR-A101", "p2")
    two = await sb.status("HAR-A101")
    assert (two["Result"], two["MaxRank"]) == (1, 2)


async def test_demo_stock() -> None:
    async with running_sandbox(demo=True) as sb:
        lots: list[dict[str, Any]] = []
        start = 0
        while True:
            _, page = await sb.koban("ncDeal/GetUpdated", params={"updated": 0, "s": start})
            lots.extend(page["List"])
            start += len(page["List"])
            if start >= page["Length"]:
                break
        assert 250 <= len(lots) <= 350
        by_guid = {x["Guid"]: x for x in lots}
        secondary = [x for x in lots if x["Type"] == "Secondary"]
        assert 0.05 <= len(secondary) / len(lots) <= 0.15
        for lot in secondary:
            assert by_guid[lot["Link"]]["Type"] is None
        _, processes = await sb.koban("ncDealProcess/GetAll")
        assert len(processes) == 3
        assert {x["Process"]["Code"] for x in lots} == {p["Extcode"] for p in processes}
        statuses = [x["Status"] for x in lots]
        for label in ("LIBRE", "OPTION", "PRERESV", "RESV", "BLOQUE"):
            assert label in statuses
        assert any(isinstance(s, dict) for s in statuses)
        assert any(x["Result"] == "WON" for x in lots)
        assert by_guid[next(iter(by_guid))]["Extcode"] == "HAR-A101"
        assert (await sb.status("HAR-A101"))["Result"] == 0

        _, thirds = await sb.control("GET", "prospects")
        guids = {t["Guid"]: t["Status"]["Code"] for t in thirds}
        assert {g for g, kind in guids.items() if kind == "PROSPECT"} == {
            f"demo-prospect-{n}" for n in range(1, 9)
        }
        assert sum(kind == "CGP" for kind in guids.values()) == 2
        # Options already held by demo prospects (opaque to a first import).
        optioned = [x["Extcode"] for x in lots if x["Status"] == "OPTION"]
        assert len(optioned) >= 3
        answers = [await sb.status(e) for e in optioned]
        assert all(a["Result"] in (1, -3) and a["EndDate"] > T0 for a in answers)
        assert any(a["MaxRank"] == 2 for a in answers)
        # The demo prospect of the `run` banner can place an option at once.
        assert await sb.add("HAR-A101", "demo-prospect-1") == (200, {"success": True})
        assert sb.state.webhooks.stats.fired == 1  # the demo set-up fired none

    again = SandboxState(api_key=API_KEY, user_key=USER_KEY, clock=ManualClock(T0))
    populate(again)
    other = SandboxState(api_key=API_KEY, user_key=USER_KEY, clock=ManualClock(T0))
    populate(other)
    assert [again.lot_json(x) for x in again.lots.values()] == [
        other.lot_json(x) for x in other.lots.values()
    ]
