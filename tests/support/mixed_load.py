"""The mixed load's stack and clients (no tests here): `Mixed` wires the API and the Koban
sandbox as `koban-options run` does, on the tenant's test clock; each `Client` is a
prospect working through the API; `drive` moves the clock; `documented` says which answers
each kind of request may give.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_mixed.py`.
"""

from __future__ import annotations

import asyncio
import json as _json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from service.koban import KobanClient
from service.sandbox import SandboxState, WebhookSender
from service.sandbox.webhooks import Delivery, Webhook
from service.storage.store import LotStore
from service.tenancy import Tenant
from statecharts.ticks import parse_instant, to_iso
from tests.support.api_harness import API_KEY, TOKENS, USER_KEY, Answer

CLIENTS = int(os.environ.get("KOBAN_MIXED_CLIENTS", "50"))
LOTS = int(os.environ.get("KOBAN_MIXED_LOTS", "200"))
SECONDS = float(os.environ.get("KOBAN_MIXED_SECONDS", "10"))
ADVANCES = int(os.environ.get("KOBAN_MIXED_ADVANCES", "12"))
SEED = int(os.environ.get("KOBAN_MIXED_SEED", "20261123"))
# Clients pause between operations (uniformly, this on average) so that together they offer
# about `KOBAN_MIXED_RATE` operations per second whatever their number: a test of many
# clients, not of one process saturated (which answers 503 STORE_UNAVAILABLE, documented).
RATE = float(os.environ.get("KOBAN_MIXED_RATE", "300"))
THINK_S = CLIENTS / RATE

SECRET = "mixed-webhook-secret"
PARTNER = "cgp-1"  # TOKENS["cgp1"]'s partner
LIFETIME = "PT12H"  # options live a few clock moves: expiries all through the run
HOUR = 3600
# Generous deadlines for waiting on conditions (never a timed assertion).
DRAIN_S = 300.0

# What each kind of request may answer here (README "Error codes"): status → codes (None:
# a success, no errorCode). Stricter than the table: every lot and prospect exists, no
# per-user limit nor prolongation cap is set, and only a partner token may get 403 (an
# option addressed by rank that is another partner's by then). Every kind but the clock may
# also answer the documented 502 / 503.
UNAVAILABLE: dict[int, set[str | None]] = {
    502: {"KOBAN_ERROR", "KOBAN_OUTCOME_UNKNOWN"},
    503: {"KOBAN_UNAVAILABLE", "STORE_UNAVAILABLE"},
}
DOCUMENTED: dict[str, dict[int, set[str | None]]] = {
    "place": {
        201: {None},
        202: {None},
        409: {
            "LOT_PRERESERVED",
            "LOT_FULL",
            "PROSPECT_ALREADY_HOLDS",
            "PROSPECT_OPTION_LIMIT",
            "RANK_NOT_AVAILABLE",
        },
    },
    "prolong": {
        200: {None},
        404: {"OPTION_NOT_FOUND"},
        409: {"OPTION_MOVED", "ALREADY_PROLONGED"},
        422: {"PROLONGATION_NOT_LATER", "VALIDATION_FAILED"},
    },
    "cancel": {200: {None}, 404: {"OPTION_NOT_FOUND"}, 409: {"OPTION_MOVED"}},
    "prereserve": {201: {None}, 409: {"LOT_NOT_AVAILABLE"}},
    "withdraw": {200: {None}, 409: {"NOT_PRERESERVED", "PRERESERVATION_HOLDER_MISMATCH"}},
    "read": {200: {None}},
    "clock": {200: {None}},
}
ENVELOPE = {"errorCode", "message", "kobanCode", "source", "requestId", "errors"}


def documented(kind: str, answer: Answer, partner: bool) -> bool:
    allowed = dict(DOCUMENTED[kind])
    if kind != "clock":
        allowed.update(UNAVAILABLE)
    if partner and kind in ("prolong", "cancel"):
        allowed[403] = {"FORBIDDEN"}
    if answer.code not in allowed.get(answer.status, set()):
        return False
    if answer.status >= 400:
        body = answer.body
        if not isinstance(body, dict) or set(body) != ENVELOPE:
            return False
        if answer.status == 503 and "Retry-After" not in answer.headers:
            return False
    return "X-Request-ID" in answer.headers


# --------------------------------------------------------------------------- the stack


@dataclass
class Mixed:
    tenant: Tenant
    koban: SandboxState
    api_url: str
    http: aiohttp.ClientSession
    koban_client: KobanClient  # the scheduler's kind of client (intent resolution)
    lots: list[str]
    prospects: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    errors_5xx: list[str] = field(default_factory=list)  # the documented 502/503, for the record
    ticks: list[str] = field(default_factory=list)
    ticks_under_load: int = 0
    latency: dict[str, list[float]] = field(default_factory=dict)
    journal: dict[str, list[str]] = field(default_factory=dict)  # lot → its writes' answers

    @property
    def store(self) -> LotStore:
        return self.tenant.store

    def now(self) -> int:
        return self.tenant.clock.now()

    async def call(
        self,
        kind: str,
        method: str,
        rest: str,
        *,
        json: Any = None,
        token: str = "write",
    ) -> Answer:
        headers = {"Authorization": f"Bearer {TOKENS[token][0]}"}
        body = None
        if json is not None:
            body = _json.dumps(json)
            headers["Content-Type"] = "application/json"
        url = f"{self.api_url}/v1/tenants/{self.tenant.name}/{rest}"
        sent = time.monotonic()
        async with self.http.request(method, url, data=body, headers=headers) as response:
            answer = await Answer.read(response)
        label = kind if kind != "read" else "read " + rest.split("/")[0].split("?")[0]
        self.latency.setdefault(label, []).append(time.monotonic() - sent)
        self.outcomes[f"{kind} {answer.status}{' ' + answer.code if answer.code else ''}"] += 1
        if answer.status >= 500:
            self.errors_5xx.append(f"{kind} {method} {rest} → {answer.status} {answer.body}")
        if not documented(kind, answer, TOKENS[token][2] is not None):
            self.unexpected.append(f"{kind} {method} {rest} {json!r} → {answer}")
        if kind not in ("read", "clock") and rest.startswith("lots/"):
            code = rest.split("/")[1]
            self.journal.setdefault(code, []).append(
                f"[{self.now()}] {method} {rest} {json or ''} → {answer.status} {answer.code or ''}"
            )
        return answer

    async def explain(self, code: str) -> str:
        """A disputed lot's story: the writes made on it and the service's history."""
        history = await self.store.history(code)
        lines = [f"  {line}" for line in self.journal.get(code, [])]
        lines += [
            f"  {e['time']} {e['type']} {e['data'].get('thirdGuid') or ''} "
            f"{e['data'].get('actor') or ''} {e['data'].get('reason') or ''}"
            for e in history
        ]
        return f"{code}:\n" + "\n".join(lines)

    async def delivered(self) -> None:
        """Every webhook fired so far delivered (the sender's queue is empty); none failed."""
        await asyncio.wait_for(self.koban.webhooks.drain(), DRAIN_S)
        stats = self.koban.webhooks.stats
        failed = [d.as_json() for d in self.koban.webhooks.deliveries if d.outcome == "failed"]
        assert stats.failed == 0 and stats.dropped == 0, failed[:5]

    async def advance(self, body: dict[str, str]) -> Answer:
        answer = await self.call("clock", "POST", "clock", json=body, token="admin")
        assert answer.status == 200, answer
        self.ticks.extend(answer.body["ticksRun"])
        return answer


class CountingSender(WebhookSender):
    """The sandbox's webhook sender, counting what it fires by kind."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.kinds: Counter[str] = Counter()

    def fire(self, hook: Webhook) -> Delivery:
        self.kinds[hook.kind] += 1
        return super().fire(hook)


# --------------------------------------------------------------------------- clients


def own_options(page: Any) -> list[dict[str, Any]]:
    return [o for o in page.get("options", []) if not o.get("redacted")]


class Client:
    """One prospect working through the API with its own seeded random choices."""

    def __init__(self, run: Mixed, n: int, guid: str) -> None:
        self.run = run
        self.me = guid
        self.rng = random.Random(SEED * 1009 + n)
        self.token = "cgp1" if n % 10 == 0 else "write"
        self.hot = run.lots[: max(4, len(run.lots) // 50)]
        self.held: set[str] = set()  # lots where this prospect placed an option
        self.prereserved: list[str] = []

    def lot(self) -> str:
        pool = self.hot if self.rng.random() < 0.35 else self.run.lots
        return self.rng.choice(pool)

    async def call(self, kind: str, method: str, rest: str, json: Any = None) -> Answer:
        return await self.run.call(kind, method, rest, json=json, token=self.token)

    async def mine(self) -> list[dict[str, Any]]:
        page = await self.call("read", "GET", f"prospects/{self.me}")
        return own_options(page.body) if page.status == 200 else []

    async def my_option(self) -> dict[str, Any] | None:
        """One of this prospect's options as it stands now (the lot read first, as a client
        about to act on it would: its rank may have moved)."""
        while self.held:
            code = self.rng.choice(sorted(self.held))
            lot = await self.call("read", "GET", f"lots/{code}")
            if lot.status == 200:
                for option in lot.body["options"]:
                    if option.get("thirdGuid") == self.me:
                        return {**option, "extcode": code}
            self.held.discard(code)  # ended meanwhile (expired, cancelled, converted)
        return None

    async def place(self) -> None:
        code = self.lot()
        body: dict[str, Any] = {"thirdGuid": self.me}
        if self.rng.random() < 0.05:
            body["rank"] = self.rng.choice((1, 2))
        answer = await self.call("place", "POST", f"lots/{code}/options", body)
        if answer.status in (201, 202):
            self.held.add(code)

    async def prolong(self) -> None:
        option = await self.my_option()
        if option is None:
            return await self.place()
        deadline = int(parse_instant(option["deadline"]))
        roll = self.rng.random()
        until: str
        if roll < 0.6:
            until = to_iso(deadline + self.rng.randrange(1, 30) * HOUR)
        elif roll < 0.8:
            until = to_iso(deadline - self.rng.randrange(0, 4 * HOUR))  # no later tick
        elif roll < 0.9:
            until = self.rng.choice(("tomorrow", "2026-13-40T99:00:00Z", to_iso(deadline)[:-1]))
        else:
            until = to_iso(deadline + 5 * HOUR)
        rank = option["rank"] if self.rng.random() < 0.95 else 3
        body: dict[str, Any] = {"until": until}
        if self.rng.random() < 0.75:
            body["thirdGuid"] = self.me
        await self.call(
            "prolong", "POST", f"lots/{option['extcode']}/options/{rank}/prolongation", body
        )

    async def cancel(self) -> None:
        option = await self.my_option()
        if option is None:
            return await self.place()
        code = option["extcode"]
        query = f"?thirdGuid={self.me}" if self.rng.random() < 0.7 else ""
        answer = await self.call("cancel", "DELETE", f"lots/{code}/options/{option['rank']}{query}")
        if answer.status in (200, 404):
            self.held.discard(code)

    async def prereserve(self) -> None:
        if self.held and self.rng.random() < 0.7:
            code = self.rng.choice(sorted(self.held))
        else:  # any lot but the hot ones, which would stay closed to everyone else
            code = self.rng.choice(self.run.lots[len(self.hot) :])
        price = self.rng.randrange(150_000, 400_000)
        body = {"thirdGuid": self.me, "price": f"{price}.00", "deposit": f"{price // 20}.00"}
        answer = await self.call("prereserve", "POST", f"lots/{code}/prereservation", body)
        if answer.status == 201:
            self.prereserved.append(code)
            self.held.discard(code)

    async def withdraw(self) -> None:
        if self.prereserved and self.rng.random() < 0.85:
            code = self.prereserved.pop(self.rng.randrange(len(self.prereserved)))
        else:
            code = self.lot()
        body = {"thirdGuid": self.me}
        await self.call("withdraw", "POST", f"lots/{code}/prereservation/withdrawal", body)

    async def read(self) -> None:
        roll = self.rng.random()
        if roll < 0.35:
            await self.call("read", "GET", f"lots/{self.lot()}")
        elif roll < 0.6:
            await self.call("read", "GET", f"lots/{self.lot()}/availability?thirdGuid={self.me}")
        elif roll < 0.8:
            await self.mine()
        elif roll < 0.9:
            await self.call("read", "GET", f"options?thirdGuid={self.me}")
        else:
            await self.call("read", "GET", "lots?status=OPTION&limit=50")

    OPS: tuple[tuple[str, int], ...] = (
        ("place", 30),
        ("prolong", 13),
        ("cancel", 12),
        ("prereserve", 2),
        ("withdraw", 3),
        ("read", 40),
    )

    async def work(self, stop: asyncio.Event) -> None:
        names = [name for name, _ in self.OPS]
        weights = [weight for _, weight in self.OPS]
        while not stop.is_set():
            await getattr(self, self.rng.choices(names, weights)[0])()
            await asyncio.sleep(self.rng.random() * 2 * THINK_S)


async def drive(run: Mixed, stop: asyncio.Event, rng: random.Random) -> None:
    """`ADVANCES` clock moves of 30 min to 12 h (plus some minutes), planned evenly over
    `SECONDS`; a move that falls behind (ticks take longer under load) is not waited for.
    The load stops once `SECONDS` are over and every move was made under it."""
    started = time.monotonic()
    for n in range(1, ADVANCES + 1):
        planned = started + n * SECONDS / (ADVANCES + 1)
        await asyncio.sleep(max(0.0, planned - time.monotonic()))
        hours = rng.choice((0, 1, 2, 3, 5, 8, 11))
        minutes = 30 + rng.randrange(0, 30) if hours == 0 else rng.randrange(0, 60)
        await run.advance({"advanceBy": f"PT{hours}H{minutes}M"})
    await asyncio.sleep(max(0.0, started + SECONDS - time.monotonic()))
    stop.set()


# --------------------------------------------------------------------------- the test


async def create_prospects(run: Mixed, count: int) -> list[str]:
    """`count` prospects created in Koban (``ncThird/PostOne``), as a CRM would."""
    creator = KobanClient(
        run.http, run.tenant.settings.koban_base_url, API_KEY, USER_KEY, rate_per_s=1e6
    )
    sem = asyncio.Semaphore(50)

    async def one(n: int) -> str:
        async with sem:
            return await creator.post_third(f"Mixed{n}", "P", f"mixed{n}@example.invalid")

    return list(await asyncio.gather(*(one(n) for n in range(count))))
