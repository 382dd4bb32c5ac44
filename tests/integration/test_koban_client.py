"""KobanClient against scripted Koban servers on 127.0.0.1 (tests/support/koban_scripted.py):
what every call sends and how it reads the answers: shapes, refusals and their codes, dates,
paging, posting a third and the prospect lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from service.koban import wire
from service.koban.client import (
    KobanClient,
    KobanError,
    KobanOutcomeUnknown,
    KobanUnavailable,
    koban_refusal,
)
from service.koban.wire import KobanAnswer, LotStatus
from statecharts.errors import ErrorCode
from tests.support.koban_client_env import (
    API_KEY,
    T0,
    USER_KEY,
    FakeSleep,
)
from tests.support.koban_scripted import (
    ADD,
    DESIST,
    FREE,
    LOT_STATUS,
    OK,
    PRERESV,
    PROGRAMS,
    PROLONG,
    THIRD,
    THIRD_BY_KEY,
    UNDO,
    UPDATED,
    UPDATED_PROCESS,
    Reply,
    ScriptedKoban,
    Seen,
)

# ------------------------------------------------------------------ every method, headers


async def test_every_call_carries_both_keys_and_the_documented_shapes(
    koban: ScriptedKoban, client: KobanClient
) -> None:
    koban.script("GET", LOT_STATUS, FREE)
    for path in (ADD, PROLONG, UNDO, PRERESV, DESIST):
        koban.script("POST", path, OK)
    koban.script("POST", THIRD, Reply(json={"Success": True, "Result": "g-new"}))
    koban.script("GET", UPDATED, Reply(json={"Length": 0, "List": []}))
    koban.script("GET", UPDATED_PROCESS, Reply(json={"Length": 0, "List": []}))
    koban.script("GET", PROGRAMS, Reply(json=[{"Guid": "p1", "Extcode": "PRG1", "Label": "One"}]))

    assert await client.get_lot_status("A101") == LotStatus(result=0, max_rank=0, end_date=None)
    assert (await client.add_option("A101", "third-1", 1, T0)).success
    assert (await client.add_option("A101", "third-1", 2, T0, partner_guid="cgp-1")).success
    assert (await client.prolong_option("A101", 1, T0 + 86400)).success
    assert (await client.undo_option("A101", 2)).success
    assert (await client.add_prereservation("A101", "third-1", 25_000_000, 500_050)).success
    assert (await client.desist("A101", "third-1")).success
    assert await client.post_third("Durand", "Anne", "anne@example.com", "0600000000") == "g-new"
    pages = [p async for p in client.get_updated(T0)]
    pages += [p async for p in client.get_updated(T0, process_code="PRG1")]
    assert [(p.length, p.items) for p in pages] == [(0, []), (0, [])]
    programs = await client.get_programs()
    assert [(p.guid, p.code, p.label) for p in programs] == [("p1", "PRG1", "One")]

    assert len(koban.seen) == 11
    for seen in koban.seen:
        assert seen.headers["X-ncApi"] == API_KEY
        assert seen.headers["X-ncUser"] == USER_KEY
        assert seen.headers["Accept"] == "application/json"

    by_path: dict[str, list[Seen]] = {}
    for seen in koban.seen:
        by_path.setdefault(seen.path, []).append(seen)
    assert by_path[LOT_STATUS][0].query == {"extcode": "A101"}
    add1, add2 = by_path[ADD]
    assert add1.body == {
        "Third": {"Guid": "third-1"},
        "Deal": {"Extcode": "A101"},
        "DateOption": T0,
        "Rank": 1,
    }
    assert add2.body["Part"] == {"Guid": "cgp-1"} and add2.body["Rank"] == 2
    assert by_path[PROLONG][0].body == {
        "Deal": {"Extcode": "A101"},
        "Rank": 1,
        "DateProlongation": T0 + 86400,
    }
    assert by_path[UNDO][0].body == {"Deal": {"Extcode": "A101"}, "Rank": 2}
    assert by_path[PRERESV][0].body == {
        "Deal": {"Extcode": "A101"},
        "Third": {"Guid": "third-1"},
        "PrixVente": 250000.0,
        "Garantie": 5000.5,
    }
    assert by_path[DESIST][0].body == {"Deal": {"Extcode": "A101"}, "Third": {"Guid": "third-1"}}
    assert by_path[THIRD][0].body == {
        "Label": "Durand",
        "FirstName": "Anne",
        "EMail": "anne@example.com",
        "Phone": "0600000000",
        "Status": {"Code": "PROSPECT"},
        "Extcode": wire.own_extcode("anne@example.com", "Durand", "Anne"),
    }
    assert by_path[THIRD][0].query == {"uniqueproperty": "Extcode"}
    assert by_path[UPDATED][0].query == {"updated": str(T0), "s": "0", "l": "200"}
    assert by_path[UPDATED_PROCESS][0].query == {
        "updated": str(T0),
        "processcode": "PRG1",
        "s": "0",
        "l": "200",
    }
    assert client.calls[("Add", "ok")] == 2


# ------------------------------------------------------------------ refusals

Call = Callable[[KobanClient], Awaitable[KobanAnswer]]
CALLS: dict[str, tuple[str, Call]] = {
    "Add": (ADD, lambda c: c.add_option("A101", "third-1", 1, T0)),
    "Prolong": (PROLONG, lambda c: c.prolong_option("A101", 1, T0)),
    "Undo": (UNDO, lambda c: c.undo_option("A101", 1)),
    "PreresvAdd": (PRERESV, lambda c: c.add_prereservation("A101", "third-1", 100, 10)),
    "PreresvDesist": (DESIST, lambda c: c.desist("A101", "third-1")),
}
REFUSALS = [
    ("Add", "01", ErrorCode.PROSPECT_OPTION_LIMIT),
    ("Add", "02", ErrorCode.LOT_NOT_AVAILABLE),
    ("Add", "03", ErrorCode.USER_OPTION_LIMIT),
    ("Add", "04", ErrorCode.LOT_PRERESERVED),
    ("Add", "05", ErrorCode.LOT_FULL),
    ("Prolong", "01", ErrorCode.OPTION_NOT_FOUND),
    ("Prolong", "02", ErrorCode.ALREADY_PROLONGED),
    ("Undo", "01", ErrorCode.OPTION_NOT_FOUND),
    ("PreresvAdd", "01", ErrorCode.LOT_UNKNOWN),
    ("PreresvAdd", "02", ErrorCode.PROSPECT_UNKNOWN),
    ("PreresvDesist", "01", ErrorCode.LOT_UNKNOWN),
    ("PreresvDesist", "02", ErrorCode.PROSPECT_UNKNOWN),
]
# The same refusal in the spellings Koban may use.
SPELLINGS: list[Callable[[str], dict[str, Any]]] = [
    lambda code: {"success": False, "errorcode": code, "message": "refused"},
    lambda code: {"Success": False, "ErrorCode": int(code), "Message": "refused"},
    lambda code: {"SUCCESS": "false", "errorCode": str(int(code)), "Errors": ["refused"]},
]


@pytest.mark.parametrize("spelling", range(len(SPELLINGS)))
@pytest.mark.parametrize(("method", "code", "expected"), REFUSALS)
async def test_business_refusals_are_answers_mapped_to_error_codes(
    koban: ScriptedKoban,
    client: KobanClient,
    method: str,
    code: str,
    expected: ErrorCode,
    spelling: int,
) -> None:
    path, call = CALLS[method]
    koban.script("POST", path, Reply(json=SPELLINGS[spelling](code)))
    answer = await call(client)
    assert answer == KobanAnswer(success=False, error_code=code, message="refused", guid=None)
    assert koban_refusal(method, answer.error_code or "") == expected
    assert client.calls[(method, "refused")] == 1
    assert len(koban.seen) == 1


async def test_a_refusal_carried_by_a_4xx_is_still_a_refusal(
    koban: ScriptedKoban, client: KobanClient
) -> None:
    koban.script("POST", ADD, Reply(409, json={"Success": False, "ErrorCode": "05"}))
    answer = await client.add_option("A101", "third-1", 1, T0)
    assert (answer.success, answer.error_code) == (False, "05")


# ------------------------------------------------------------------ parsing


async def test_lot_status_parses_any_case_and_millisecond_dates(
    koban: ScriptedKoban, client: KobanClient
) -> None:
    koban.script(
        "GET",
        LOT_STATUS,
        Reply(json={"result": "1", "maxrank": 2, "enddate": T0 * 1000}),
        Reply(json={"Result": -1, "MaxRank": None}),
    )
    assert await client.get_lot_status("A1") == LotStatus(result=1, max_rank=2, end_date=T0)
    assert await client.get_lot_status("A2") == LotStatus(result=-1, max_rank=0, end_date=None)


# ------------------------------------------------------------------ paging


async def test_get_updated_pages_until_s_reaches_length(
    koban: ScriptedKoban, client: KobanClient
) -> None:
    lots = [{"Extcode": f"A{i}", "Status": "LIBRE", "Updated": T0 + i} for i in range(5)]

    def page(seen: Seen) -> Reply:
        start, size = int(seen.query["s"]), int(seen.query["l"])
        return Reply(json={"Length": len(lots), "List": lots[start : start + size]})

    koban.script("GET", UPDATED, page)
    pages = [p async for p in client.get_updated(T0, page_size=2)]
    assert [[lot.extcode for lot in p.items] for p in pages] == [
        ["A0", "A1"],
        ["A2", "A3"],
        ["A4"],
    ]
    assert [s.query["s"] for s in koban.seen] == ["0", "2", "4"]
    assert {s.query["l"] for s in koban.seen} == {"2"}
    assert client.calls[("GetUpdated", "ok")] == 3


async def test_get_updated_stops_on_an_empty_page(
    koban: ScriptedKoban, client: KobanClient
) -> None:
    koban.script("GET", UPDATED, Reply(json={"Length": 10, "List": []}))
    assert len([p async for p in client.get_updated(T0)]) == 1
    assert len(koban.seen) == 1


async def test_post_third_without_guid_or_refused(
    koban: ScriptedKoban, client: KobanClient
) -> None:
    koban.script(
        "POST",
        THIRD,
        Reply(json={"success": True}),
        Reply(json={"success": False, "errorcode": "01", "message": "duplicate"}),
    )
    with pytest.raises(KobanOutcomeUnknown):
        await client.post_third("Durand", "Anne", "anne@example.com", kind="CGP")
    with pytest.raises(KobanError, match="duplicate"):
        await client.post_third("Durand", "Anne", "anne@example.com")
    assert koban.seen[0].body["Status"] == {"Code": "CGP"}


# ------------------------------------------------------------------ the prospect lookup (a guess)

FOUND = [
    {"Success": True, "Result": {"Guid": "g-1", "Label": "Durand", "EMail": "anne@example.com"}},
    {"success": "true", "result": {"guid": "g-1"}},
    {"SUCCESS": 1, "Result": {"GUID": " g-1 ", "Status": {"Code": "PROSPECT"}}},
    {"Result": {"Guid": "g-1"}},  # no envelope flag: the account is the answer
]


@pytest.mark.parametrize("answer", FOUND)
async def test_the_lookup_reads_the_account_s_guid_from_result_in_any_case(
    koban: ScriptedKoban, client: KobanClient, answer: dict[str, Any]
) -> None:
    koban.script("GET", THIRD_BY_KEY, Reply(json=answer))
    assert await client.find_third_by_email("anne@example.com") == "g-1"
    (seen,) = koban.seen
    assert seen.query == {"uniqueproperty": "Email", "key": "anne@example.com"}
    assert client.calls[("ThirdGetOneByKey", "ok")] == 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply(json={"success": False, "message": "third not found"}),
        Reply(json={"Success": False, "Result": None, "Errors": ["not found"]}),
        Reply(404, json={"success": False, "message": "third not found"}),
    ],
)
async def test_koban_s_envelope_saying_no_is_no_third(
    koban: ScriptedKoban, client: KobanClient, reply: Reply
) -> None:
    koban.script("GET", THIRD_BY_KEY, reply)
    assert await client.find_third_by_email("anne@example.com") is None
    assert client.calls[("ThirdGetOneByKey", "refused")] == 1


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply(404, raw=b"<html>Not Found</html>"), 404),  # no such method
        (Reply(400, json={"Message": "unknown uniqueproperty"}), 400),
        (Reply(json={"Success": True, "Result": None}), None),
        (Reply(json={"Success": True, "Result": {"Label": "Durand"}}), None),
        (Reply(json=[{"Guid": "g-1"}]), None),
        (Reply(raw=b"<html>oops</html>"), None),
    ],
)
async def test_an_answer_without_an_account_s_guid_is_a_koban_error(
    koban: ScriptedKoban, client: KobanClient, reply: Reply, status: int | None
) -> None:
    koban.script("GET", THIRD_BY_KEY, reply)
    with pytest.raises(KobanError) as caught:
        await client.find_third_by_email("anne@example.com")
    assert caught.value.status == status
    assert len(koban.seen) == 1  # not retried


async def test_the_lookup_is_retried_as_a_read_then_unavailable(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep
) -> None:
    koban.script("GET", THIRD_BY_KEY, Reply(503))
    with pytest.raises(KobanUnavailable) as caught:
        await client.find_third_by_email("anne@example.com")
    assert caught.value.status == 503 and len(sleep.delays) == 3
