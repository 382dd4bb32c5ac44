"""Mixed load with ticks (issue #6 item 2, second half), over real HTTP
(tests/support/mixed_load.py).

What it sets up and checks, in detail: docs/testing.md, `test_reliability_mixed.py`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from service.bootstrap import koban_from_settings, rules_from
from service.clock import FixedClock, TestClock
from service.config import ApiToken, TenantSettings
from service.entrypoints.api import build_api_app
from service.sandbox import WEBHOOK_KINDS, SandboxState, build_sandbox_app
from service.sandbox.webhooks import OPTION_CHECK
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from service.usecases.intents import resolve_pending
from service.usecases.sync import needs_sync, sync_stock
from statecharts.model import Lot, Option
from statecharts.ticks import next_tick, to_iso
from tests.support.api_harness import API_KEY, T0, TOKENS, USER_KEY
from tests.support.invariants import check_tenant
from tests.support.mixed_load import (
    ADVANCES,
    CLIENTS,
    DRAIN_S,
    LIFETIME,
    LOTS,
    PARTNER,
    SECONDS,
    SECRET,
    SEED,
    Client,
    CountingSender,
    Mixed,
    create_prospects,
    drive,
)
from tests.support.twin_compare import lot_disagreements, twin_disagreements


@pytest.fixture
async def mixed(redis: Redis, tenant: str) -> AsyncIterator[Mixed]:
    clock = TestClock(FixedClock(T0))
    codes = [f"MX-{n:04d}" for n in range(1, LOTS + 1)]
    settings = {
        "sandbox": True,
        "option_lifetime": LIFETIME,
        "koban_api_key": SecretStr(API_KEY),
        "koban_user_key": SecretStr(USER_KEY),
        "webhook_secret": SecretStr(SECRET),
        "koban_rate_limit_per_s": 100_000.0,
        "api_tokens": [
            ApiToken(token=SecretStr(tok), scopes=scopes, partner_guid=partner)  # type: ignore[arg-type]
            for tok, scopes, partner in TOKENS.values()
        ],
    }
    # The sandbox first (its URL goes into the tenant's settings), on the tenant's clock.
    rules = rules_from(TenantSettings(**settings))  # type: ignore[arg-type]
    sender = CountingSender(token=SECRET, token_in=("header",), timeout=DRAIN_S)
    state = SandboxState(
        api_key=API_KEY,
        user_key=USER_KEY,
        rules=rules,
        clock=clock.now,
        webhooks=sender,
        seed=SEED,
    )
    state.add_programme("MX", "Mixed Heights")
    state.add_third(guid=PARTNER, type="CGP", name="Conseil 1")
    for code in codes:
        state.add_lot(code, programme="MX", amount=250_000.0)
    sandbox = TestServer(build_sandbox_app(state, tick_interval=None), host="127.0.0.1")
    await sandbox.start_server()
    koban_url = str(sandbox.make_url("/api/v1"))
    ts_ = TenantSettings(**{**settings, "koban_base_url": koban_url})  # type: ignore[arg-type]
    t = Tenant(tenant, ts_, rules, LotStore(redis, tenant, rules), clock)

    def sandbox_follows(_tenant: Tenant, _now: int) -> None:
        state.catch_up()  # as `run` does: Koban's own ticks on the same clock

    app = build_api_app(Tenants({tenant: t}), redis, on_clock_advanced=sandbox_follows)
    api = TestServer(app, host="127.0.0.1")
    await api.start_server()
    api_url = str(api.make_url("")).rstrip("/")
    hooks = f"{api_url}/koban/{tenant}/"
    targets = {kind: hooks + kind.replace("_", "-") for kind in WEBHOOK_KINDS}
    targets[OPTION_CHECK] = hooks + "option-check"
    sender.configure(targets=targets)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        koban = koban_from_settings(t, http)
        assert koban is not None
        report = await sync_stock(t, koban, clock.now(), full=True)
        assert report.imported == LOTS, report
        yield Mixed(t, state, api_url, http, koban, codes)
    finally:
        await http.close()
        await api.close()
        await sandbox.close()


@dataclass(frozen=True)
class Figures:
    elapsed: float
    expired: int  # koban.option.expired events in the service's stream
    koban_expired: int  # option-expired webhooks the sandbox fired (its own ticks)
    drift: Counter[str]
    queued: int  # lots left queued for reconciliation

    def line(self, run: Mixed) -> str:
        """The one-line summary (README "Reliability")."""
        requests = sum(n for key, n in run.outcomes.items() if not key.startswith("clock"))
        status: Counter[str] = Counter()
        for key, n in run.outcomes.items():
            if not key.startswith("clock"):
                status[key.split()[1]] += n
        calls = run.koban.calls
        writes = sum(n for m, n in calls.items() if m not in ("ncOption/GetLotStatus",))
        return (
            f"RELIABILITY mixed clients={CLIENTS} lots={LOTS} seconds={SECONDS:g} seed={SEED} "
            f"wall_s={self.elapsed:.1f} requests={requests} ({requests / self.elapsed:.0f}/s) "
            f"statuses={dict(sorted(status.items()))} "
            f"advances={ADVANCES} ticks={run.ticks_under_load} "
            f"expired={self.expired} koban_expired={self.koban_expired} "
            f"webhooks={run.koban.webhooks.stats.delivered} koban_writes={writes} "
            f"get_lot_status={calls['ncOption/GetLotStatus']} "
            f"drift={sum(self.drift.values())} needsync={self.queued}"
        )

    def details(self, run: Mixed) -> list[str]:
        lines = ["  outcomes: " + ", ".join(f"{k}: {n}" for k, n in sorted(run.outcomes.items()))]
        lines.append(f"  drift: {dict(sorted(self.drift.items()))}")
        kinds = cast(CountingSender, run.koban.webhooks).kinds
        lines.append(f"  webhooks fired: {dict(sorted(kinds.items()))}")
        lines.append(f"  koban calls: {dict(sorted(run.koban.calls.items()))}")
        for label, values in sorted(run.latency.items()):
            values = sorted(values)
            lines.append(
                f"  latency {label}: n={len(values)} p50={values[len(values) // 2]:.3f}s "
                f"p99={values[int(len(values) * 0.99)]:.3f}s max={values[-1]:.3f}s"
            )
        lines += [f"  5xx: {line}" for line in run.errors_5xx[:10]]
        return lines


def dump(path: str, text: str) -> None:
    with open(path, "w") as out:
        out.write(text)


async def test_many_clients_with_ticks_keep_the_invariants_and_the_twins_agree(
    mixed: Mixed,
) -> None:
    print(f"\nmixed load: seed {SEED} (KOBAN_MIXED_SEED)")
    mixed.prospects = await create_prospects(mixed, CLIENTS)
    assert len(set(mixed.prospects)) == CLIENTS
    clients = [Client(mixed, n, guid) for n, guid in enumerate(mixed.prospects)]
    stop = asyncio.Event()
    started = time.monotonic()
    await asyncio.gather(drive(mixed, stop, random.Random(SEED)), *(c.work(stop) for c in clients))
    elapsed = time.monotonic() - started
    mixed.ticks_under_load = len(mixed.ticks)
    assert not mixed.unexpected, "\n".join(mixed.unexpected[:20])

    # Settle: webhooks, then pending intents past intent_grace, then one more tick.
    await mixed.delivered()
    grace = int(mixed.tenant.settings.intent_grace.fixed_seconds())
    await mixed.advance({"advanceBy": f"PT{grace + 60}S"})
    await resolve_pending(mixed.tenant, mixed.koban_client, mixed.now())
    await mixed.delivered()
    await mixed.advance({"advanceTo": to_iso(next_tick(mixed.now()))})
    await mixed.delivered()
    assert not mixed.unexpected, "\n".join(mixed.unexpected[:20])

    await check_tenant(mixed.store)
    problems = await twin_disagreements(
        mixed.store, mixed.koban, mixed.lots, mixed.now(), mixed.prospects
    )
    events = await stream(mixed.store)
    figures = Figures(
        elapsed,
        sum(1 for e in events if e["type"] == "koban.option.expired"),
        cast(CountingSender, mixed.koban.webhooks).kinds["option_expired"],
        Counter(e["data"]["reason"] for e in events if e["type"] == "koban.sync.drift_detected"),
        len(await needs_sync(mixed.tenant)),
    )
    print(figures.line(mixed))
    print("\n".join(figures.details(mixed)))
    if problems:
        disputed = [p.split()[1].rstrip(":") for p in problems if p.startswith("lot ")]
        stories = [await mixed.explain(code) for code in disputed]
        if os.environ.get("KOBAN_MIXED_DEBUG"):
            dump(os.environ["KOBAN_MIXED_DEBUG"], "\n".join(problems + stories))
        raise AssertionError(
            f"{len(problems)} disagreements:\n" + "\n".join(problems[:20] + stories[:3])
        )
    if SECONDS >= 5 and CLIENTS >= 20:  # the run did exercise what it claims
        assert mixed.ticks_under_load >= ADVANCES and figures.expired > 0, figures.line(mixed)
        for key in ("place 201", "prolong 200", "cancel 200", "prereserve 201", "withdraw 200"):
            assert mixed.outcomes[key] > 0, key


async def stream(store: LotStore) -> list[dict[str, Any]]:
    entries = cast(list[Any], await store.redis.xrange(store.keys.events))
    return [orjson.loads(fields[b"ce"]) for _, fields in entries]


def test_the_comparison_sees_a_disagreement() -> None:
    """`twin_compare` is not vacuous: holders, expiries and prolongations are compared."""

    def lot(*options: Option) -> Lot:
        out = Lot(extcode="X", config="two_options" if len(options) == 2 else "one_option")
        out.options = list(options)
        return out

    def option(rank: int, holder: str, expiry: int, prolonged: bool = False) -> Option:
        return Option(
            id=f"{holder}-{rank}",
            rank=rank,
            holder=holder,
            partner=None,
            placed_at=0,
            deadline=expiry,
            expiry=expiry,
            prolonged=prolonged,
        )

    same = lot(option(1, "a", 1800), option(2, "b", 3600))
    assert lot_disagreements(same, lot(option(1, "a", 1800), option(2, "b", 3600))) == []
    assert lot_disagreements(same, lot(option(1, "a", 1800), option(2, "c", 3600)))
    assert lot_disagreements(same, lot(option(1, "a", 1800), option(2, "b", 5400)))
    assert lot_disagreements(same, lot(option(1, "a", 1800), option(2, "b", 3600, True)))
    assert lot_disagreements(same, lot(option(1, "a", 1800)))
