"""Koban's reservation webhooks (reservation-validated, -withdrawn) and its pre-check
(GET option-check), over real HTTP against the real Redis of the test session.
"""

from __future__ import annotations

import pytest

from service.entrypoints.koban_webhooks import TOKEN_HEADER
from tests.support.webhooks_env import DAY, SECRET, T0, A, Env, MakeEnv, X, Y, placed


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()


# --- reservation --------------------------------------------------------------------------


def validated(third: str = X) -> dict[str, str]:
    """A reservation-validated form with a handful of the doc's many fields."""
    return {
        "Lot_Code": A,
        "Vendeur_Groupe": "Groupe",
        "Res1Genre": "M",
        "_id": "preresa-guid",
        "DealId": "guid-A101",
        "ThirdId": third,
        "PrixVente": "250000.00",
        "Garantie": "5000.00",
        "OptionId": "",
        "PreresaDate": str(T0),
        "Res1Nom": "Dupont",
        "AssignedTo_EMail": "paul@example.org",
    }


async def test_reservation_validated_from_prereserved(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, X, None, 25000000, 500000, T0 + 600)
    for _ in range(3):
        await env.hook("reservation-validated", **validated())
    lot = await env.lot()
    assert lot is not None and lot.status == "RESV"
    assert await env.types() == ["lot.imported", "lot.prereserved", "lot.reserved"]


async def test_reservation_validated_without_prereservation_records_drift(env: Env) -> None:
    await env.hook("option-placed", **placed(third=Y))
    await env.hook("reservation-validated", **validated())
    lot = await env.lot()
    assert lot is not None and lot.status == "RESV" and lot.options == []
    history = await env.store.history(A)
    assert [e["type"].removeprefix("koban.") for e in history[-3:]] == [
        "option.superseded",
        "lot.reserved",
        "sync.drift_detected",
    ]
    assert history[-2]["data"]["thirdGuid"] == X


async def test_a_late_validated_after_withdrawal_does_not_reserve_again(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, X, None, 25000000, 500000, T0 + 600)
    await env.hook("reservation-validated", **validated())
    await env.hook("reservation-withdrawn", Deal_Extcode=A, Deal_Guid="guid-A101")
    await env.hook("reservation-validated", **validated())
    lot = await env.lot()
    assert lot is not None and lot.status == "LIBRE"
    reserved = [e for e in await env.store.history(A) if e["type"] == "koban.lot.reserved"]
    assert len(reserved) == 1 and reserved[0]["data"]["prereservationGuid"] == "preresa-guid"


async def test_reservation_withdrawn(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, X, None, 25000000, 500000, T0 + 600)
    form = {"Deal_Extcode": A, "Deal_Guid": "guid-A101"}
    for _ in range(3):
        await env.hook("reservation-withdrawn", **form)
    lot = await env.lot()
    assert lot is not None and lot.status == "LIBRE" and lot.prereservation is None
    assert (await env.types()).count("lot.withdrawn") == 1


# --- pre-check ----------------------------------------------------------------------------


async def test_option_check(env: Env) -> None:
    assert await env.check() == {"status": True, "rank": None}  # not imported yet
    await env.store.import_lot(A, T0)
    assert await env.check() == {"status": True, "rank": 1}
    await env.hook("option-placed", **placed())
    assert await env.check() == {"status": True, "rank": 2}
    intent = await env.store.reserve_placement(A, Y, None, T0 + 600)
    assert await env.check() == {"status": False, "rank": None}  # pending intent
    await env.store.confirm_placement(A, intent.id, T0 + 600)
    assert await env.check() == {"status": False, "rank": None}  # two options
    # Lazy expiry: at the tick both are due, the lot is free again as of the clock.
    env.clock.set(T0 + 2 * DAY + 1800)
    assert await env.check() == {"status": True, "rank": 1}


async def test_option_check_on_a_prereserved_lot(env: Env) -> None:
    await env.store.import_lot(A, T0)
    await env.store.prereserve(A, X, None, 25000000, 500000, T0 + 600)
    assert await env.check() == {"status": False, "rank": None}


async def test_option_check_needs_extcode_and_the_secret(env: Env) -> None:
    resp = await env.client.get(env.url("option-check"), headers={TOKEN_HEADER: SECRET})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "MALFORMED_REQUEST"
    resp = await env.client.get(env.url("option-check"), params={"extcode": A})
    assert resp.status == 401
