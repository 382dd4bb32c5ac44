"""Stock sync (GetUpdated) and reconciliation (GetLotStatus) against a scripted Koban."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from service.clock import FixedClock
from service.koban import KobanClient
from service.sandbox import SandboxState, build_sandbox_app, populate
from service.usecases.flows import KobanRefusal, OptionFlows, Placed
from service.usecases.intents import resolve_pending
from service.usecases.sync import last_sync_key, reconcile, reconcile_lot, sync_stock
from statecharts.errors import ErrorCode
from statecharts.ticks import ceil_tick
from tests.support.flows_env import (
    T0,
    Env,
    make_client,
    make_tenant,
    one_option,
)
from tests.support.instants import ts
from tests.support.koban_scripted import LOT_STATUS, UPDATED, Reply, ScriptedKoban, Seen


class Stock:
    """Koban's lots for GetUpdated: filtered by `updated`, paged by `s` / `l`."""

    def __init__(self) -> None:
        self.lots: dict[str, dict[str, Any]] = {}

    def put(self, extcode: str, status: Any, updated: int, **extra: Any) -> None:
        self.lots[extcode] = {
            "Guid": f"g-{extcode}",
            "Extcode": extcode,
            "Label": f"Lot {extcode}",
            "Status": status,
            "Process": {"Code": "HAR", "Label": "Harmonie"},
            "Amountprev": 200000,
            "Type": None,
            "Link": None,
            "Updated": updated,
            **extra,
        }

    def __call__(self, seen: Seen) -> Reply:
        since, start, size = (int(seen.query[k]) for k in ("updated", "s", "l"))
        matching = [lot for lot in self.lots.values() if lot["Updated"] >= since]
        return Reply(json={"Length": len(matching), "List": matching[start : start + size]})


@pytest.fixture
async def env(redis: Redis, tenant: str) -> AsyncIterator[Env]:
    clock = FixedClock(T0)
    t = make_tenant(redis, tenant, clock)
    async with ScriptedKoban() as server, aiohttp.ClientSession() as session:
        # Koban's published process structure: the programme's code is its Extcode.
        programmes = [{"Extcode": "HAR", "Label": "Harmonie", "Guid": "p-har"}]
        server.script("GET", "/ncDealProcess/GetAll", Reply(json=programmes))
        koban = make_client(session, server.base_url)
        yield Env(t, clock, server, koban, OptionFlows(t, koban, poll_s=0.01))


def demo_stock() -> Stock:
    stock = Stock()
    before = T0 - 86400
    stock.put("L-FREE", "LIBRE", before)
    stock.put("L-OPT", "OPTION", before)
    stock.put("L-PRE", {"Code": "PRERESV", "Label": "Préréservé"}, before)
    stock.put("L-RESV", "resv", before)
    stock.put("L-BLOQ", "BLOQUE", before)
    stock.put("L-SOLD", "RESV", before, Result="WON")
    stock.put("L-CUST", {"Code": "ACTE_NOTAIRE", "Label": "Chez le notaire"}, before)
    stock.put("P-01", "LIBRE", before, Type="SECONDARY", Link="g-L-FREE")
    return stock


async def test_sync_from_scratch_imports_every_lot_with_its_status(env: Env) -> None:
    stock = demo_stock()
    env.server.script("GET", UPDATED, stock)
    progress: list[tuple[int, int]] = []
    report = await sync_stock(
        env.tenant, env.koban, T0, progress=lambda d, t: progress.append((d, t)), page_size=3
    )
    assert (report.since, report.seen, report.imported, report.pages) == (0, 8, 8, 3)
    assert report.drift == 0
    assert progress[-1] == (8, 8) and len(progress) == 8
    expected = {
        "L-FREE": ("free", "LIBRE"),
        "L-OPT": ("one_option", "OPTION"),
        "L-PRE": ("prereserved", "PRERESV"),
        "L-RESV": ("reserved", "RESV"),
        "L-BLOQ": ("blocked", "BLOQUE"),
        "L-SOLD": ("sold", "SOLD"),
        "L-CUST": ("custom", "ACTE_NOTAIRE"),
        "P-01": ("free", "LIBRE"),
    }
    for code, (config, status) in expected.items():
        lot = await env.store.load(code)
        assert lot is not None and (lot.config, lot.status) == (config, status), code
    secondary = await env.store.load("P-01")
    assert secondary is not None and secondary.secondary and secondary.link == "g-L-FREE"
    assert secondary.program == "HAR" and secondary.guid == "g-P-01"
    # OPTION without holders: one opaque placeholder, queued for reconciliation.
    optioned = await env.store.load("L-OPT")
    assert optioned is not None
    [placeholder] = optioned.options
    assert placeholder.opaque and placeholder.rank == 1 and placeholder.deadline is None
    assert await env.needs_sync() == {"L-OPT"}
    kinds = await env.types()
    assert kinds.count("koban.lot.imported") == 8
    assert "koban.sync.drift_detected" not in kinds
    assert "koban.lot.status_changed" not in kinds  # the import event carries the status
    assert await env.store.redis.get(last_sync_key(env.tenant)) == str(T0).encode()
    assert [s.query["updated"] for s in env.server.requests(UPDATED)] == ["0", "0", "0"]


async def test_second_run_transfers_only_what_changed(env: Env) -> None:
    stock = demo_stock()
    env.server.script("GET", UPDATED, stock)
    await sync_stock(env.tenant, env.koban, T0)
    t1 = T0 + 3600
    stock.put("L-RESV", "LIBRE", T0 + 600)  # désistement in Koban, webhook missed
    stock.put("L-NEW", "LIBRE", T0 + 700)
    env.server.seen.clear()
    report = await sync_stock(env.tenant, env.koban, t1)
    assert report.since == T0 and report.lots == ["L-RESV", "L-NEW"]
    assert (report.imported, report.changed, report.drift) == (1, 1, 1)
    assert env.server.requests(UPDATED)[0].query["updated"] == str(T0)
    resv = await env.store.load("L-RESV")
    assert resv is not None and resv.config == "free"
    events = await env.events()
    drift = [e for e in events if e["type"] == "koban.sync.drift_detected"]
    assert [e["subject"] for e in drift] == ["L-RESV"]
    assert drift[0]["data"]["localStatus"] == "RESV" and drift[0]["data"]["kobanStatus"] == "LIBRE"
    changed = [e for e in events if e["type"] == "koban.lot.status_changed"]
    assert changed[0]["data"] == {"from": "RESV", "to": "LIBRE", "actor": "sync"}
    # Nothing changed since: an empty run; full=True reads everything again.
    assert (await sync_stock(env.tenant, env.koban, t1 + 60)).seen == 0
    full = await sync_stock(env.tenant, env.koban, t1 + 120, full=True)
    assert full.seen == 9 and full.unchanged == 9 and full.drift == 0


async def test_failed_run_does_not_move_the_start_point(env: Env) -> None:
    stock = demo_stock()
    env.server.script("GET", UPDATED, stock)
    await sync_stock(env.tenant, env.koban, T0)
    env.server.script("GET", UPDATED, Reply(status=503))
    with pytest.raises(Exception, match="GetUpdated"):
        await sync_stock(env.tenant, env.koban, T0 + 60)
    assert await env.store.redis.get(last_sync_key(env.tenant)) == str(T0).encode()


async def test_reconciliation_replaces_then_clears_placeholders(env: Env) -> None:
    stock = demo_stock()
    env.server.script("GET", UPDATED, stock)
    await sync_stock(env.tenant, env.koban, T0)
    end = ts("2026-11-24T09:12:00Z")
    env.clock.advance(120)
    env.server.script("GET", LOT_STATUS, Reply(json={"Result": -3, "MaxRank": 2, "EndDate": end}))
    report = await reconcile(env.tenant, env.koban, env.clock.now())
    assert report.outcomes == {"L-OPT": "fixed"}
    lot = await env.store.load("L-OPT")
    assert lot is not None and lot.config == "two_options"
    assert [(o.rank, o.opaque) for o in lot.options] == [(1, True), (2, True)]
    first = lot.option_at(1)  # the dateless placeholder got rank 1's EndDate
    assert first is not None and first.deadline == end and first.expiry == ceil_tick(end)
    drift = [e for e in await env.events() if e["type"] == "koban.sync.drift_detected"]
    assert [e["data"]["reason"] for e in drift] == ["option_count", "deadline"]
    assert len({e["lotversion"] for e in drift}) == 1  # one transition
    env.clock.advance(60)
    assert await reconcile_lot(env.tenant, env.koban, "L-OPT", env.clock.now()) == "agreed"
    assert await env.needs_sync() == {"L-OPT"}  # opaque options stay queued
    # Koban's options are gone (expired there, webhooks missed): placeholders cleared.
    env.clock.advance(60)
    env.server.script("GET", LOT_STATUS, Reply(json={"Result": 0, "MaxRank": 0}))
    assert await reconcile_lot(env.tenant, env.koban, "L-OPT", env.clock.now()) == "fixed"
    lot = await env.store.load("L-OPT")
    assert lot is not None and lot.config == "free" and lot.options == []
    assert await env.needs_sync() == set()
    kinds = [e["type"] for e in await env.events() if e["subject"] == "L-OPT"]
    assert kinds.count("koban.option.superseded") == 2
    assert kinds[-2:] == ["koban.lot.status_changed", "koban.sync.drift_detected"]


async def test_reconcile_corrects_an_estimated_rank_one_deadline_and_agrees(env: Env) -> None:
    await env.store.import_lot("A1", T0, program="P1")
    option = await env.store.place_local("A1", "p1", None, T0)
    env.clock.advance(60)
    assert option.expiry is not None
    env.server.script("GET", LOT_STATUS, one_option(option.expiry))
    assert await reconcile_lot(env.tenant, env.koban, "A1", env.clock.now()) == "agreed"
    later = option.expiry + 3600
    env.server.script("GET", LOT_STATUS, one_option(later))
    assert await reconcile_lot(env.tenant, env.koban, "A1", env.clock.now()) == "fixed"
    lot = await env.store.load("A1")
    assert lot is not None and lot.options[0].expiry == later
    assert lot.options[0].source == "koban" and lot.options[0].holder == "p1"


async def test_drift_tolerance_after_a_tick(env: Env) -> None:
    """Koban still reports an option the service expired at the tick: not drift within
    the tolerance; drift (and a placeholder) after it."""
    await env.store.import_lot("A1", T0, program="P1")
    option = await env.store.place_local("A1", "p1", None, T0)
    assert option.expiry is not None
    tick = option.expiry
    env.clock.set(tick + 120)
    env.server.script("GET", LOT_STATUS, one_option(tick))
    assert await reconcile_lot(env.tenant, env.koban, "A1", env.clock.now()) == "deferred"
    lot = await env.store.load("A1")
    assert lot is not None and lot.options == []  # expired durably, nothing else
    assert "koban.sync.drift_detected" not in await env.types()
    assert await env.needs_sync() == {"A1"}
    env.clock.set(tick + 600)
    env.server.script("GET", LOT_STATUS, one_option(tick + 1800))
    assert await reconcile_lot(env.tenant, env.koban, "A1", env.clock.now()) == "fixed"
    lot = await env.store.load("A1")
    assert lot is not None and lot.options[0].opaque and lot.options[0].expiry == tick + 1800
    assert "koban.sync.drift_detected" in await env.types()


async def test_reconcile_defers_lots_with_a_pending_intent(env: Env) -> None:
    await env.store.import_lot("A1", T0, program="P1")
    await env.store.reserve_placement("A1", "p1", None, T0)
    env.clock.advance(60)
    env.server.script("GET", LOT_STATUS, one_option())
    assert await reconcile_lot(env.tenant, env.koban, "A1", env.clock.now()) == "deferred"
    lot = await env.store.load("A1")
    assert lot is not None and lot.options == [] and len(lot.intents) == 1


async def test_reconcile_candidates_and_rate_limited_pass(env: Env) -> None:
    for code in ("A1", "A2", "A3"):
        await env.store.import_lot(code, T0, program="P1")
        await env.store.place_local(code, "p" + code, None, T0)
    env.clock.advance(60)
    env.server.script("GET", LOT_STATUS, one_option())
    report = await reconcile(env.tenant, env.koban, env.clock.now(), limit=2)
    assert report.checked == 2 and len(env.server.requests(LOT_STATUS)) == 2
    env.server.script("GET", LOT_STATUS, Reply(status=503))
    failed = await reconcile(env.tenant, env.koban, env.clock.now(), limit=3)
    assert failed.failed == 1 and failed.checked == 0  # Koban down: the pass stops


# --- against the Koban sandbox, sharing the service's clock ------------------------------


@pytest.mark.parametrize("profile", ["doc", "generic"])
async def test_end_to_end_against_the_sandbox(redis: Redis, tenant: str, profile: Any) -> None:
    clock = FixedClock(T0)
    t = make_tenant(redis, tenant, clock)
    state = SandboxState(api_key="k-api", user_key="k-user", clock=clock.now, profile=profile)
    populate(state)
    for n in range(20):
        state.add_third(guid=f"crowd-{n}", name=f"N{n}", first_name="F", email=f"{n}@x.fr")
    server = TestServer(build_sandbox_app(state, tick_interval=None), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            koban = KobanClient(
                session, f"{server.make_url('/api/v1')}", "k-api", "k-user", rate_per_s=1000.0
            )
            flows = OptionFlows(t, koban, poll_s=0.01)
            report = await sync_stock(t, koban, clock.now())
            assert report.imported == len(state.lots) and report.drift == 0
            free = [c for c, lot in state.lots.items() if lot.config == "free"]
            target, other = free[0], free[1]

            # 20 simultaneous placements on a free lot: ranks 1 and 2, the rest LOT_FULL.
            results = await asyncio.gather(
                *(flows.place(target, f"crowd-{n}") for n in range(20)), return_exceptions=True
            )
            placed = [r for r in results if isinstance(r, Placed)]
            full = [r for r in results if isinstance(r, KobanRefusal | Exception)]
            assert sorted(p.option.rank for p in placed) == [1, 2]
            assert all(getattr(e, "code", None) is ErrorCode.LOT_FULL for e in full)
            assert len(state.lots[target].options) == 2
            assert koban.calls[("Add", "ok")] == 2 and koban.calls[("Add", "refused")] == 0

            # An option placed in Koban's UI (webhook missed): the next sync and the
            # reconciliation bring it in as an opaque option with Koban's deadline.
            clock.advance(600)
            state.add_option(other, "demo-prospect-1", via_api=False)
            second = await sync_stock(t, koban, clock.now())
            assert other in second.lots and second.drift == 1
            clock.advance(60)
            rec = await reconcile(t, koban, clock.now(), extcodes=[other, target])
            assert rec.outcomes == {other: "fixed", target: "agreed"}
            lot = await t.store.load(other)
            koban_option = state.lots[other].option_at(1)
            assert lot is not None and koban_option is not None
            assert lot.options[0].opaque and lot.options[0].expiry == koban_option.expiry

            # Cancel rank 1 through Koban: rank 2 promoted on both sides.
            holder = state.lots[target].option_at(1)
            assert holder is not None and holder.holder is not None
            await flows.cancel(target, 1, third=holder.holder)
            assert [o.rank for o in state.lots[target].options] == [1]
            local = await t.store.load(target)
            assert local is not None and [o.rank for o in local.options] == [1]
            assert await resolve_pending(t, koban, clock.now()) == []
    finally:
        await server.close()
