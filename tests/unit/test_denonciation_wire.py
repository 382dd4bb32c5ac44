"""The dénonciation and AddValid wire shapes (pure): what is sent, how answers are read."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from service.koban.add_valid import add_valid_body
from service.koban.denonciation import Contact, denonciation_body, parse_check
from service.usecases.denonciation import ALREADY_DENOUNCED, MODULE_DISABLED, refusal_reason


def test_the_check_and_create_bodies() -> None:
    contact = Contact("Martin", first_name="Alice", email="a@x.fr", mobile="0600000000")
    assert denonciation_body("HAR", contact) == {
        "Name": "Martin",
        "FirstName": "Alice",
        "EMail": "a@x.fr",
        "Cell": "0600000000",
        "Process": {"Code": "HAR"},
    }
    assert denonciation_body("HAR", Contact("Martin"), by="cgp-1") == {
        "Name": "Martin",
        "Process": {"Code": "HAR"},
        "By": "cgp-1",
    }


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"Activated": True, "IsDenonced": False, "Exists": True}, (True, False, True)),
        ({"activated": "false", "isdenonced": "0"}, (False, False, False)),
        ({"Success": True, "Result": {"ACTIVATED": 1, "IsDenonced": "true"}}, (True, True, False)),
    ],
)
def test_the_check_answer_is_read_in_any_case_bare_or_wrapped(
    payload: dict[str, object], expected: tuple[bool, bool, bool]
) -> None:
    check = parse_check(payload)
    assert (check.activated, check.is_denounced, check.exists) == expected


@pytest.mark.parametrize("payload", [[], "yes", {"Exists": True}, {"Result": {}}])
def test_an_answer_without_activated_is_unreadable(payload: object) -> None:
    with pytest.raises(ValueError):
        parse_check(payload)


def test_the_refusal_reasons_in_the_doc_s_order() -> None:
    assert refusal_reason(parse_check({"Activated": False, "IsDenonced": True})) == MODULE_DISABLED
    assert refusal_reason(parse_check({"Activated": True, "IsDenonced": True})) == ALREADY_DENOUNCED
    assert refusal_reason(parse_check({"Activated": True, "Exists": True})) is None


def test_add_valid_writes_each_kind_as_koban_reads_it() -> None:
    body = add_valid_body(
        "A1",
        {
            "third_guid": "g",
            "price_cents": 25000050,
            "deposit_cents": 100,
            "preresa_date": 1_800_000_000,
            "res1_date_naissance": date(1980, 2, 29),
            "annexe2_cents": 7,
            "res2": True,
            "ptz": False,
            "tva": Decimal("5.5"),
            "res1_nom": "Martin",
            "options": None,
        },
    )
    assert body == {
        "Deal": {"Extcode": "A1"},
        "ThirdId": "g",
        "PrixVente": 250000.5,
        "Garantie": 1.0,
        "PreresaDate": 1_800_000_000,
        "Res1DateNaissance": "1980-02-29",
        "Annexe2_cent": 7,
        "Res2": "O",
        "PTZ": "N",
        "TVA": 5.5,
        "Res1Nom": "Martin",
    }
