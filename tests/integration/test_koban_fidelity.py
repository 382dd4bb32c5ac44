"""Koban's published shapes, on both sandbox profiles (`doc`, `generic`): PostOne with the
account structure, stock sync over odd deals, the option-prolonged webhook's two dates,
the unknown-prospect 404, the dénonciation methods, AddValid and the guessed GetOneByKey
in each profile's envelope, and the `koban check` probe (also against a third shape)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.bootstrap import env_name, rules_from
from service.clock import FixedClock
from service.config import TenantSettings
from service.entrypoints.commands.sync import koban_check
from service.koban import KobanClient, KobanError, KobanLot, is_unknown_prospect, wire
from service.koban.denonciation import Contact
from service.sandbox.stock import PrgDateMeaning, Profile
from service.storage import sync_state
from service.storage.redis_client import RedisClient
from service.storage.store import LotStore
from service.tenancy import Tenant
from service.usecases.flows import KobanRefusal, OptionFlows, Placed
from service.usecases.koban_check import check_koban
from service.usecases.sync import sync_lot, sync_stock
from statecharts.errors import ErrorCode
from statecharts.ticks import ceil_tick
from tests.support.koban_pair import API_KEY, USER_KEY, Pair, koban_pair
from tests.support.koban_scripted import Reply, ScriptedKoban, Seen

T0 = int(datetime(2026, 11, 23, 10, 10, tzinfo=UTC).timestamp())  # 10 min after a tick
PROFILES: list[Profile] = ["doc", "generic"]


def _stock(pair: Pair) -> None:
    state = pair.state
    with state.muted():
        state.add_programme("HAR", "Harmonie", guid="prog-har")
        for n in (1, 2, 3):
            state.add_lot(
                f"A{n}",
                programme="HAR",
                amount=200000.0,
                tags=[{"TagCategory": "ETAGE", "Label": "1"}],
            )
        state.add_lot("P1", programme="HAR", link="A1")


@pytest.fixture(params=PROFILES)
async def pair(
    request: pytest.FixtureRequest, redis: RedisClient, tenant: str
) -> AsyncIterator[Pair]:
    async with koban_pair(redis, tenant, T0, request.param) as p:
        _stock(p)
        yield p


# --------------------------------------------------------------------------- PostOne


async def test_a_prospect_from_kobans_account_structure_is_one_third_and_can_hold_an_option(
    pair: Pair,
) -> None:
    account = {
        "Label": "Durand",
        "FirstName": "Anne",
        "EMail": "anne@example.com",
        "Cell": "0600000000",
        "Status": {"Code": "PROSPECT"},
        "Type": {"Code": "PART"},
        "Extcode": "CRM-7",
        "Origin": {"Code": "WEB"},
        "Tags": [{"TagCategoryCode": "BUDGET", "Label": "250k"}],
    }
    headers = {"X-ncApi": API_KEY, "X-ncUser": USER_KEY}
    url = pair.base_url + "/ncThird/PostOne"
    guids = []
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(
                url, json=account, params={"uniqueproperty": "Extcode"}, headers=headers
            ) as resp:
                assert resp.status == 200
                answer = await resp.json()
            guids.append(answer["Result"])
    assert guids[0] == guids[1]
    assert [t.guid for t in pair.state.prospects.values() if t.extcode == "CRM-7"] == [guids[0]]
    # The client: the same account structure in, the Guid read from Result.
    again = await pair.koban.post_account(
        wire.account("Durand", "Anne", "anne@example.com", extcode="CRM-7")
    )
    assert again == guids[0] and len(pair.state.prospects) == 1
    cgp = await pair.koban.post_third("Cabinet Martin", email="cgp@example.com", kind="CGP")
    assert pair.state.prospects[cgp].type == "CGP"
    await sync_stock(pair.tenant, pair.koban, T0)
    placed = await pair.flows.place("A1", guids[0])
    assert isinstance(placed, Placed) and pair.state.lots["A1"].option_of(guids[0]) is not None


async def test_an_unknown_prospect_is_prospect_unknown(pair: Pair) -> None:
    await sync_stock(pair.tenant, pair.koban, T0)
    with pytest.raises(KobanRefusal) as caught:
        await pair.flows.place("A2", "never-created")
    assert caught.value.code is ErrorCode.PROSPECT_UNKNOWN


async def test_a_404_without_kobans_envelope_is_a_koban_error(
    redis: RedisClient, tenant: str
) -> None:
    settings = TenantSettings()
    rules = rules_from(settings)
    t = Tenant(tenant, settings, rules, LotStore(redis, tenant, rules), FixedClock(T0))
    lot = KobanLot.model_validate({"Extcode": "A1", "Status": "LIBRE", "Process": {"Code": "H"}})
    await sync_lot(t, lot, T0)
    async with ScriptedKoban() as server, aiohttp.ClientSession() as http:
        server.script("GET", "/ncOption/GetLotStatus", Reply(json={"Result": 0, "MaxRank": 0}))
        server.script("POST", "/ncOption/Add", Reply(404, raw=b"<html>Not Found</html>"))
        koban = KobanClient(http, server.base_url, "a", "u", retries=0, rate_per_s=1000.0)
        with pytest.raises(KobanError) as caught:
            await OptionFlows(t, koban, poll_s=0.01).place("A1", "p1")
    assert caught.value.status == 404 and not is_unknown_prospect(caught.value)


# --------------------------------------------------------------------------- envelopes


async def _raw(
    pair: Pair,
    verb: str,
    method: str,
    *,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"X-ncApi": API_KEY, "X-ncUser": USER_KEY}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            verb, f"{pair.base_url}/{method}", params=params, json=body, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.json()


def _success_key(pair: Pair) -> str:
    return "Success" if pair.state.profile == "generic" else "success"


async def test_check_denonc_and_create_answer_in_the_profile_s_envelope(pair: Pair) -> None:
    anne = pair.state.add_third(name="Durand", first_name="Anne", email="anne@example.com")
    contact = Contact("Durand", first_name="Anne", email="anne@example.com")
    check_body = {"Name": "Durand", "EMail": "anne@example.com", "Process": {"Code": "HAR"}}
    status, body = await _raw(pair, "POST", "ncDenonc/CheckDenonc", body=check_body)
    assert status == 200 and body[_success_key(pair)] is True
    # The generic envelope carries what a method returns in Result; the doc's has no Result.
    flags = body["Result"] if pair.state.profile == "generic" else body
    assert {k: flags[k] for k in ("Activated", "IsDenonced", "Exists")} == {
        "Activated": True,
        "IsDenonced": False,
        "Exists": True,
    }
    check = await pair.koban.check_denonciation("HAR", contact)
    assert (check.activated, check.is_denounced, check.exists) == (True, False, True)
    assert (await pair.koban.create_denonciation("HAR", contact, by="cgp-9")).success
    assert pair.state.denonciations.made == {("HAR", anne.guid): "cgp-9"}
    assert (await pair.koban.check_denonciation("HAR", contact)).is_denounced
    status, body = await _raw(pair, "POST", "ncDenonc/Create", body=check_body)
    assert status == 200 and body[_success_key(pair)] is False  # already denounced
    refused = await pair.koban.create_denonciation("HAR", contact)
    assert not refused.success and refused.error_code is None


async def test_add_valid_answers_in_the_profile_s_envelope(pair: Pair) -> None:
    anne = pair.state.add_third(name="Durand", email="anne@example.com")
    values = {"third_guid": anne.guid, "price_cents": 20_000_000, "deposit_cents": 100_000}
    assert (await pair.koban.add_valid_prereservation("A1", values)).success
    assert pair.state.lots["A1"].status == "PRERESV"
    unknown = await pair.koban.add_valid_prereservation("ZZ", values)
    assert (unknown.success, unknown.error_code) == (False, "01")
    status, body = await _raw(
        pair, "POST", "ncPreresv/AddValid", body={"Deal": {"Extcode": "ZZ"}, "ThirdId": anne.guid}
    )
    code_key = "ErrorCode" if pair.state.profile == "generic" else "errorcode"
    assert status == 200 and body[_success_key(pair)] is False and body[code_key] == "01"


async def test_get_one_by_key_answers_the_account_in_result(pair: Pair) -> None:
    anne = pair.state.add_third(name="Durand", email="Anne@Example.com", extcode="CRM-9")
    for params in (
        {"uniqueproperty": "Email", "key": "anne@EXAMPLE.com"},
        {"UniqueProperty": "extcode", "key": "CRM-9"},
    ):
        status, body = await _raw(pair, "GET", "ncThird/GetOneByKey", params=params)
        assert status == 200 and body[_success_key(pair)] is True
        assert body["Result"] == anne.as_json()
    assert await pair.koban.find_third_by_email("ANNE@example.com") == anne.guid
    params = {"uniqueproperty": "Email", "key": "nobody@example.com"}
    status, body = await _raw(pair, "GET", "ncThird/GetOneByKey", params=params)
    assert status == 404 and body[_success_key(pair)] is False
    assert await pair.koban.find_third_by_email("nobody@example.com") is None
    status, _ = await _raw(
        pair, "GET", "ncThird/GetOneByKey", params={"uniqueproperty": "Phone", "key": "06"}
    )
    assert status == 400


# --------------------------------------------------------------------------- stock sync


def _deal(extcode: Any, status: Any, process: Any, **extra: Any) -> dict[str, Any]:
    return {
        "Guid": f"g-{extcode}",
        "Extcode": extcode,
        "Label": "x",
        "Status": status,
        "Process": {"Code": process},
        "Updated": T0 - 60,
        **extra,
    }


ODD_PAGES = [
    _deal("A1", {"Code": "LIBRE", "Label": "Libre"}, "HAR"),
    _deal(None, "LIBRE", "HAR"),
    _deal("Q-1", {"Code": "QUOTESENT"}, "CRM"),
    _deal(44, "OPTION", 6),
    _deal("A5", None, "HAR"),
]


def _paged(seen: Seen) -> Reply:
    start, size = int(seen.query["s"]), int(seen.query["l"])
    return Reply(json={"Length": len(ODD_PAGES), "List": ODD_PAGES[start : start + size]})


async def _scripted_tenant(redis: RedisClient, name: str, **settings: Any) -> Tenant:
    ts = TenantSettings(**settings)
    rules = rules_from(ts)
    return Tenant(name, ts, rules, LotStore(redis, name, rules), FixedClock(T0))


async def test_odd_deals_are_skipped_by_reason_and_the_sync_moves_on(
    redis: RedisClient, tenant: str
) -> None:
    t = await _scripted_tenant(redis, tenant)
    async with ScriptedKoban() as server, aiohttp.ClientSession() as http:
        programmes = [{"Extcode": "HAR", "Label": "Harmonie"}, {"Extcode": 6, "Label": "Six"}]
        server.script("GET", "/ncDealProcess/GetAll", Reply(json=programmes))
        server.script("GET", "/ncDeal/GetUpdated", _paged)
        koban = KobanClient(http, server.base_url, "a", "u", retries=0, rate_per_s=1000.0)
        report = await sync_stock(t, koban, T0, page_size=2)
    assert (report.pages, report.imported) == (3, 2)
    assert report.skipped == {"no_extcode": 1, "other_process": 1, "no_status": 1}
    assert report.lots == ["A1", "44"]
    number = await t.store.load("44")
    assert number is not None and number.program == "6" and number.status == "OPTION"
    assert await sync_state.last_sync(t.store) == T0


async def test_with_programmes_set_only_those_are_read(redis: RedisClient, tenant: str) -> None:
    t = await _scripted_tenant(redis, tenant, programmes=["HAR"])
    async with ScriptedKoban() as server, aiohttp.ClientSession() as http:
        server.script("GET", "/ncDeal/GetUpdatedProcess", _paged)
        koban = KobanClient(http, server.base_url, "a", "u", retries=0, rate_per_s=1000.0)
        report = await sync_stock(t, koban, T0, page_size=5)
    # Deals are read per programme; GetAll is asked once, for the programme listing only.
    deal_reads = [s for s in server.seen if s.path != "/ncDealProcess/GetAll"]
    assert {s.path for s in deal_reads} == {"/ncDeal/GetUpdatedProcess"}
    assert deal_reads[0].query["processcode"] == "HAR"
    assert sum(s.path == "/ncDealProcess/GetAll" for s in server.seen) == 1
    assert report.lots == ["A1"]
    assert report.skipped == {"no_extcode": 1, "other_process": 2, "no_status": 1}


async def test_the_sync_reads_the_sandbox_stock(pair: Pair) -> None:
    report = await sync_stock(pair.tenant, pair.koban, T0)
    assert report.imported == 4 and report.skipped == {} and report.drift == 0
    secondary = await pair.tenant.store.load("P1")
    assert secondary is not None and secondary.secondary
    assert secondary.link == pair.state.lots["A1"].guid


# --------------------------------------------------------------------------- PrgDate


@pytest.mark.parametrize("prg_date", ["deadline", "moment"])
@pytest.mark.parametrize("profile", PROFILES)
async def test_a_prolongation_made_in_koban_keeps_both_sides_on_one_tick(
    redis: RedisClient, tenant: str, profile: Profile, prg_date: PrgDateMeaning
) -> None:
    async with koban_pair(redis, tenant, T0, profile, prg_date) as pair:
        _stock(pair)
        await sync_stock(pair.tenant, pair.koban, T0)
        third = await pair.koban.post_third("Durand", "Anne", "anne@example.com")
        assert isinstance(await pair.flows.place("A1", third), Placed)
        await pair.state.webhooks.drain()
        pair.clock.advance(300)
        until = T0 + 3 * 86400 + 7 * 60  # not on a tick
        pair.state.prolong_option("A1", 1, until)  # Koban's own prolongation
        await pair.state.webhooks.drain()
        lot = await pair.tenant.store.load("A1")
        koban_option = pair.state.lots["A1"].option_at(1)
        assert lot is not None and koban_option is not None
        (own,) = lot.options
        assert own.prolonged and own.expiry == koban_option.expiry == ceil_tick(until)
        # `deadline`: PrgDate is the deadline, kept exact; `moment`: ExpDate is all we know.
        assert own.deadline == (until if prg_date == "deadline" else ceil_tick(until))


@pytest.mark.parametrize("prg_date", ["deadline", "moment"])
@pytest.mark.parametrize("profile", PROFILES)
async def test_our_own_prolongation_is_recognised_in_its_echo(
    redis: RedisClient, tenant: str, profile: Profile, prg_date: PrgDateMeaning
) -> None:
    async with koban_pair(redis, tenant, T0, profile, prg_date) as pair:
        _stock(pair)
        await sync_stock(pair.tenant, pair.koban, T0)
        third = await pair.koban.post_third("Durand", "Anne", "anne@example.com")
        assert isinstance(await pair.flows.place("A1", third), Placed)
        await pair.state.webhooks.drain()
        until = T0 + 3 * 86400 + 7 * 60
        await pair.flows.prolong("A1", 1, until)
        await pair.state.webhooks.drain()
        lot = await pair.tenant.store.load("A1")
        assert lot is not None and not lot.echoes
        (own,) = lot.options
        assert (own.deadline, own.expiry) == (until, ceil_tick(until))
        history = [e["type"] for e in await pair.tenant.store.history("A1")]
        assert "option.deadline_confirmed" not in history
        assert not [h for h in history if "drift" in h]


# --------------------------------------------------------------------------- koban check


async def test_koban_check_holds_on_the_sandbox(pair: Pair) -> None:
    report = await check_koban(pair.koban)
    assert report.ok, "\n".join(report.lines())
    found = {(f.method, f.name) for f in report.findings if f.state == "found"}
    assert {("GetAll", "Extcode"), ("GetUpdated", "Extcode"), ("GetUpdated", "Status")} <= found
    assert ("GetLotStatus", "Result") in found
    forms = "naive ISO-8601 (read as UTC)" if pair.state.profile == "generic" else "UNIX seconds"
    assert forms in report.date_forms
    assert {("CheckDenonc", f) for f in ("answer", "Activated", "IsDenonced", "Exists")} <= found
    # CheckDenonc was asked once, about no one, and nothing was made.
    assert pair.state.calls["ncDenonc/CheckDenonc"] == 1
    assert pair.state.denonciations.made == {} and pair.state.prospects == {}


THIRD_SHAPE = {
    "/ncDealProcess/GetAll": [{"Code": "HAR", "Name": "Harmonie"}],
    "/ncDeal/GetUpdated": {"Total": 1, "Items": [{"Extcode": "A1"}]},
}


def _write_tenant(folder: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "tenants.toml").write_text(f'[tenants.probe]\nkoban_base_url = "{url}"\n')
    monkeypatch.setenv("KOBAN_OPTIONS_TENANTS_FILE", str(folder / "tenants.toml"))
    monkeypatch.setenv(env_name("probe", "koban_api_key"), API_KEY)
    monkeypatch.setenv(env_name("probe", "koban_user_key"), USER_KEY)
    monkeypatch.chdir(folder)


async def test_koban_check_exits_1_naming_each_difference_of_a_third_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with ScriptedKoban() as server:
        for path, body in THIRD_SHAPE.items():
            server.script("GET", path, Reply(json=body))
        _write_tenant(tmp_path, server.base_url, monkeypatch)
        code = await koban_check("probe", False)
    out = capsys.readouterr().out
    assert code == 1
    assert "missing GetAll Extcode" in out
    assert "missing GetUpdated Length" in out and "missing GetUpdated List" in out
    assert "some guesses failed" in out
    assert [s.path for s in server.seen] == list(THIRD_SHAPE)  # reads only


CHECK_DENONC_SHAPES = [
    (
        Reply(json={"Success": True, "Result": {"Activated": "Y", "IsDenounced": False}}),
        [
            "shape   CheckDenonc Activated",
            "missing CheckDenonc IsDenonced",
            "missing CheckDenonc Exists",
        ],
    ),
    (
        Reply(404, raw=b"<html>Not Found</html>"),
        ["missing CheckDenonc answer: Koban answered HTTP 404"],
    ),
]


@pytest.mark.parametrize(("reply", "expected"), CHECK_DENONC_SHAPES)
async def test_koban_check_names_what_check_denonc_lacks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    reply: Reply,
    expected: list[str],
) -> None:
    async with ScriptedKoban() as server:
        server.script("GET", "/ncDealProcess/GetAll", Reply(json=[{"Extcode": "HAR"}]))
        server.script("GET", "/ncDeal/GetUpdated", Reply(json={"Length": 0, "List": []}))
        server.script("POST", "/ncDenonc/CheckDenonc", reply)
        _write_tenant(tmp_path, server.base_url, monkeypatch)
        code = await koban_check("probe", False)
    out = capsys.readouterr().out
    assert code == 1, out
    for line in expected:
        assert line in out
    (asked,) = server.requests("/ncDenonc/CheckDenonc")
    assert asked.body == {
        "Name": "KOBAN-CHECK",
        "EMail": "koban-check@invalid.example",
        "Process": {"Code": "HAR"},
    }


async def test_koban_check_exits_0_on_the_sandbox(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_tenant(tmp_path, pair.base_url, monkeypatch)
    assert await koban_check("probe", False) == 0
    assert "every guess held" in capsys.readouterr().out
