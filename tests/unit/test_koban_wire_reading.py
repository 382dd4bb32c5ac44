"""How the service reads Koban's wire: the one date parser (API answers and webhook forms),
the option-prolonged webhook's two dates, GetAll's processes named by Extcode."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from service.koban.webhook_forms import OptionPlacedForm
from service.koban.wire import from_unix, koban_instant, parse_programs
from statecharts.webhook_rules import prolonged_deadline

T = int(datetime(2026, 11, 23, 10, 7, tzinfo=UTC).timestamp())  # between two ticks
TICK = T + 23 * 60  # 10:30


@pytest.mark.parametrize(
    "value",
    [
        T,
        float(T),
        str(T),
        T * 1000,
        str(T * 1000),
        f"/Date({T * 1000})/",
        f"/Date({T * 1000}+0100)/",
        "2026-11-23T10:07:00",
        "2026-11-23T10:07:00Z",
        "2026-11-23T11:07:00+01:00",
    ],
)
def test_every_form_koban_writes_reads_as_one_instant(value: object) -> None:
    assert from_unix(value) == T


@pytest.mark.parametrize("value", [None, "", "  ", "/Date(-62135596800000)/"])
def test_no_date(value: object) -> None:
    assert koban_instant(value) is None


@pytest.mark.parametrize("value", ["tomorrow", "nan", "\u0661\u0667\u0669", "2026-13-01", [1]])
def test_not_a_date(value: object) -> None:
    with pytest.raises(ValueError):
        koban_instant(value)


def _placed(exp: str) -> OptionPlacedForm:
    form = {"Deal_Extcode": "A1", "Third_Guid": "p1", "ExpDate": exp}
    return OptionPlacedForm.model_validate(form)


def test_webhook_forms_use_the_same_parser_rounding_up() -> None:
    assert _placed(f"/Date({T * 1000 + 1})/").exp_date == T + 1
    assert _placed("2026-11-23T10:07:00").exp_date == T
    with pytest.raises(ValidationError):
        _placed("/Date(-62135596800000)/")  # "no date" where one is required


def test_prgdate_is_the_deadline_unless_expdate_ticks_later() -> None:
    assert prolonged_deadline(T, None) == T
    assert prolonged_deadline(T, TICK) == T  # same tick: PrgDate is the deadline
    later = TICK + 2 * 86400
    assert prolonged_deadline(T, later) == later  # PrgDate was the moment of prolongation
    assert prolonged_deadline(later, TICK) == later  # an older ExpDate: PrgDate stands


def test_programmes_are_named_by_extcode_and_an_unnamed_one_is_left_out() -> None:
    listed = [
        {"Label": "Harmonie", "Extcode": "HAR", "Guid": "g1", "IsActive": True},
        {"Label": "Six", "Extcode": 6},
        {"Label": "No code"},
    ]
    assert [(p.code, p.label) for p in parse_programs(listed)] == [
        ("HAR", "Harmonie"),
        ("6", "Six"),
    ]
