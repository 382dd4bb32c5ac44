"""Security (issue #6, item 4): tenants never see each other's data, and a partner token
never acts on another partner's options nor finds their holders anywhere.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_security_*.py`.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import redis as redis_sync

from service.sandbox import Fault
from statecharts.ticks import to_iso
from tests.support.api_harness import DAY, T0
from tests.support.redis_snapshot import changed, snapshot
from tests.support.security_deployment import Answer, Deployment, both_snapshots, read_sse

# --------------------------------------------------------------------------- isolation


def _absent(answer: Answer, strings: tuple[str, ...], where: str) -> None:
    for text in strings:
        assert text.encode() not in answer.raw, f"{where}: {text!r} in {answer.raw[:300]!r}"


async def test_a_tenant_never_sees_another_tenants_data(dep: Deployment) -> None:
    a, b = dep.name, dep.other
    keys = redis_sync.Redis.from_url(dep.redis_url)
    b_before = snapshot(keys, b, dbsize=False)
    everything_before = set(keys.scan_iter(count=1000))
    # Tenant A: an option through the API (Koban), one through a webhook, on a lot of its own.
    placed = await dep.call(
        "POST", "lots/L1/options", role="admin", json={"thirdGuid": "holder-a1"}
    )
    assert placed.status == 201, placed.body
    fields = {"Deal_Extcode": "ONLY-A", "Third_Guid": "holder-x", "ExpDate": str(T0 + DAY)}
    assert (await dep.hook("option-placed", fields, header=dep.secrets.webhook)).status == 200
    # A's workload wrote only under A's hash tag; B's keys did not move.
    new = set(keys.scan_iter(count=1000)) - everything_before
    assert new and all(k.startswith(f"kol:{{{a}}}:".encode()) for k in new), new
    assert not changed(b_before, snapshot(keys, b, dbsize=False))
    # Tenant B: a lot with the same extcode, its own holder, its own webhook.
    a_before = snapshot(keys, a, dbsize=False)
    await dep.other_tenant.store.import_lot("L1", T0 - 60, program="HAR", label="B's L1")
    await dep.other_tenant.store.place_local("L1", "holder-of-b", None, T0)
    fields = {"Deal_Extcode": "ONLY-B", "Third_Guid": "holder-of-b2", "ExpDate": str(T0 + DAY)}
    assert (
        await dep.hook("option-placed", fields, header=dep.secrets.other_webhook, tenant=b)
    ).status == 200
    assert not changed(a_before, snapshot(keys, a, dbsize=False))
    keys.close()
    # Each tenant's secret is refused on the other's webhooks.
    for secret, tenant in ((dep.secrets.webhook, b), (dep.secrets.other_webhook, a)):
        for place in ("header", "query"):
            answer = await dep.hook(
                "option-placed",
                fields,
                tenant=tenant,
                **{place: secret},  # type: ignore[arg-type]
            )
            assert answer.status == 401, (tenant, place)
    # Reads: B sees B's data and nothing of A's, and the other way round.
    a_marks = ("holder-a1", "holder-x", "ONLY-A", f'"koban-options/{a}"')
    b_marks = ("holder-of-b", "ONLY-B", f'"koban-options/{b}"')
    reads = (
        "lots?limit=1000",
        "lots/L1",
        "lots/L1/history",
        "lots/L1/availability",
        "options?limit=1000",
        "events?limit=1000",
    )
    for rest in reads:
        mine = await dep.call("GET", dep.path(rest, b), token=dep.secrets.other_token)
        assert mine.status == 200, (rest, mine.body)
        _absent(mine, a_marks, f"tenant B {rest}")
        theirs = await dep.call("GET", dep.path(rest, a), role="admin")
        assert theirs.status == 200, (rest, theirs.body)
        _absent(theirs, b_marks, f"tenant A {rest}")
    for third in ("holder-a1", "holder-of-b"):  # the answer names the prospect asked about
        mine = await dep.call(
            "GET", dep.path(f"prospects/{third}", b), token=dep.secrets.other_token
        )
        theirs = await dep.call("GET", dep.path(f"prospects/{third}", a), role="admin")
        assert bool(mine.body["options"]) == (third == "holder-of-b"), third
        assert bool(theirs.body["options"]) == (third == "holder-a1"), third
    listed = await dep.call("GET", dep.path("lots?limit=1000", b), token=dep.secrets.other_token)
    assert sorted(item["extcode"] for item in listed.body["items"]) == ["L1", "ONLY-B"]
    # And B's token on A's lot that B also has: TENANT_UNKNOWN, not B's lot.
    crossed = await dep.call("GET", dep.path("lots/L1", a), token=dep.secrets.other_token)
    assert (crossed.status, crossed.code) == (404, "TENANT_UNKNOWN")


# --------------------------------------------------------------------------- partners

OTHER_PARTNER_MARKS = ("holder-b1", "holder-b2", "holder-b3", "cgp-2")


async def _partner_stock(d: Deployment) -> None:
    """cgp-1: holder-a1 at L1 rank 1. cgp-2: holder-b1 at L1 rank 2, holder-b2 at L3, a
    préréservation of holder-b3 on L2, and a placement of holder-b2 on L6 left pending."""
    for lot, third, role in (
        ("L1", "holder-a1", "cgp1"),
        ("L1", "holder-b1", "cgp2"),
        ("L3", "holder-b2", "cgp2"),
    ):
        answer = await d.call("POST", f"lots/{lot}/options", role=role, json={"thirdGuid": third})
        assert answer.status == 201, answer.body
    answer = await d.call(
        "POST",
        "lots/L2/prereservation",
        role="cgp2",
        json={"thirdGuid": "holder-b3", "price": 100, "deposit": 10},
    )
    assert answer.status == 201, answer.body
    d.koban.add_fault(
        Fault.from_json(
            {"timeout": True, "hang_seconds": 2, "methods": ["ncOption/Add"], "count": 1}
        )
    )
    answer = await d.call("POST", "lots/L6/options", role="cgp2", json={"thirdGuid": "holder-b2"})
    assert answer.status == 202, answer.body


async def test_a_partner_token_never_acts_on_another_partners_options(dep: Deployment) -> None:
    await _partner_stock(dep)
    before = both_snapshots(dep)
    sandbox, calls = dep.sandbox_options(), dep.koban_calls()
    until = to_iso(T0 + 4 * DAY)
    attempts: list[tuple[str, str, Any]] = [
        ("DELETE", "lots/L1/options/2", None),
        ("DELETE", "lots/L1/options/2?thirdGuid=holder-b1", None),
        ("POST", "lots/L1/options/2/prolongation", {"until": until}),
        ("POST", "lots/L1/options/2/prolongation", {"until": until, "thirdGuid": "holder-b1"}),
        ("DELETE", "lots/L3/options/1", None),
        ("DELETE", "lots/L3/options/1?thirdGuid=holder-b2", None),
        ("POST", "lots/L3/options/1/prolongation", {"until": until}),
        ("POST", "lots/L2/prereservation/withdrawal", {"thirdGuid": "holder-b3"}),
        ("POST", "lots/L4/options", {"thirdGuid": "holder-x", "partnerGuid": "cgp-2"}),
        (
            "POST",
            "lots/L5/prereservation",
            {"thirdGuid": "holder-x", "price": 1, "deposit": 1, "partnerGuid": "cgp-2"},
        ),
    ]
    for method, rest, body in attempts:
        answer = await dep.call(method, rest, role="cgp1", json=body)
        assert (answer.status, answer.code) == (403, "FORBIDDEN"), (method, rest, answer.body)
    assert not changed(before, both_snapshots(dep))  # nothing written
    # With an Idempotency-Key the 403 is stored for replays (README: 4xx answers are kept
    # 24 h), and nothing else is written.
    for method, rest, body in attempts:
        headers = {"Idempotency-Key": "k-" + uuid.uuid4().hex}
        answer = await dep.call(method, rest, role="cgp1", json=body, headers=headers)
        assert (answer.status, answer.code) == (403, "FORBIDDEN"), (method, rest, answer.body)
        replay = await dep.call(method, rest, role="cgp1", json=body, headers=headers)
        assert replay.status == 403
    after = changed(before, both_snapshots(dep))
    assert after and all(":idem:" in c for c in after[1:]) and after[0].startswith("dbsize")
    assert (dep.sandbox_options(), dep.koban_calls()) == (sandbox, calls)  # Koban not called


async def test_a_partner_token_finds_the_other_partners_holders_nowhere(dep: Deployment) -> None:
    await _partner_stock(dep)
    reads = [
        "lots/L1",
        "lots/L2",
        "lots/L3",
        "lots/L6",
        "lots?limit=1000",
        "lots?status=OPTION,PRERESV",
        "options?limit=1000",
        "options?partnerGuid=cgp-2",
        "options?thirdGuid=holder-b1",
        "lots/L1/history",
        "lots/L2/history",
        "lots/L3/history",
        "lots/L6/history",
        "events?limit=1000",
    ]
    for rest in reads:
        answer = await dep.call("GET", rest, role="cgp1")
        assert answer.status == 200, (rest, answer.body)
        _absent(answer, OTHER_PARTNER_MARKS, rest)
        # The redaction leaves the partner's own holder visible.
        if rest in ("lots/L1", "events?limit=1000", "lots/L1/history"):
            assert b"holder-a1" in answer.raw, rest
    for third in ("holder-b1", "holder-b2"):
        answer = await dep.call("GET", f"prospects/{third}", role="cgp1")
        assert answer.status == 200
        listed = orjson.dumps([answer.body["options"], answer.body["pendingPlacements"]])
        assert answer.body["options"] or answer.body["pendingPlacements"], third
        for mark in OTHER_PARTNER_MARKS:
            assert mark.encode() not in listed, (third, mark)
    # The events stream (SSE), from the start of the stream.
    entries = await dep.tenant.store.redis.xlen(dep.tenant.store.keys.events)
    events = await read_sse(dep, "cgp1", entries)
    assert len(events) == entries
    text = "\n".join(events)
    for mark in OTHER_PARTNER_MARKS:
        assert mark not in text, mark
    assert "holder-a1" in text
    # The other partner (and a token without partner) do see them.
    full = await dep.call("GET", "lots/L1", role="cgp2")
    assert b"holder-b1" in full.raw and b"holder-a1" not in full.raw
