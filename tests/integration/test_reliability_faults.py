"""Koban faults (issue #6 item 1), over real HTTP: the API on loopback, the Koban sandbox on
its own port with its fault injection (`/_sandbox/faults`: latency, 5xx, hangs, TCP resets,
before or after carrying the call out), its webhooks wired back to the API.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_faults.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.usecases.intents import resolve_pending
from service.usecases.sync import reconcile
from statecharts.ticks import to_iso
from tests.support.api_harness import Answer
from tests.support.invariants import check_tenant
from tests.support.reliability_harness import SECRET, UNTIL, Stack, grace, running_stack, snapshot

FAST_KOBAN: dict[str, Any] = {
    "timeout_s": 0.5,
    "connect_timeout_s": 0.25,
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.05,
    "rate_per_s": 1000.0,
}
LOTS = ("L1", "L2", "L3")


@pytest.fixture
async def stack(redis: Redis, tenant: str) -> AsyncIterator[Stack]:
    async with running_stack(redis, tenant, koban=FAST_KOBAN) as running:
        yield running


def unavailable(answer: Answer) -> None:
    assert (answer.status, answer.code) == (503, "KOBAN_UNAVAILABLE"), answer
    assert int(answer.headers["Retry-After"]) > 0
    assert answer.body["source"] is None and answer.body["kobanCode"] is None


async def agree_with_koban(stack: Stack) -> None:
    """Invariants hold and every lot holds the same prospects at the same ranks as Koban."""
    lots = await check_tenant(stack.store)
    for code, lot in lots.items():
        mine = sorted((o.rank, o.holder) for o in lot.options)
        theirs = sorted((o.rank, o.holder) for o in stack.koban.lots[code].options)
        assert mine == theirs, (code, mine, theirs)
        assert not lot.intents, (code, lot.intents)


async def placed(stack: Stack, lot: str, third: str) -> None:
    """A placement that works, its webhook delivered (Koban's deadline learned)."""
    answer = await stack.place(lot, third)
    assert answer.status == 201, answer
    await stack.delivered()


# --------------------------------------------------------------------------- Koban down


async def test_koban_down_refuses_every_write_cleanly_and_the_api_recovers(stack: Stack) -> None:
    await placed(stack, "L2", "p2")
    before = await snapshot(stack.store, LOTS)
    calls = dict(stack.koban.calls)
    await stack.sandbox.stop()  # connection refused from now on

    unavailable(await stack.place("L1", "p1"))
    unavailable(await stack.prolong("L2", 1, UNTIL, "p2"))
    unavailable(await stack.cancel("L2", 1, "p2"))
    prereserve = {"thirdGuid": "p3", "price": "250000.00", "deposit": "5000.00"}
    unavailable(await stack.call("POST", "lots/L3/prereservation", json=prereserve))
    # A read that asks Koban says so too; local reads go on.
    unavailable(await stack.call("GET", "lots/L1/availability?source=koban"))
    assert (await stack.call("GET", "lots/L2")).status == 200

    assert await snapshot(stack.store, LOTS) == before
    assert dict(stack.koban.calls) == calls  # nothing reached Koban
    client = stack.koban_client.calls
    assert client[("GetLotStatus", "retry")] >= 3  # retried before giving up
    assert client[("Prolong", "unavailable")] == client[("Undo", "unavailable")] == 1
    await check_tenant(stack.store)

    await stack.sandbox.start()  # same port, same state: the same API app recovers
    assert (await stack.place("L1", "p1")).status == 201
    assert (await stack.prolong("L2", 1, UNTIL, "p2")).status == 200
    assert (await stack.cancel("L2", 1, "p2")).status == 200
    await stack.delivered()
    await agree_with_koban(stack)


# --------------------------------------------------------------------------- slow Koban


async def test_koban_five_seconds_slow_is_only_slow_with_the_production_timeouts(
    redis: Redis, tenant: str
) -> None:
    async with running_stack(redis, tenant) as stack:  # KobanClient defaults: 10 s total
        stack.fault(latency_ms=5000, methods=["ncOption/Add"], count=1)
        answer = await stack.place("L1", "p1")
        assert answer.status == 201 and answer.body["rank"] == 1
        await stack.delivered()
        await agree_with_koban(stack)


# --------------------------------------------------------------------------- GetLotStatus faults

LOT_STATUS_FAULTS: dict[str, dict[str, Any]] = {
    "slow": {"latency_ms": 5000},  # 10× the client's timeout
    "5xx": {"status": 503},
    "reset": {"reset": True},
}


@pytest.mark.parametrize("kind", sorted(LOT_STATUS_FAULTS))
async def test_lot_status_failing_refuses_the_placement_and_writes_nothing(
    stack: Stack, kind: str
) -> None:
    stack.fault(methods=["ncOption/GetLotStatus"], **LOT_STATUS_FAULTS[kind])
    before = await snapshot(stack.store, LOTS)
    unavailable(await stack.place("L1", "p1"))
    assert await snapshot(stack.store, LOTS) == before
    assert stack.koban_client.calls[("GetLotStatus", "retry")] == 3  # the client's retries
    # (aiohttp itself resends an idempotent GET once on a reset keep-alive connection)
    assert 4 <= stack.koban.calls["ncOption/GetLotStatus"] <= 8
    assert stack.koban.calls["ncOption/Add"] == 0
    stack.koban.clear_faults()
    assert (await stack.place("L1", "p1")).status == 201
    await stack.delivered()
    await agree_with_koban(stack)


@pytest.mark.parametrize("kind", sorted(LOT_STATUS_FAULTS))
async def test_one_failed_lot_status_is_retried_transparently(stack: Stack, kind: str) -> None:
    stack.fault(methods=["ncOption/GetLotStatus"], count=1, **LOT_STATUS_FAULTS[kind])
    answer = await stack.place("L1", "p1")
    assert answer.status == 201, answer
    assert not stack.koban.faults  # it was hit, and retried (by the client, or by aiohttp
    assert stack.koban.calls["ncOption/GetLotStatus"] == 2  # for a reset keep-alive GET)
    await stack.delivered()
    await agree_with_koban(stack)


async def test_koban_answering_unusably_is_502_and_writes_nothing(stack: Stack) -> None:
    await placed(stack, "L2", "p2")
    before = await snapshot(stack.store, LOTS)
    stack.koban.api_key = "rotated"  # Koban now answers 401 to our key
    for answer in (
        await stack.place("L1", "p1"),
        await stack.prolong("L2", 1, UNTIL, "p2"),
        await stack.cancel("L2", 1, "p2"),
    ):
        assert (answer.status, answer.code) == (502, "KOBAN_ERROR"), answer
    assert await snapshot(stack.store, LOTS) == before
    await check_tenant(stack.store)


# --------------------------------------------------------------------------- Add: outcome unknown

# kind → (the fault on ncOption/Add, whether Koban carried the Add out)
ADD_FAULTS: dict[str, tuple[dict[str, Any], bool]] = {
    "slow": ({"latency_ms": 5000}, False),  # the loopback server drops the call with the client
    "hang": ({"timeout": True, "hang_seconds": 30}, False),
    "hang-after-placing": ({"timeout": True, "hang_seconds": 30, "apply": True}, True),
    "5xx": ({"status": 500}, False),
    "5xx-after-placing": ({"status": 502, "apply": True}, True),
    "reset": ({"reset": True}, False),
    "reset-after-placing": ({"reset": True, "apply": True}, True),
}
ADD_CASES = [
    (kind, by)
    for kind, (_, placed) in sorted(ADD_FAULTS.items())
    for by in (("webhook", "lot_status") if placed else ("lot_status",))
]


@pytest.mark.parametrize(("kind", "resolved_by"), ADD_CASES)
async def test_add_with_unknown_outcome_is_pending_then_resolved(
    stack: Stack, kind: str, resolved_by: str
) -> None:
    fault, placed = ADD_FAULTS[kind]
    if resolved_by == "lot_status" and placed:
        stack.koban.webhooks.drop_next(1)  # the option-placed webhook is lost
    stack.fault(methods=["ncOption/Add"], count=1, **fault)
    before = await snapshot(stack.store, LOTS)
    key = {"Idempotency-Key": f"place-{kind}-{resolved_by}"}

    answer = await stack.place("L1", "p1", headers=key)
    assert answer.status == 202, answer
    assert (answer.body["status"], answer.body["rank"]) == ("pending", 1)
    iid = answer.body["intentId"]
    assert stack.koban.calls["ncOption/Add"] == 1  # never resent
    await stack.delivered()
    koban_holders = [o.holder for o in stack.koban.lots["L1"].options]
    assert koban_holders == (["p1"] if placed else [])

    lot = await stack.store.load("L1")
    assert lot is not None
    if resolved_by == "webhook":
        # Koban's option-placed webhook settled the intent, with Koban's own deadline.
        assert not lot.intents
        [option] = lot.options
        assert (option.holder, option.rank, option.source) == ("p1", 1, "koban")
        resolved = [e for e in await stack.events() if e["type"] == "koban.intent.resolved"]
        assert [(e["data"]["outcome"], e["data"]["actor"]) for e in resolved] == [
            ("placed", "koban")
        ]
    else:
        # Pending: the reserved rank and the prospect's allowance, nothing else.
        assert [(i.id, i.rank, i.holder) for i in lot.intents] == [(iid, 1, "p1")]
        assert not lot.options
        after = await snapshot(stack.store, LOTS)
        assert after["history:L1"] == before["history:L1"] and after["stream"] == before["stream"]
        assert after["counts"] == {b"p:p1": b"1", b"u:api": b"1"}
        assert (await stack.place("L1", "p1", headers=key)).status == 202  # still pending
        assert await resolve_pending(stack.tenant, stack.koban_client, stack.clock.now()) == []
        stack.clock.advance(grace(stack) + 1)
        resolutions = await resolve_pending(stack.tenant, stack.koban_client, stack.clock.now())
        outcome = "placed" if placed else "not_placed"
        assert [(r.intent_id, r.outcome) for r in resolutions] == [(iid, outcome)]

    replay = await stack.place("L1", "p1", headers=key)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    if placed:
        assert replay.status == 201 and (replay.body["thirdGuid"], replay.body["rank"]) == (
            "p1",
            1,
        )
    else:
        assert (replay.status, replay.code) == (409, "PLACEMENT_NOT_MADE")
        # Released: no option, no count, no index entry; one event, the resolution.
        after = await snapshot(stack.store, LOTS)
        new = after["history:L1"][len(before["history:L1"]) :]
        assert [(e["type"], e["data"]["outcome"]) for e in new] == [
            ("koban.intent.resolved", "not_placed")
        ]
        lot = await stack.store.load("L1")
        assert lot is not None and not lot.options and not lot.intents
        for key_ in ("counts", "expiries", "intents", "tombstones"):
            assert after[key_] == before[key_], key_
    await agree_with_koban(stack)


# --------------------------------------------------------------------------- Prolong / Undo

WRITE_FAULTS: dict[str, dict[str, Any]] = {
    "hang": {"timeout": True, "hang_seconds": 30},
    "5xx": {"status": 503},
    "reset": {"reset": True},
}
WRITE_CASES = [
    (method, kind, applied)
    for method in ("ncOption/Prolong", "ncOption/Undo")
    for kind in sorted(WRITE_FAULTS)
    for applied in (False, True)
]


@pytest.mark.parametrize(("method", "kind", "applied"), WRITE_CASES)
async def test_prolong_or_undo_with_unknown_outcome(
    stack: Stack, method: str, kind: str, applied: bool
) -> None:
    await placed(stack, "L1", "p1")
    stack.fault(methods=[method], count=1, apply=applied, **WRITE_FAULTS[kind])
    before = await snapshot(stack.store, LOTS)
    if method == "ncOption/Prolong":
        answer = await stack.prolong("L1", 1, UNTIL, "p1")
    else:
        answer = await stack.cancel("L1", 1, "p1")
    assert (answer.status, answer.code) == (502, "KOBAN_OUTCOME_UNKNOWN"), answer
    assert stack.koban.calls[method] == 1  # never resent
    assert b"L1" in await stack.store.redis.smembers(stack.store.keys.needs_sync)
    await stack.delivered()

    lot = await stack.store.load("L1")
    assert lot is not None
    if not applied:
        assert await snapshot(stack.store, LOTS) == before  # nothing written locally
    elif method == "ncOption/Prolong":  # Koban's option-prolonged webhook applied it
        [option] = lot.options
        assert (option.prolonged, to_iso(option.deadline)) == (True, UNTIL)
        assert stack.koban.lots["L1"].options[0].prolonged
    else:  # Koban's option-cancelled webhook applied it
        assert not lot.options and not stack.koban.lots["L1"].options
    stack.clock.advance(1)  # reconciliation defers a lot changed at this very second
    report = await reconcile(stack.tenant, stack.koban_client, stack.clock.now(), extcodes=["L1"])
    assert report.outcomes == {"L1": "agreed"}
    assert b"L1" not in await stack.store.redis.smembers(stack.store.keys.needs_sync)
    await agree_with_koban(stack)


# --------------------------------------------------------------------------- lost local records


@pytest.mark.parametrize("retry", ["cancel", "prolong"])
async def test_a_retry_after_koban_acted_but_redis_failed_never_hits_another_option(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, retry: str
) -> None:
    """Found by the restart test: Koban cancelled rank 1 (p1), then Redis failed before
    the service recorded it (503 STORE_UNAVAILABLE) and Koban's webhook was lost with it.
    The client retried as told; the service still showed p1 at rank 1 and sent Undo (or
    Prolong) of rank 1 again — which in Koban was p2's option by then."""
    await placed(stack, "L1", "p1")
    await placed(stack, "L1", "p2")
    real = stack.store.mutate
    calls = 0

    async def store_fails_after_koban(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # 1: the check before Koban; 2: recording what Koban did
            raise RedisConnectionError("Connection closed by server.")
        return await real(*args, **kwargs)

    monkeypatch.setattr(stack.store, "mutate", store_fails_after_koban)
    stack.koban.webhooks.drop_next(1)  # the option-cancelled webhook: refused meanwhile
    first = await stack.cancel("L1", 1, "p1")
    assert (first.status, first.code) == (503, "STORE_UNAVAILABLE")
    monkeypatch.setattr(stack.store, "mutate", real)
    assert [(o.rank, o.holder) for o in stack.koban.lots["L1"].options] == [(1, "p2")]

    writes = stack.koban.calls["ncOption/Undo"] + stack.koban.calls["ncOption/Prolong"]
    if retry == "cancel":
        again = await stack.cancel("L1", 1, "p1")
    else:
        again = await stack.prolong("L1", 1, UNTIL, "p1")
    assert (again.status, again.code) == (409, "OPTION_MOVED"), again
    assert stack.koban.calls["ncOption/Undo"] + stack.koban.calls["ncOption/Prolong"] == writes
    await stack.delivered()
    await agree_with_koban(stack)
    koban_option = stack.koban.lots["L1"].options[0]
    assert (koban_option.holder, koban_option.prolonged) == ("p2", False)
    types = [e["type"] for e in await stack.store.history("L1")]
    assert types[-2:] == ["koban.option.cancelled", "koban.option.promoted"]


# --------------------------------------------------------------------------- late webhooks


async def deliver_late(stack: Stack, kind: str) -> None:
    """Deliver again, now, the last webhook of `kind` the sandbox fired (dropped then)."""
    fired = [d for d in stack.koban.webhooks.deliveries if d.kind == kind]
    url = f"{stack.api_url}/koban/{stack.name}/{kind.replace('_', '-')}"
    headers = {"X-Koban-Webhook-Token": SECRET}
    async with stack.http.post(url, data=fired[-1].fields, headers=headers) as response:
        assert response.status == 200 and (await response.json()) == {"success": True}


@pytest.mark.parametrize("prolonged", [False, True])
async def test_a_late_placed_webhook_does_not_bring_back_an_option_cancelled_meanwhile(
    stack: Stack, prolonged: bool
) -> None:
    """Found by the restart test: the option-placed webhook of an option placed and then
    cancelled in the same half hour, arriving after the cancellation, placed it again —
    the tombstone held the service's estimated (or prolonged) deadline, the webhook
    Koban's tick. Then a later placement of that prospect: the stale webhook "confirmed"
    its pending intent, though Koban had not (yet) placed anything."""
    stack.koban.webhooks.drop_next(1)  # held back: delivered late, below
    await placed(stack, "L1", "p1")
    if prolonged:  # its tombstone then holds the prolonged date
        assert (await stack.prolong("L1", 1, UNTIL, "p1")).status == 200
    assert (await stack.cancel("L1", 1, "p1")).status == 200
    await stack.delivered()
    await deliver_late(stack, "option_placed")
    lot = await stack.store.load("L1")
    assert lot is not None and not lot.options and lot.config == "free"
    await agree_with_koban(stack)

    # The same prospect again, its Add unanswered: the old webhook settles nothing.
    stack.fault(methods=["ncOption/Add"], count=1, timeout=True, hang_seconds=30)
    pending = await stack.place("L1", "p1")
    assert pending.status == 202
    await stack.delivered()
    await deliver_late(stack, "option_placed")
    lot = await stack.store.load("L1")
    assert lot is not None and not lot.options
    assert [i.id for i in lot.intents] == [pending.body["intentId"]]
    stack.clock.advance(grace(stack) + 1)
    [resolution] = await resolve_pending(stack.tenant, stack.koban_client, stack.clock.now())
    assert resolution.outcome == "not_placed"
    await agree_with_koban(stack)
