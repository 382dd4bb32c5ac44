"""The Koban doc's own tables, row by row, against the sandbox over HTTP.

Written from /work/shared/reference/koban-immobilier-api-current.md (sections Options,
Dossier de réservation and their webhooks), independently of the statecharts: every
expected value below is a literal read from the doc (or, for EndDate, computed by hand
from the sandbox's configured lifetime), and every row sets the sandbox up through its
HTTP API only (ncThird/PostOne, ncOption/*, ncPreresv/*, and the `/_sandbox/` controls
that stand for actions made in Koban's UI), on the demo stock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.sandbox_harness import T0, Harness, running_sandbox

# An option placed at T0 (2027-01-15T08:10:00Z) lives two days (the sandbox's lifetime):
# deadline 2027-01-17T08:10:00Z, and Koban expires options at :00/:30, so at 08:30:00Z.
END_OF_OPTION_PLACED_AT_T0 = 1_800_174_600
THREE_DAYS_LATER = T0 + 3 * 86_400


@dataclass(frozen=True)
class Step:
    """One HTTP call: `api` = Koban's API (`/api/v1/<target>`), `ui` = a `/_sandbox/` control."""

    kind: str
    verb: str
    target: str
    body: dict[str, Any] | None = None
    params: dict[str, Any] | None = None


def add(extcode: str, third: str, rank: int | None = None) -> Step:
    body: dict[str, Any] = {"Third": {"Guid": third}, "Deal": {"Extcode": extcode}}
    if rank is not None:
        body["Rank"] = rank
    body["DateOption"] = T0
    return Step("api", "POST", "ncOption/Add", body)


def lot_status(extcode: str) -> Step:
    return Step("api", "GET", "ncOption/GetLotStatus", params={"extcode": extcode})


def prolong(extcode: str, rank: int, date: int = THREE_DAYS_LATER) -> Step:
    body = {"Deal": {"Extcode": extcode}, "Rank": rank, "DateProlongation": date}
    return Step("api", "POST", "ncOption/Prolong", body)


def undo(extcode: str, rank: int) -> Step:
    return Step("api", "POST", "ncOption/Undo", {"Deal": {"Extcode": extcode}, "Rank": rank})


def preresv(extcode: str, third: str) -> Step:
    body = {
        "Deal": {"Extcode": extcode},
        "Third": {"Guid": third},
        "PrixVente": 250000.00,
        "Garantie": 5000.00,
    }
    return Step("api", "POST", "ncPreresv/Add", body)


def desist(extcode: str, third: str) -> Step:
    body = {"Deal": {"Extcode": extcode}, "Third": {"Guid": third}}
    return Step("api", "POST", "ncPreresv/Desist", body)


def koban_ui_status(extcode: str, status: str) -> Step:
    return Step("ui", "POST", f"lots/{extcode}/status", {"status": status})


def koban_ui(path: str, body: dict[str, Any] | None = None) -> Step:
    return Step("ui", "POST", path, body if body is not None else {})


def settings(**values: Any) -> Step:
    return Step("ui", "POST", "settings", values)


# Thirds named "$A", "$B", "$C" are created with ncThird/PostOne at the start of each row.
THIRDS = ("$A", "$B", "$C")
LOT, LOT2, LOT3, LOT4 = "HAR-A101", "HAR-A103", "HAR-A104", "HAR-A105"
OK = {"success": True}


def refused(code: str) -> dict[str, Any]:
    return {"success": False, "errorcode": code}


@dataclass(frozen=True)
class Row:
    id: str
    setup: tuple[Step, ...]
    call: Step
    expect: dict[str, Any]  # keys the answer must have with exactly these values


ROWS: tuple[Row, ...] = (
    # --- ncOption/GetLotStatus: "Les résultats possibles sont les suivants"
    Row("GetLotStatus 0: no option, placement possible", (), lot_status(LOT), {"Result": 0}),
    Row(
        "GetLotStatus 1 + MaxRank 1: one rank-1 option, EndDate = its expiry",
        (add(LOT, "$A", 1),),
        lot_status(LOT),
        {"Result": 1, "MaxRank": 1, "EndDate": END_OF_OPTION_PLACED_AT_T0},
    ),
    Row(
        "GetLotStatus -3: already two options on the lot (the sandbox's default answer)",
        (add(LOT, "$A", 1), add(LOT, "$B", 2)),
        lot_status(LOT),
        {"Result": -3, "MaxRank": 2},
    ),
    Row(
        "GetLotStatus 1 + MaxRank 2: two options (the doc's other spelling, when configured)",
        (settings(twoOptionsResult=1), add(LOT, "$A", 1), add(LOT, "$B", 2)),
        lot_status(LOT),
        {"Result": 1, "MaxRank": 2},
    ),
    Row("GetLotStatus -1: lot unknown in Koban", (), lot_status("NO-SUCH-LOT"), {"Result": -1}),
    Row(
        "GetLotStatus -2: lot pre-reserved",
        (preresv(LOT, "$A"),),
        lot_status(LOT),
        {"Result": -2},
    ),
    # --- ncOption/Add: success and errorcode 01..05
    Row("Add: success", (), add(LOT, "$A", 1), OK),
    Row(
        "Add 01: the prospect already has 3 options",
        (add(LOT, "$A"), add(LOT2, "$A"), add(LOT3, "$A")),
        add(LOT4, "$A"),
        refused("01"),
    ),
    Row(
        "Add 02: lot not LIBRE or OPTION (reserved)",
        (koban_ui_status(LOT, "RESV"),),
        add(LOT, "$A", 1),
        refused("02"),
    ),
    Row(
        "Add 02: lot not LIBRE or OPTION (blocked)",
        (koban_ui_status(LOT, "BLOQUE"),),
        add(LOT, "$A", 1),
        refused("02"),
    ),
    Row(
        "Add 02: lot not LIBRE or OPTION (sold, Result WON)",
        (koban_ui_status(LOT, "sold"),),
        add(LOT, "$A", 1),
        refused("02"),
    ),
    Row(
        "Add 03: the API user reached its limit of simultaneous options",
        (settings(maxOptionsPerUser=1), add(LOT, "$A")),
        add(LOT2, "$B"),
        refused("03"),
    ),
    Row(
        "Add 04: a pre-reservation is in progress on the lot",
        (preresv(LOT, "$A"),),
        add(LOT, "$B", 1),
        refused("04"),
    ),
    Row(
        "Add 05: two options already on the lot",
        (add(LOT, "$A", 1), add(LOT, "$B", 2)),
        add(LOT, "$C"),
        refused("05"),
    ),
    # --- ncOption/Prolong: success, 01 not found, 02 already prolonged
    Row("Prolong: success", (add(LOT, "$A", 1),), prolong(LOT, 1), OK),
    Row("Prolong 01: no option on the lot", (), prolong(LOT, 1), refused("01")),
    Row("Prolong 01: no option at that rank", (add(LOT, "$A", 1),), prolong(LOT, 2), refused("01")),
    Row(
        "Prolong 02: already prolonged",
        (add(LOT, "$A", 1), prolong(LOT, 1)),
        prolong(LOT, 1, THREE_DAYS_LATER + 86_400),
        refused("02"),
    ),
    # --- ncOption/Undo: success, 01 not found
    Row("Undo: success", (add(LOT, "$A", 1),), undo(LOT, 1), OK),
    Row("Undo 01: no option on the lot", (), undo(LOT, 1), refused("01")),
    Row("Undo 01: no option at that rank", (add(LOT, "$A", 1),), undo(LOT, 2), refused("01")),
    # --- ncPreresv/Add: success, 01 lot unknown, 02 prospect unknown
    Row("Preresv Add: success", (), preresv(LOT, "$A"), OK),
    Row("Preresv Add 01: lot does not exist", (), preresv("NO-SUCH-LOT", "$A"), refused("01")),
    Row("Preresv Add 02: prospect does not exist", (), preresv(LOT, "nobody"), refused("02")),
    # --- ncPreresv/Desist: success, 01 lot unknown, 02 prospect unknown
    Row("Desist: success", (preresv(LOT, "$A"),), desist(LOT, "$A"), OK),
    Row("Desist 01: lot does not exist", (), desist("NO-SUCH-LOT", "$A"), refused("01")),
    Row(
        "Desist 02: prospect does not exist",
        (preresv(LOT, "$A"),),
        desist(LOT, "nobody"),
        refused("02"),
    ),
)


# The doc's webhook tables, parameter by parameter, in the doc's order.
DOC_WEBHOOK_FIELDS: dict[str, tuple[str, ...]] = {
    # "Après la pose d'option"
    "option_placed": (
        "Deal_Extcode",
        "Deal_Guid",
        "Third_Extcode",
        "Third_Guid",
        "Rank",
        "ExpDate",
        "Third_Name",
        "Third_FirstName",
        "Third_EMail",
        "AssignedTo_Name",
        "AssignedTo_FirstName",
        "AssignedTo_EMail",
    ),
    # "Après une annulation d'option"
    "option_cancelled": ("Deal_Extcode", "Deal_Guid", "Third_Extcode", "Third_Guid", "Rank"),
    # "Après une prolongation d'option"
    "option_prolonged": (
        "Deal_Extcode",
        "Deal_Guid",
        "Third_Extcode",
        "Third_Guid",
        "Rank",
        "ExpDate",
        "PrgDate",
    ),
    # "Expiration d'option"
    "option_expired": ("Deal_Extcode", "Deal_Guid", "Third_Extcode", "Third_Guid"),
    # "Validation d'un dossier de réservation"
    "reservation_validated": tuple(
        [
            "Lot_Code",
            "Vendeur_Groupe",
            "Res1Genre",
            "_id",
            "DealId",
            "ThirdId",
            "PrixVente",
            "Garantie",
            "AssignedToId",
            "OptionId",
            "PreresaDate",
            "Annexe1_cent",
            "Annexe2_cent",
            "Annexe3_cent",
            "Annexe4_cent",
            "Annexe5_cent",
            "DealProcessId",
            "Res1Nom",
            "Res1Prenom",
            "Res1DateNaissance",
            "CanalOrigine_sId",
            "CanalOrigine_Label",
            "Res1NomSCI",
            "Res1Adr_Street",
            "Res1Adr_Complement",
            "Res1Adr_ZipCode",
            "Res1Adr_City",
            "Res1Phone",
            "Res1Mail",
            "Res2",
            "Res2Nom",
            "Res2Prenom",
            "Res2Phone",
            "Res2Mail",
            "AutreParking",
            "Options",
            "FraisNotaireMontant_cent",
            "Apport_cent",
            "PretImmo1_cent",
            "TVA",
            "PretImmo2_cent",
            "CanalVente_Label",
            "Res1Profession_Label",
            "Res2DateNaissance",
            "Res2Profession_Label",
            "Res2Adr_Street",
            "Res2Adr_ZipCode",
            "Res2Adr_City",
            "FraisNotaireOffert",
            "NatureAchat_Label",
            "PlusieursPrets",
            "PTZ",
            "PTZMontant_cent",
            "AssignedTo_Name",
            "AssignedTo_FirstName",
            "AssignedTo_EMail",
        ]
    ),
    # "Désistement d'un dossier de réservation"
    "reservation_withdrawn": ("Deal_Extcode", "Deal_Guid"),
}


@dataclass(frozen=True)
class HookRow:
    kind: str
    trigger: tuple[Step, ...]
    identity: dict[str, str]  # fields whose value the row knows ("$A": the created third)


HOOK_ROWS: tuple[HookRow, ...] = (
    HookRow(
        "option_placed",
        (add(LOT, "$A", 1),),
        {
            "Deal_Extcode": LOT,
            "Third_Guid": "$A",
            "Rank": "1",
            "ExpDate": str(END_OF_OPTION_PLACED_AT_T0),
            "Third_Name": "Doc-$A",
        },
    ),
    HookRow(
        "option_cancelled",
        (add(LOT, "$A", 1), undo(LOT, 1)),
        {"Deal_Extcode": LOT, "Third_Guid": "$A", "Rank": "1"},
    ),
    HookRow(
        "option_prolonged",
        (add(LOT, "$A", 1), prolong(LOT, 1)),
        {"Deal_Extcode": LOT, "Third_Guid": "$A", "Rank": "1", "PrgDate": str(THREE_DAYS_LATER)},
    ),
    HookRow(
        "option_expired",
        (add(LOT, "$A", 1), koban_ui("clock", {"advanceBy": "P3D"})),
        {"Deal_Extcode": LOT, "Third_Guid": "$A"},
    ),
    HookRow(
        "reservation_validated",
        (preresv(LOT, "$A"), koban_ui(f"lots/{LOT}/reservation")),
        {"Lot_Code": LOT, "ThirdId": "$A", "PrixVente": "250000.00", "Garantie": "5000.00"},
    ),
    HookRow(
        "reservation_withdrawn",
        (preresv(LOT, "$A"), desist(LOT, "$A")),
        {"Deal_Extcode": LOT},
    ),
)


@pytest.fixture
async def sandbox() -> AsyncIterator[Harness]:
    async with running_sandbox(demo=True) as harness:
        yield harness


def _resolve(value: Any, thirds: dict[str, str]) -> Any:
    if isinstance(value, str):
        return thirds.get(value, value)
    if isinstance(value, dict):
        return {k: _resolve(v, thirds) for k, v in value.items()}
    return value


async def _run(sb: Harness, step: Step, thirds: dict[str, str]) -> tuple[int, Any]:
    body = _resolve(step.body, thirds)
    if step.kind == "ui":
        return await sb.control(step.verb, step.target, body)
    return await sb.koban(step.target, body, params=step.params)


async def _fresh_thirds(sb: Harness) -> dict[str, str]:
    return {name: await sb.post_third(f"Doc-{name}") for name in THIRDS}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_doc_result_and_error_codes(sandbox: Harness, row: Row) -> None:
    thirds = await _fresh_thirds(sandbox)
    for step in row.setup:
        status, answer = await _run(sandbox, step, thirds)
        assert status in (200, 201), (step, answer)
        if isinstance(answer, dict) and "success" in answer:
            assert answer["success"] is True, (step, answer)
    status, answer = await _run(sandbox, row.call, thirds)
    assert status == 200
    assert {k: answer.get(k) for k in row.expect} == row.expect, answer
    if answer.get("success") is False:
        assert isinstance(answer.get("message"), str) and answer["message"]


@pytest.mark.parametrize("row", HOOK_ROWS, ids=[r.kind for r in HOOK_ROWS])
async def test_doc_webhook_fields(sandbox: Harness, row: HookRow) -> None:
    thirds = await _fresh_thirds(sandbox)
    for step in row.trigger:
        status, answer = await _run(sandbox, step, thirds)
        assert status == 200, (step, answer)
    receiver = await sandbox.delivered()
    # Only this row's lot: the demo stock's own options expire too when the clock moves.
    calls = [
        c
        for c in receiver.of(row.kind)
        if LOT in (c.form.get("Deal_Extcode"), c.form.get("Lot_Code"))
    ]
    assert len(calls) == 1, [c.kind for c in receiver.calls]
    (call,) = calls
    assert call.method == "POST"
    assert call.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert [name for name, _ in call.fields] == list(DOC_WEBHOOK_FIELDS[row.kind])
    expected = {k: thirds.get(v, v) for k, v in row.identity.items()}
    assert {k: call.form[k] for k in expected} == expected
    # The lot's Koban Guid is the one ncDeal/GetUpdated lists.
    _, page = await sandbox.koban("ncDeal/GetUpdatedProcess", params={"processcode": "HAR"})
    guid = next(x["Guid"] for x in page["List"] if x["Extcode"] == LOT)
    assert call.form.get("Deal_Guid", call.form.get("DealId")) == guid
