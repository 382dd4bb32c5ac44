"""`make bench` (operator page): what the page and its session cost, against the API's own
reads in the same run, over loopback HTTP on a private redis-server.

* ``ui_cookie_read_us`` vs ``ui_bearer_read_us``: ``GET …/lots/{x}`` with the session
  cookie (one more Redis GET to find the session) and with the bearer token; the ratio;
* ``ui_overview_ms`` vs ``ui_listing_ms``: ``GET /ui/`` over LOTS lots (the rendered page)
  and ``GET …/lots?limit=LOTS`` (their JSON); the ratio;
* ``ui_lot_page_ms``: ``GET /ui/lots/{x}`` (lot, history, marked chart).

Each figure is the best of ROUNDS rounds (the machine is shared). Sizes: KOBAN_BENCH_UI_LOTS
(1 000), _REQUESTS (300 sequential reads per round), _ROUNDS (5).
"""

from __future__ import annotations

import os
import time

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr

from bench.procs import run_on_private_redis
from service.bootstrap import rules_from
from service.clock import FixedClock
from service.config import ApiToken, TenantSettings
from service.entrypoints.api import build_api_app
from service.storage.redis_client import connect
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants

LOTS = int(os.environ.get("KOBAN_BENCH_UI_LOTS", "1000"))
REQUESTS = int(os.environ.get("KOBAN_BENCH_UI_REQUESTS", "300"))
ROUNDS = int(os.environ.get("KOBAN_BENCH_UI_ROUNDS", "5"))
TOKEN = "bench-ui-admin"
NOW = 1795428600


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.3f} {unit}", flush=True)


async def best(
    session: aiohttp.ClientSession, n: int, **cases: tuple[str, dict[str, str]]
) -> dict[str, float]:
    """Each case's best round (mean seconds per request); the cases' rounds alternate, so
    a burst of the machine's other load lands on all of them alike."""
    out = dict.fromkeys(cases, float("inf"))
    for _ in range(ROUNDS):
        for name, (url, headers) in cases.items():
            started = time.perf_counter()
            for _ in range(n):
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status
            out[name] = min(out[name], (time.perf_counter() - started) / n)
    return out


async def run(redis_url: str) -> None:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log lines
    redis = connect(redis_url)
    settings = TenantSettings(api_tokens=[ApiToken(token=SecretStr(TOKEN), scopes={"admin"})])
    rules = rules_from(settings)
    tenant = Tenant("bench", settings, rules, LotStore(redis, "bench", rules), FixedClock(NOW))
    for i in range(LOTS):
        await tenant.store.import_lot(f"B{i:04d}", NOW - 60, program="BIG", label=f"Lot {i}")
    app = build_api_app(Tenants({"bench": tenant}), redis, koban_factory=lambda t, s: None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                base + "/ui/session", data={"token": TOKEN}, allow_redirects=False
            ) as answer:
                cookie = {"Cookie": f"kol_session={answer.cookies['kol_session'].value}"}
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            lot = f"{base}/v1/tenants/bench/lots/B0001"
            reads = await best(session, REQUESTS, token=(lot, bearer), cookie=(lot, cookie))
            bench("ui_bearer_read_us", reads["token"] * 1e6, "us")
            bench("ui_cookie_read_us", reads["cookie"] * 1e6, "us")
            bench("ui_cookie_read_ratio", reads["cookie"] / reads["token"], "x")
            listing_url = f"{base}/v1/tenants/bench/lots?limit={LOTS}"
            pages = await best(
                session,
                max(3, REQUESTS // 100),
                listing=(listing_url, cookie),
                overview=(base + "/ui/", cookie),
                lot_page=(base + "/ui/lots/B0001", cookie),
            )
            bench("ui_listing_ms", pages["listing"] * 1e3, "ms")
            bench("ui_overview_ms", pages["overview"] * 1e3, "ms")
            bench("ui_overview_ratio", pages["overview"] / pages["listing"], "x")
            bench("ui_lot_page_ms", pages["lot_page"] * 1e3, "ms")
    finally:
        await runner.cleanup()
        await redis.aclose()


def main() -> None:
    run_on_private_redis(run)


if __name__ == "__main__":
    main()
