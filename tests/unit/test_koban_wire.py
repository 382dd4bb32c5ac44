"""Koban's wire models and refusal codes, without a server: statuses as strings or objects,
derived flags, conversions, codes normalised."""

from __future__ import annotations

import pytest

from service.koban import wire
from service.koban.client import (
    REFUSAL_FALLBACK,
    KobanMethod,
    koban_refusal,
)
from service.koban.wire import KobanAnswer, KobanLot
from statecharts.errors import ErrorCode

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_refusal_mapping_normalises_codes_and_falls_back() -> None:
    assert koban_refusal("add", "5") == ErrorCode.LOT_FULL
    assert koban_refusal("Preresv", "02") == ErrorCode.PROSPECT_UNKNOWN
    assert koban_refusal("Desist", "1") == ErrorCode.LOT_UNKNOWN
    for method in KobanMethod:
        assert koban_refusal(method, "99") == REFUSAL_FALLBACK[method]
        assert koban_refusal(method, None) == REFUSAL_FALLBACK[method]
    with pytest.raises(ValueError):
        koban_refusal("Frobnicate", "01")


def test_lots_parse_status_string_or_object_and_the_derived_flags() -> None:
    page = wire.DealPage.model_validate(
        {
            "length": 3,
            "list": [
                {
                    "Guid": "g1",
                    "Extcode": "A101",
                    "Label": "T3 balcon",
                    "Status": "libre",
                    "Result": None,
                    "Process": {"Code": "PRG1", "Label": "Les Tilleuls", "Guid": "p1"},
                    "Amountprev": 215000.5,
                    "Type": None,
                    "Link": None,
                    "Updated": T0 * 1000 + 999,
                },
                {
                    "guid": "g2",
                    "extcode": 102,
                    "status": {"Code": "OPTION", "Label": "Optionné"},
                    "result": "won",
                    "type": "SECONDARY",
                    "link": "g1",
                    "updated": str(T0),
                },
                {"GUID": "g3", "EXTCODE": "A103", "STATUS": {"code": "VENDU_NOTAIRE"}},
            ],
        }
    )
    first, second, third = page.items
    assert first == KobanLot(
        guid="g1",
        extcode="A101",
        label="T3 balcon",
        status="LIBRE",
        custom=False,
        won=False,
        program_code="PRG1",
        program_label="Les Tilleuls",
        amount=215000.5,
        secondary=False,
        link=None,
        updated=T0,
    )
    assert first.amount_cents == 21_500_050
    assert (second.extcode, second.status, second.won, second.secondary, second.link) == (
        "102",
        "OPTION",
        True,
        True,
        "g1",
    )
    assert second.updated == T0
    assert (third.status, third.custom, third.updated) == ("VENDU_NOTAIRE", True, None)


def test_wire_conversions() -> None:
    assert wire.to_unix(T0) == T0
    with pytest.raises(ValueError):
        wire.to_unix(T0 * 1000)  # milliseconds are a caller bug
    with pytest.raises(TypeError):
        wire.to_unix(float(T0))  # type: ignore[arg-type]
    assert wire.from_unix(T0 * 1000) == T0
    assert wire.from_unix(f"/Date({T0 * 1000})/") == T0
    assert wire.from_unix("2026-01-01T00:00:00Z") == T0
    assert wire.from_unix("") is None
    assert wire.cents_to_euros(25_000_000) == 250000.0
    assert wire.cents_to_euros(1) == 0.01
    assert wire.normalise_error_code(5) == "05"
    assert wire.normalise_error_code(" 5 ") == "05"
    assert wire.normalise_error_code("") is None
    answer = KobanAnswer.model_validate({"success": True, "guid": "abc", "Extra": 1})
    assert answer == KobanAnswer(success=True, error_code=None, message=None, guid="abc")
