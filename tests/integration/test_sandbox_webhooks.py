"""The webhooks the Koban sandbox calls (captured by a loopback receiver): expiries as its
clock passes ticks, delivery failures, dropped deliveries, where the token goes, and the
webhooks its UI controls fire.
"""

from __future__ import annotations

import asyncio

from tests.support.sandbox_harness import (
    DAY,
    HOOK_TOKEN,
    T0,
    TICK,
    Harness,
    ceil_to_tick,
    running_sandbox,
)

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
