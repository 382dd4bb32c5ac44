"""The Koban sandbox over real HTTP on loopback, its Koban API: headers, lifecycle, limits,
paging, status control, thirds, the quirks profile and the demo stock.
"""

from __future__ import annotations

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
    USER_KEY,
    Harness,
    ManualClock,
    ceil_to_tick,
    running_sandbox,
)

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
