"""The twin test's two sides and its random operations (no tests here): `Twin` drives the
Koban sandbox and the service on one clock, compares them after every step, and
`WebhooksFirst` holds some of Koban's answers until their webhooks are delivered.

What it sets up and checks, in detail: docs/testing.md, `test_twin.py`.
"""

from __future__ import annotations

import copy
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.clock import FixedClock
from service.koban import KobanClient, KobanError
from service.sandbox import SandboxRefusal, SandboxState
from service.storage.store import LotStore
from service.tenancy import Tenant
from service.usecases.flows import KobanRefusal, OptionFlows, Placed
from service.usecases.sweep import sweep_expiries
from service.usecases.sync import reconcile, sync_stock
from statecharts import transitions as tr
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import Lot, Option
from statecharts.ticks import ceil_tick, deadline_from_lifetime, ticks_between
from tests.support.instants import ts
from tests.support.twin_compare import twin_disagreements

OPS = int(os.environ.get("KOBAN_TWIN_OPS", "300"))
SEED = int(os.environ.get("KOBAN_TWIN_SEED", "20260325"))
SECRET = "twin-webhook-secret"
API_KEY, USER_KEY = "twin-api-key", "twin-user-key"


# Four days before the spring DST change in Europe/Paris: the run crosses it.
T0 = ts("2026-03-25T08:10:00Z")
HOUR, DAY = 3600, 86400

LOTS = tuple(f"TW-{n:02d}" for n in range(1, 11))
BLOCKED, SOLD, EARLY = "TW-BLQ", "TW-SOLD", "TW-EARLY"
ALL_LOTS = (*LOTS, BLOCKED, SOLD, EARLY)
PROSPECTS = tuple(f"twin-p{n}" for n in range(1, 7))
EARLY_BIRD = "twin-early-bird"  # holds EARLY's option from before the import; never acts
GHOST = "twin-ghost"  # unknown to Koban
PARTNER = "twin-cgp"

WRITES = frozenset({"Add", "Prolong", "Undo", "PreresvAdd", "PreresvDesist"})
SERVICE_ONLY = frozenset({ErrorCode.OPTION_MOVED})  # refusals Koban cannot make
ALLOWED_DRIFT = frozenset({"reserved_without_prereservation"})

Verdict = ErrorCode | None


def _code(exc: RuleViolation | SandboxRefusal) -> ErrorCode:
    if isinstance(exc, RuleViolation):
        return exc.code
    assert exc.reason is not None, exc.message
    return ErrorCode(exc.reason)


@dataclass
class Twin:
    tenant: Tenant
    clock: FixedClock
    state: SandboxState
    sandbox: TestServer
    http: aiohttp.ClientSession
    koban: KobanClient
    flows: OptionFlows
    rng: random.Random
    ordering: WebhooksFirst
    stats: Counter[str] = field(default_factory=Counter)
    journal: list[str] = field(default_factory=list)
    events_seen: str = "0-0"
    drift: Counter[str] = field(default_factory=Counter)

    @property
    def store(self) -> LotStore:
        return self.tenant.store

    @property
    def rules(self) -> Any:
        return self.tenant.rules

    def now(self) -> int:
        return self.clock.now()

    def note(self, text: str) -> None:
        self.journal.append(f"[{self.now()}] {text}")

    def where(self) -> str:
        return "\n  " + "\n  ".join(self.journal[-12:])

    def writes(self) -> int:
        return sum(n for (name, _), n in self.koban.calls.items() if name in WRITES)

    # ------------------------------------------------------------------ sandbox HTTP

    async def control(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        url = self.sandbox.make_url(path)
        async with self.http.request(method, url, json=body) as resp:
            return resp.status, cast(dict[str, Any], await resp.json())

    async def delivered(self) -> None:
        """Wait until every webhook fired so far is delivered; none may have failed."""
        status, body = await self.control("GET", "/_sandbox/webhooks")
        assert status == 200
        stats = body["stats"]
        failed = [d for d in body["deliveries"] if d["outcome"] == "failed"]
        assert stats["failed"] == 0, f"webhooks failed: {failed}{self.where()}"

    # ------------------------------------------------------------------ comparison

    async def service_lot(self, code: str) -> Lot:
        lot = await self.store.read(code, self.now())
        assert lot is not None, code
        return lot

    async def compare(self, codes: tuple[str, ...] = ALL_LOTS) -> None:
        problems = await twin_disagreements(
            self.store, self.state, codes, self.now(), PROSPECTS, opaque_holders={EARLY_BIRD}
        )
        assert not problems, "\n".join(problems) + self.where()

    async def check_drift(self) -> None:
        """No `sync.drift_detected` since the last look, except the documented kind."""
        entries = cast(
            list[Any],
            await self.store.redis.xrange(self.store.keys.events, f"({self.events_seen}", "+"),
        )
        for entry_id, fields in entries:
            self.events_seen = entry_id.decode()
            event = orjson.loads(fields[b"ce"])
            if event["type"] != "koban.sync.drift_detected":
                continue
            reason = event["data"]["reason"]
            self.drift[reason] += 1
            assert reason in ALLOWED_DRIFT, f"unexpected drift {event}{self.where()}"

    async def settle(self) -> None:
        await self.delivered()
        await self.compare()
        await self.check_drift()

    # ------------------------------------------------------------------ refusals

    def sandbox_lot(self, code: str) -> Lot:
        return copy.deepcopy(self.state.lots[code])

    def would_refuse(self, judge: Callable[[Lot], object], code: str) -> Verdict:
        """The sandbox's own rules on a copy of its lot: the refusal code, or None."""
        try:
            judge(self.sandbox_lot(code))
        except (RuleViolation, SandboxRefusal) as exc:
            return _code(exc)
        return None

    async def attempt(
        self,
        name: str,
        code: str,
        expected: Verdict,
        call: Awaitable[object],
    ) -> object | None:
        """Run a service write and hold it to the sandbox's verdict `expected`."""
        before = self.sandbox_lot(code)
        fired = self.state.webhooks.stats.fired
        writes = self.writes()
        try:
            result = await call
        except KobanRefusal as exc:
            # The service let it through and Koban refused: only for what the service
            # cannot know (Koban's prospects).
            self.note(f"{name} {code}: refused by Koban {exc.code.value}")
            self.stats[f"{name}:koban:{exc.code.value}"] += 1
            assert exc.code is ErrorCode.PROSPECT_UNKNOWN, f"{exc!r}{self.where()}"
            assert expected is exc.code, f"{exc!r} vs sandbox {expected}{self.where()}"
            assert self.state.lots[code] == before, self.where()
            return None
        except RuleViolation as exc:
            self.note(f"{name} {code}: refused locally {exc.code.value}")
            self.stats[f"{name}:local:{exc.code.value}"] += 1
            assert self.writes() == writes, f"a local refusal reached Koban{self.where()}"
            assert self.state.lots[code] == before, self.where()
            assert self.state.webhooks.stats.fired == fired, self.where()
            if exc.code not in SERVICE_ONLY:
                assert expected is exc.code, (
                    f"service refused {exc.code.value}, sandbox says {expected}{self.where()}"
                )
            return None
        self.note(f"{name} {code}: done")
        self.stats[f"{name}:ok"] += 1
        assert expected is None, (
            f"service did {name}, sandbox would refuse {expected}{self.where()}"
        )
        return result

    # ------------------------------------------------------------------ picking

    def pick_lot(self) -> str:
        return self.rng.choice(ALL_LOTS) if self.rng.random() < 0.15 else self.rng.choice(LOTS)

    def optioned_lot(self) -> str:
        held = [c for c in ALL_LOTS if self.state.lots[c].options]
        return self.rng.choice(held) if held and self.rng.random() < 0.9 else self.pick_lot()

    def rank(self, lot: Lot) -> int:
        """Mostly a rank that holds an option; sometimes any (OPTION_NOT_FOUND)."""
        if lot.options and self.rng.random() < 0.85:
            return self.rng.choice([o.rank for o in lot.options])
        return self.rng.choice((1, 2, 3))

    async def option_to_change(self) -> tuple[str, Lot, int, Option | None, str | None]:
        """A lot (the service's view), a rank, the option there if any, and the prospect a
        by-rank call names: its holder, sometimes another prospect (a wrong thirdGuid)."""
        code = self.optioned_lot()
        lot = await self.service_lot(code)
        rank = self.rank(lot)
        option = lot.option_at(rank)
        third = option.holder if option is not None else None
        if option is not None and self.rng.random() < 0.08:
            third = next(p for p in PROSPECTS if p != option.holder)
        return code, lot, rank, option, third

    def prospect(self) -> str:
        return self.rng.choice(PROSPECTS)

    # ------------------------------------------------------------------ API operations

    async def api_place(self) -> None:
        code = self.pick_lot()
        third = GHOST if self.rng.random() < 0.04 else self.prospect()
        partner = PARTNER if self.rng.random() < 0.3 else None

        def judge(lot: Lot) -> None:
            # Koban's Add rules in the service's order (chart, then Koban's prospects).
            self.state._check_placement(lot, third, None, True)
            if third not in self.state.prospects:
                raise RuleViolation(ErrorCode.PROSPECT_UNKNOWN)

        expected = self.would_refuse(judge, code)
        self.note(f"api place {code} by {third}")
        result = await self.attempt("place", code, expected, self.flows.place(code, third, partner))
        if result is not None:
            assert isinstance(result, Placed), f"{result!r}{self.where()}"

    async def api_prolong(self) -> None:
        code, lot, rank, option, third = await self.option_to_change()
        base = option.deadline if option is not None and option.deadline else self.now()
        step = self.rng.choice((-2 * HOUR, 0, HOUR, 6 * HOUR, DAY, 2 * DAY, 3 * DAY, 5 * DAY))
        until = base + step + self.rng.randrange(-1800, 1800)

        def judge(lot: Lot) -> None:
            tr.prolong_option(lot, rank, until, None, self.now(), self.rules, "koban")

        expected = self.would_refuse(judge, code)
        self.note(f"api prolong {code} rank {rank} ({third}) until {until}")
        if expected is ErrorCode.PROLONGATION_TOO_LONG and option is not None:
            try:
                tr.prolong_option(copy.deepcopy(lot), rank, until, third, self.now(), self.rules)
            except RuleViolation:
                pass
            else:
                await self.cap_window(code, rank, until, third)
                return
        await self.attempt("prolong", code, expected, self.flows.prolong(code, rank, until, third))

    async def cap_window(self, code: str, rank: int, until: int, third: str | None) -> None:
        """`max_prolongation` counts from the original deadline as each side knows it: the
        service only knows the tick Koban publishes (ExpDate / EndDate), Koban its own
        deadline, up to 30 min earlier. A date in between passes locally and Koban refuses
        it (HTTP 422 without a documented code: a `KobanError`); nothing changes."""
        mine = (await self.service_lot(code)).option_at(rank)
        theirs = self.state.lots[code].option_at(rank)
        assert mine is not None and theirs is not None
        assert mine.original_deadline is not None and theirs.original_deadline is not None
        assert mine.original_deadline == ceil_tick(theirs.original_deadline), self.where()
        before_sandbox = self.sandbox_lot(code)
        before_service = await self.store.load(code)
        with pytest.raises(KobanError) as caught:
            await self.flows.prolong(code, rank, until, third)
        assert caught.value.status == 422, caught.value
        assert self.state.lots[code] == before_sandbox, self.where()
        assert await self.store.load(code) == before_service, self.where()
        self.note(f"prolong {code}: within the cap's 30-minute window, refused by Koban")
        self.stats["prolong:cap-window"] += 1

    async def api_cancel(self) -> None:
        code, _, rank, _, third = await self.option_to_change()

        def judge(lot: Lot) -> None:
            tr.cancel_option(lot, rank, None, self.now(), self.rules, "koban")

        expected = self.would_refuse(judge, code)
        self.note(f"api cancel {code} rank {rank} ({third})")
        await self.attempt("cancel", code, expected, self.flows.cancel(code, rank, third))

    async def api_prereserve(self) -> None:
        code = self.optioned_lot() if self.rng.random() < 0.5 else self.pick_lot()
        lot = self.state.lots[code]
        holders = [o.holder for o in lot.options if o.holder in PROSPECTS]
        third = self.rng.choice(holders) if holders and self.rng.random() < 0.6 else None
        third = third or (GHOST if self.rng.random() < 0.05 else self.prospect())
        price = self.rng.randrange(150_000, 400_000) * 100
        deposit = price // 20

        def judge(lot: Lot) -> None:
            # Koban's rules in the service's order (chart first; Koban answers 02 first).
            tr.prereserve(lot, third, None, price, deposit, self.now(), self.rules, "koban")
            if third not in self.state.prospects:
                raise RuleViolation(ErrorCode.PROSPECT_UNKNOWN)

        expected = self.would_refuse(judge, code)
        self.note(f"api prereserve {code} by {third}")
        await self.attempt(
            "prereserve", code, expected, self.flows.prereserve(code, third, price, deposit)
        )

    async def api_withdraw(self) -> None:
        held = [c for c in ALL_LOTS if self.state.lots[c].prereservation is not None]
        code = self.rng.choice(held) if held and self.rng.random() < 0.85 else self.pick_lot()
        pre = self.state.lots[code].prereservation
        third = pre.holder if pre is not None and self.rng.random() < 0.85 else self.prospect()

        def judge(lot: Lot) -> None:
            tr.withdraw(lot, third, self.now(), self.rules, "koban")

        expected = self.would_refuse(judge, code)
        self.note(f"api withdraw {code} by {third}")
        await self.attempt("withdraw", code, expected, self.flows.withdraw(code, third))

    # ------------------------------------------------------------------ Koban-UI actions

    async def ui(self, name: str, code: str, path: str, body: dict[str, Any]) -> int:
        """A Koban-UI action: when the sandbox refuses it, neither side changes."""
        before_sandbox = self.sandbox_lot(code)
        before_service = await self.store.load(code)
        status, answer = await self.control("POST", f"/_sandbox/lots/{code}/{path}", body)
        if status >= 300:
            self.note(f"ui {name} {code}: refused {status} {answer.get('reason')}")
            self.stats[f"ui-{name}:refused:{answer.get('reason') or status}"] += 1
            assert self.state.lots[code] == before_sandbox, self.where()
            assert await self.store.load(code) == before_service, self.where()
        else:
            self.note(f"ui {name} {code}: done")
            self.stats[f"ui-{name}:ok"] += 1
        return status

    async def same_identity_ended(self, code: str, third: str) -> bool:
        """Whether an option of `third` on `code` ended with the ExpDate a placement now
        would get — its deadline on that tick, or it ended in the half hour whose
        placements expire at that tick: the placed webhook, identified by (lot, third,
        ExpDate), would then read as a late copy of the ended option's and be ignored
        (`service.usecases.koban_webhooks._ended_already`)."""
        rules = self.rules
        tick = ceil_tick(deadline_from_lifetime(self.now(), rules.option_lifetime, rules.zone))
        pattern = f"{code}|{third}|*"
        async for member, ended in self.store.redis.zscan_iter(
            self.store.keys.tombstones, match=pattern
        ):
            if member.split(b"|")[2] == str(tick).encode():
                return True
            outlived = deadline_from_lifetime(int(ended), rules.option_lifetime, rules.zone)
            if tick <= ceil_tick(outlived):
                return True
        return False

    async def ui_place(self) -> None:
        code = self.pick_lot()
        third = self.prospect()
        if await self.same_identity_ended(code, third):
            self.note(f"ui place {code} by {third}: skipped, same identity as an ended option")
            self.stats["ui-place:skipped-ambiguous"] += 1
            return
        self.note(f"ui place {code} by {third}")
        expected = self.would_refuse(
            lambda lot: self.state._check_placement(lot, third, None, False), code
        )
        status = await self.ui("place", code, "options", {"thirdGuid": third})
        # The service's pre-check must never refuse what Koban would accept.
        assert (status == 201) == (expected is None), f"{status} vs {expected}{self.where()}"

    async def ui_reserve(self) -> None:
        held = [c for c in ALL_LOTS if self.state.lots[c].config == "prereserved"]
        code = self.rng.choice(held) if held and self.rng.random() < 0.7 else self.pick_lot()
        self.note(f"ui reservation {code}")
        await self.ui("reserve", code, "reservation", {})

    async def ui_withdraw(self) -> None:
        held = [c for c in ALL_LOTS if self.state.lots[c].config in ("prereserved", "reserved")]
        code = self.rng.choice(held) if held and self.rng.random() < 0.8 else self.pick_lot()
        self.note(f"ui withdrawal {code}")
        await self.ui("withdraw", code, "withdrawal", {})

    # ------------------------------------------------------------------ time

    async def advance(self, seconds: int) -> None:
        start, target = self.now(), self.now() + seconds
        self.note(f"clock +{seconds}s")
        for tick in ticks_between(start, target):
            self.clock.set(tick)
            if self.rng.random() < 0.5:
                await sweep_expiries(self.store, tick)
                await self.sandbox_ticks()
            else:
                await self.sandbox_ticks()
                await sweep_expiries(self.store, tick)
            self.note(f"tick {tick}")
            self.stats["ticks"] += 1
            await self.settle()
        self.clock.set(target)
        await self.sandbox_ticks()

    async def sandbox_ticks(self) -> None:
        """The sandbox runs the ticks its clock passed and delivers their webhooks."""
        status, body = await self.control("POST", "/_sandbox/clock", {})
        assert status == 200 and body["now"] == self.now(), body

    async def wait(self) -> None:
        await self.advance(self.rng.randrange(60, 25 * 60))

    async def jump(self) -> None:
        hours = self.rng.choice((0.5, 1, 2, 5, 11, 20, 30))
        await self.advance(int(hours * HOUR) + self.rng.randrange(0, 30 * 60))

    async def sync(self) -> None:
        """An incremental stock sync and a reconciliation find nothing to fix."""
        report = await sync_stock(self.tenant, self.koban, self.now())
        self.note(f"sync: {report.seen} seen")
        assert (report.imported, report.changed, report.drift) == (0, 0, 0), (
            f"{report}{self.where()}"
        )
        held = [c for c in ALL_LOTS if self.state.lots[c].options]
        rec = await reconcile(self.tenant, self.koban, self.now(), extcodes=held)
        assert set(rec.outcomes.values()) <= {"agreed", "deferred"}, f"{rec}{self.where()}"
        self.stats["sync"] += 1


class WebhooksFirst:
    """A share (`p`) of Koban's write answers wait until their webhooks are delivered:
    delivery is unordered, so the service must cope with a webhook that arrives before
    Koban's answer to its own call."""

    def __init__(self, state: SandboxState, rng: random.Random, p: float = 0.5) -> None:
        self.state, self.rng, self.p = state, rng, p

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        response = await handler(request)
        if (
            request.method == "POST"
            and request.path.startswith("/api/v1/")
            and self.rng.random() < self.p
        ):
            await self.state.webhooks.drain()
        return response
