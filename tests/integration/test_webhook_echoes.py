"""Late echoes of the service's own changes (found by tests/integration/test_reliability_mixed.py).

What it sets up and checks, in detail: docs/testing.md, `test_webhook_echoes.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service.sandbox.webhooks import TOKEN_HEADER
from service.usecases.echoes import ECHO_TTL_S
from service.usecases.sweep import sweep_expiries
from service.usecases.sync import needs_sync
from statecharts.ticks import latest_tick, to_iso
from tests.support.api_harness import DAY, LOTS, PROSPECTS, T0
from tests.support.invariants import check_tenant
from tests.support.reliability_harness import SECRET, Stack, running_stack
from tests.support.twin_compare import twin_disagreements

L1 = "L1"
P1, P2 = "p1", "p2"
PRICE = {"price": "250000.00", "deposit": "12500.00"}


@pytest.fixture
async def stack(redis: Redis, tenant: str) -> AsyncIterator[Stack]:
    async with running_stack(
        redis, tenant, webhooks=False, koban={"rate_per_s": 1000.0}
    ) as running:
        yield running


def recorded(stack: Stack, kind: str) -> list[dict[str, str]]:
    """The webhooks of `kind` the sandbox fired so far (recorded, not sent), in order."""
    return [d.fields for d in stack.koban.webhooks.deliveries if d.kind == kind]


async def deliver(stack: Stack, kind: str, fields: dict[str, str]) -> None:
    url = f"{stack.api_url}/koban/{stack.name}/{kind.replace('_', '-')}"
    async with stack.http.post(url, data=fields, headers={TOKEN_HEADER: SECRET}) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"success": True}


async def agree(stack: Stack) -> None:
    await check_tenant(stack.store)
    problems = await twin_disagreements(
        stack.store, stack.koban, (*LOTS, "P1"), stack.clock.now(), PROSPECTS
    )
    assert not problems, "\n".join(problems)


async def test_a_late_echo_of_our_desist_leaves_the_newer_prereservation(stack: Stack) -> None:
    assert (await stack.place(L1, P1)).status == 201
    prereserve = {"thirdGuid": P1, **PRICE}
    assert (await stack.call("POST", f"lots/{L1}/prereservation", json=prereserve)).status == 201
    withdrawal = {"thirdGuid": P1}
    answer = await stack.call("POST", f"lots/{L1}/prereservation/withdrawal", json=withdrawal)
    assert answer.status == 200
    prereserve = {"thirdGuid": P2, **PRICE}
    assert (await stack.call("POST", f"lots/{L1}/prereservation", json=prereserve)).status == 201
    (echo,) = recorded(stack, "reservation_withdrawn")
    await deliver(stack, "reservation_withdrawn", echo)  # late: after P2's préréservation
    lot = await stack.store.load(L1)
    assert lot is not None and lot.prereservation is not None
    assert (lot.config, lot.prereservation.holder) == ("prereserved", P2)
    assert not lot.echoes
    await agree(stack)
    # A genuine withdrawal (Koban's UI) afterwards is not mistaken for an echo.
    stack.koban.withdraw_reservation(L1)
    await deliver(stack, "reservation_withdrawn", recorded(stack, "reservation_withdrawn")[-1])
    lot = await stack.store.load(L1)
    assert lot is not None and lot.config == "free"
    await agree(stack)


async def test_a_late_echo_of_our_undo_leaves_the_prospects_new_option(stack: Stack) -> None:
    assert (await stack.place(L1, P1)).status == 201
    assert (await stack.cancel(L1, 1, P1)).status == 200
    again = await stack.place(L1, P1)
    assert again.status == 201
    (echo,) = recorded(stack, "option_cancelled")
    await deliver(stack, "option_cancelled", echo)  # late: after the new placement
    lot = await stack.store.load(L1)
    assert lot is not None and [(o.rank, o.holder) for o in lot.options] == [(1, P1)]
    assert lot.options[0].id == again.body["optionId"]
    for fields in recorded(stack, "option_placed"):
        await deliver(stack, "option_placed", fields)
    await agree(stack)
    # Koban's UI cancels the new option: that webhook is applied.
    stack.koban.undo_option(L1, 1)
    await deliver(stack, "option_cancelled", recorded(stack, "option_cancelled")[-1])
    lot = await stack.store.load(L1)
    assert lot is not None and lot.options == []
    await agree(stack)


async def test_a_late_echo_of_our_prolong_leaves_the_prospects_new_option(stack: Stack) -> None:
    assert (await stack.place(L1, P1)).status == 201
    assert (await stack.prolong(L1, 1, to_iso(T0 + 3 * DAY), P1)).status == 200
    assert (await stack.cancel(L1, 1, P1)).status == 200
    assert (await stack.place(L1, P1)).status == 201
    (prolonged,) = recorded(stack, "option_prolonged")
    (cancelled,) = recorded(stack, "option_cancelled")
    await deliver(stack, "option_prolonged", prolonged)  # both late, in firing order
    await deliver(stack, "option_cancelled", cancelled)
    lot = await stack.store.load(L1)
    assert lot is not None and [(o.holder, o.prolonged) for o in lot.options] == [(P1, False)]
    assert not lot.echoes
    history = [e["type"] for e in await stack.store.history(L1)]
    assert "koban.sync.drift_detected" not in history
    await agree(stack)


async def test_a_late_koban_expiry_leaves_the_prospects_new_option(stack: Stack) -> None:
    assert (await stack.place(L1, P1)).status == 201
    # Two days later both sides expire it at its tick; Koban's webhook is held back.
    stack.clock.set(T0 + 2 * DAY + 1800)
    stack.koban.catch_up()
    await sweep_expiries(stack.store, latest_tick(stack.clock.now()))
    (expired,) = recorded(stack, "option_expired")
    again = await stack.place(L1, P1)
    assert again.status == 201
    # Another tick passes: the new option was placed before Koban's latest tick now.
    stack.clock.set(T0 + 2 * DAY + 3600)
    stack.koban.catch_up()
    await sweep_expiries(stack.store, latest_tick(stack.clock.now()))
    await deliver(stack, "option_expired", expired)
    lot = await stack.store.load(L1)
    assert lot is not None and [o.id for o in lot.options] == [again.body["optionId"]]
    assert L1 in await needs_sync(stack.tenant)  # in case Koban did expire the new one
    for fields in recorded(stack, "option_placed"):
        await deliver(stack, "option_placed", fields)
    await agree(stack)


async def test_an_echo_is_awaited_for_a_bounded_real_time(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An echo whose webhook never came (lost) stops being awaited after `ECHO_TTL_S` of real
    time: a withdrawal webhook coming later is then taken at face value."""
    import service.usecases.echoes as echoes

    wall = [1_000_000.0]
    monkeypatch.setattr(echoes, "wall_clock", lambda: wall[0])
    assert (await stack.place(L1, P1)).status == 201
    body = {"thirdGuid": P1, **PRICE}
    assert (await stack.call("POST", f"lots/{L1}/prereservation", json=body)).status == 201
    answer = await stack.call(
        "POST", f"lots/{L1}/prereservation/withdrawal", json={"thirdGuid": P1}
    )
    assert answer.status == 200
    lot = await stack.store.load(L1)
    assert lot is not None and [(e.kind, e.at) for e in lot.echoes] == [
        ("reservation_withdrawn", 1_000_000)
    ]
    body = {"thirdGuid": P2, **PRICE}
    assert (await stack.call("POST", f"lots/{L1}/prereservation", json=body)).status == 201
    wall[0] += ECHO_TTL_S + 1
    (echo,) = recorded(stack, "reservation_withdrawn")
    await deliver(stack, "reservation_withdrawn", echo)  # too late to be taken for the echo
    lot = await stack.store.load(L1)
    assert lot is not None and lot.config == "free" and not lot.echoes


async def test_the_sweep_keeps_an_awaited_echo(stack: Stack) -> None:
    """A lot awaiting an echo is swept (its stored form has a key the sweep's fast path does
    not take: the generic path) without losing it."""
    assert (await stack.place(L1, P1)).status == 201
    assert (await stack.place(L1, P2)).status == 201
    assert (await stack.cancel(L1, 2, P2)).status == 200
    lot = await stack.store.load(L1)
    assert lot is not None and [(e.kind, e.third) for e in lot.echoes] == [("option_cancelled", P2)]
    stack.clock.set(T0 + 2 * DAY + 1800)
    stack.koban.catch_up()
    await sweep_expiries(stack.store, latest_tick(stack.clock.now()))
    lot = await stack.store.load(L1)
    assert lot is not None and lot.options == []
    assert [(e.kind, e.third) for e in lot.echoes] == [("option_cancelled", P2)]
    await agree(stack)


async def test_many_outstanding_echoes_on_a_hot_lot_are_all_awaited(stack: Stack) -> None:
    """A backlog of webhooks leaves a hot lot with many echoes at once: none is dropped
    (the mixed load had 16 on a lot; the cap was 8, and the oldest echo's late webhook then
    withdrew a newer préréservation)."""
    body = {"thirdGuid": P1, **PRICE}
    assert (await stack.call("POST", f"lots/{L1}/prereservation", json=body)).status == 201
    answer = await stack.call(
        "POST", f"lots/{L1}/prereservation/withdrawal", json={"thirdGuid": P1}
    )
    assert answer.status == 200
    for _ in range(10):
        assert (await stack.place(L1, P2)).status == 201
        assert (await stack.cancel(L1, 1, P2)).status == 200
    body = {"thirdGuid": P2, **PRICE}
    assert (await stack.call("POST", f"lots/{L1}/prereservation", json=body)).status == 201
    lot = await stack.store.load(L1)
    assert lot is not None and len(lot.echoes) == 11
    for kind in ("option_placed", "option_cancelled", "reservation_withdrawn"):
        for fields in recorded(stack, kind):
            await deliver(stack, kind, fields)
    lot = await stack.store.load(L1)
    assert lot is not None and lot.config == "prereserved" and not lot.echoes
    await agree(stack)
