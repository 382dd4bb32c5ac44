"""Koban's option webhooks over real HTTP (loopback) against the real Redis of the test
session: option-placed, -cancelled, -prolonged, -expired, late and replayed ones, and any
webhook about a lot we do not know yet.
"""

from __future__ import annotations

import pytest

from service.usecases.sweep import sweep_expiries
from tests.support.webhooks_env import DAY, T0, A, Env, MakeEnv, X, Y, expired, placed, third_form


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()


# --- option-placed ------------------------------------------------------------------------


async def test_placed_for_an_unknown_lot_creates_it_and_marks_it_for_sync(env: Env) -> None:
    await env.hook("option-placed", **placed())
    lot = await env.lot()
    assert lot is not None and lot.guid == "guid-A101" and lot.status == "OPTION"
    (option,) = lot.options
    assert (option.holder, option.rank, option.deadline, option.source) == (
        X,
        1,
        T0 + 2 * DAY,
        "koban",
    )
    assert option.placed_at == T0 + 600
    assert await env.types() == ["lot.imported", "option.placed"]
    imported = (await env.store.history(A))[0]["data"]
    assert imported["actor"] == "koban" and imported["program"] is None
    assert await env.needsync() == {A}


async def test_a_placed_replay_ten_times_gives_one_event(env: Env) -> None:
    await env.store.import_lot(A, T0)
    for _ in range(10):
        await env.hook("option-placed", **placed())
    assert await env.types() == ["lot.imported", "option.placed"]
    assert len(await env.stream()) == 2
    assert await env.needsync() == set()  # imported by the service: no sync needed


async def test_a_late_placed_after_cancellation_does_not_bring_it_back(env: Env) -> None:
    await env.hook("option-placed", **placed())
    await env.hook("option-cancelled", **third_form())
    await env.hook("option-placed", **placed())
    lot = await env.lot()
    assert lot is not None and lot.options == [] and lot.status == "LIBRE"
    assert await env.types() == ["lot.imported", "option.placed", "option.cancelled"]


async def test_a_late_placed_for_an_api_option_cancelled_since_is_stale(env: Env) -> None:
    # Placed through the API (estimated deadline), cancelled before Koban's webhook came.
    await env.store.import_lot(A, T0)
    option = await env.store.place_local(A, X, None, T0 + 600)
    await env.store.cancel(A, 1, T0 + 900)
    await env.hook("option-placed", **placed(exp=T0 + 600 + 2 * DAY + 5))
    lot = await env.lot()
    assert lot is not None and lot.options == []
    assert option.source == "estimated"
    # A new option of the same third, placed after that one ended, is not stale.
    await env.hook("option-placed", **placed(exp=T0 + 900 + 2 * DAY))
    lot = await env.lot()
    assert lot is not None and [o.holder for o in lot.options] == [X]


async def test_placed_teaches_koban_deadline_for_an_option_placed_by_the_service(
    env: Env,
) -> None:
    await env.store.import_lot(A, T0)
    mine = await env.store.place_local(A, X, None, T0 + 600)
    koban = T0 + 2 * DAY + 3600  # on a tick: the effective expiry too
    for _ in range(3):
        await env.hook("option-placed", **placed(exp=koban))
    lot = await env.lot()
    assert lot is not None
    (option,) = lot.options
    assert option.id == mine.id
    assert (option.deadline, option.expiry, option.source) == (koban, koban, "koban")
    assert (await env.types())[-1] == "option.deadline_confirmed"
    assert (await env.types()).count("option.deadline_confirmed") == 1


async def test_placed_confirms_a_pending_intent_of_that_third(env: Env) -> None:
    await env.store.import_lot(A, T0)
    intent = await env.store.reserve_placement(A, X, None, T0 + 600)
    await env.hook("option-placed", **placed())
    lot = await env.lot()
    assert lot is not None and lot.intents == []
    (option,) = lot.options
    assert (option.holder, option.source, option.via_api) == (X, "koban", True)
    resolved = (await env.store.history(A))[-1]
    assert resolved["type"] == "koban.intent.resolved"
    assert resolved["data"]["intentId"] == intent.id


async def test_timestamps_in_milliseconds(env: Env) -> None:
    exp = T0 + 2 * DAY
    await env.hook("option-placed", **placed(exp=exp * 1000))
    lot = await env.lot()
    assert lot is not None and lot.options[0].deadline == exp


async def test_placed_identifies_an_opaque_placeholder(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.sync_status(A, "two_options", "OPTION", T0 + 600, rank1_end=T0 + DAY)
    await env.hook("option-placed", **placed(third=Y, rank="2"))
    lot = await env.lot()
    assert lot is not None
    assert [(o.rank, o.holder) for o in lot.options] == [(1, None), (2, Y)]
    assert (await env.store.history(A))[-1]["data"]["wasOpaque"] is True


async def test_placed_on_a_lot_that_cannot_take_it_records_drift_once(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, Y, None, 25000000, 500000, T0 + 600)
    for _ in range(3):
        await env.hook("option-placed", **placed())
    lot = await env.lot()
    assert lot is not None and lot.options == [] and lot.status == "PRERESV"
    history = await env.store.history(A)
    drifts = [e for e in history if e["type"] == "koban.sync.drift_detected"]
    assert len(drifts) == 1
    assert drifts[0]["data"]["reason"] == "option_not_placeable"
    assert drifts[0]["data"]["code"] == "LOT_PRERESERVED"
    assert await env.needsync() == {A}


# --- option-cancelled, option-prolonged ---------------------------------------------------


async def test_cancelled_applies_to_the_third_option_whatever_the_rank(env: Env) -> None:
    await env.hook("option-placed", **placed(third=X))
    await env.hook("option-placed", **placed(third=Y, rank="2"))
    await env.hook("option-cancelled", **third_form(X, rank="2"))  # rank: a hint only
    lot = await env.lot()
    assert lot is not None and [(o.rank, o.holder) for o in lot.options] == [(1, Y)]
    before = await env.types()
    await env.hook("option-cancelled", **third_form(X))  # replay: nothing active
    assert await env.types() == before


async def test_prolonged_sets_prgdate_as_the_deadline_once(env: Env) -> None:
    await env.hook("option-placed", **placed())
    until = T0 + 4 * DAY + 900
    form = {**third_form(), "ExpDate": str(T0 + 2 * DAY), "PrgDate": str(until * 1000)}
    for _ in range(5):
        await env.hook("option-prolonged", **form)
    lot = await env.lot()
    assert lot is not None
    (option,) = lot.options
    assert (option.deadline, option.expiry, option.prolonged) == (until, T0 + 4 * DAY + 1800, True)
    assert (await env.types()).count("option.prolonged") == 1
    # A prolongation for a third with nothing active: 200, no change.
    await env.hook("option-prolonged", **{**form, "Third_Guid": Y})
    assert (await env.types()).count("option.prolonged") == 1


async def test_a_prolongation_refused_locally_is_applied_with_drift(env: Env) -> None:
    await env.hook("option-placed", **placed())
    first = {**third_form(), "PrgDate": str(T0 + 3 * DAY)}
    await env.hook("option-prolonged", **first)
    await env.hook("option-prolonged", **{**first, "PrgDate": str(T0 + 4 * DAY)})
    lot = await env.lot()
    assert lot is not None and lot.options[0].deadline == T0 + 4 * DAY
    last = (await env.store.history(A))[-1]
    assert last["type"] == "koban.sync.drift_detected"
    assert last["data"]["code"] == "ALREADY_PROLONGED"


# --- option-expired -----------------------------------------------------------------------


async def test_expired_after_the_local_sweep_is_a_no_op(env: Env) -> None:
    env.clock.set(T0 - 3600)
    await env.hook("option-placed", **placed(exp=T0 - 60))  # effective expiry T0
    await sweep_expiries(env.store, T0)
    before = await env.types()
    assert before[-1] == "option.expired"
    env.clock.set(T0 + 120)
    await env.hook("option-expired", **expired())
    assert await env.types() == before


async def test_expired_before_the_local_expiry_expires_as_of_the_tick_with_drift(
    env: Env,
) -> None:
    env.clock.set(T0 - 3600)
    await env.hook("option-placed", **placed(third=X, exp=T0 + 2 * DAY))
    await env.hook("option-placed", **placed(third=Y, rank="2", exp=T0 + 2 * DAY + 60))
    env.clock.set(T0 + 300)
    for _ in range(3):
        await env.hook("option-expired", **expired(X))
    lot = await env.lot()
    assert lot is not None and [(o.rank, o.holder) for o in lot.options] == [(1, Y)]
    history = await env.store.history(A)
    tail = [(e["type"].removeprefix("koban."), e["time"]) for e in history[-3:]]
    assert tail == [
        ("option.expired", "2026-03-02T10:00:00Z"),
        ("option.promoted", "2026-03-02T10:00:00Z"),
        ("sync.drift_detected", "2026-03-02T10:05:00Z"),
    ]
    drift = history[-1]["data"]
    assert drift["reason"] == "expired_by_koban_earlier"
    assert drift["actor"] == "koban"
    assert drift["localExpiry"] == "2026-03-04T10:00:00Z"
    assert drift["kobanTick"] == "2026-03-02T10:00:00Z"
    assert drift["optionId"] == history[-3]["data"]["optionId"]
    assert len(history) == 6  # imported, 2 placed, expired, promoted, drift: once


async def test_expired_for_an_option_placed_after_the_latest_tick_is_stale(env: Env) -> None:
    env.clock.set(T0 + 60)
    await env.hook("option-placed", **placed())
    env.clock.set(T0 + 600)
    before = await env.types()
    await env.hook("option-expired", **expired())
    assert await env.types() == before
    lot = await env.lot()
    assert lot is not None and [o.holder for o in lot.options] == [X]


# --- the other webhooks about unknown lots ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "form"),
    [
        ("option-cancelled", third_form()),
        ("option-prolonged", {**third_form(), "PrgDate": str(T0 + 3 * DAY)}),
        ("option-expired", expired()),
        ("reservation-withdrawn", {"Deal_Extcode": A, "Deal_Guid": "guid-A101"}),
    ],
)
async def test_any_webhook_about_an_unknown_lot_creates_it(
    env: Env, name: str, form: dict[str, str]
) -> None:
    await env.hook(name, **form)
    lot = await env.lot()
    assert lot is not None and lot.status == "LIBRE"
    assert await env.types() == ["lot.imported"]
    assert await env.needsync() == {A}
