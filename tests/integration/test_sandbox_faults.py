"""The Koban sandbox's fault injection (`/_sandbox/faults`): latency, 5xx, Koban error codes,
hangs past the client's timeout, faults after carrying the call out, and their validation.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.sandbox_harness import Harness

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
