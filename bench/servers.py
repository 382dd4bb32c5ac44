"""The HTTP bench's child processes and their set-up: the bare "hello" server (the
ceiling), the Koban sandbox with bench stock, the sweep worker, the API's environment
and tenants file, and the store loaded through its commit path."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.http_config import (
    LOAD_BATCH,
    N_LOTS,
    N_SWEEP,
    READ_TOKEN,
    ROOT,
    SANDBOX_API_KEY,
    SANDBOX_USER_KEY,
    TENANT,
    WRITE_TOKEN,
)


async def serve_hello(port: int, redis_url: str, reuse_port: bool = False) -> None:
    """The bare handler (`/hello`); diagnostics: the same plus one GET of a lot through the
    service's redis-py client (`/hello-redis`) or through `MuxReader` (`/hello-mux`), the
    floors of a route reading Redis one way or the other."""
    from aiohttp import web

    from service.entrypoints.serve import start_site, wait_for_stop
    from service.storage.redis_client import connect
    from service.storage.redis_mux import MuxReader

    redis = connect(redis_url)
    key = f"kol:{{{TENANT}}}:l:A000001"

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    async def hello_redis(request: web.Request) -> web.Response:
        raw = await redis.get(key)
        return web.json_response({"hello": len(raw or b"")})

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/hello-redis", hello_redis)
    mux = MuxReader.for_client(redis)
    assert mux is not None

    async def hello_mux(request: web.Request) -> web.Response:
        (raw,) = await mux.execute(("GET", key))
        return web.json_response({"hello": len(raw or b"")})

    app.router.add_get("/hello-mux", hello_mux)
    runner = await start_site(app, "127.0.0.1", port, reuse_port=reuse_port)
    try:
        await wait_for_stop()
    finally:
        await runner.cleanup()
        await mux.aclose()
        await redis.aclose()


async def serve_sandbox(port: int, lots: int) -> None:
    """The Koban simulator with `lots` free lots P000000… and as many prospects
    bp-000000…, plus the demo stock; Koban's default rules, no fault, no webhook target."""

    from service.entrypoints.serve import start_site, wait_for_stop
    from service.sandbox import SandboxState, build_sandbox_app, populate

    state = SandboxState(api_key=SANDBOX_API_KEY, user_key=SANDBOX_USER_KEY)
    populate(state)
    state.add_programme("BEN", "Bench programme")
    with state.muted():
        for i in range(lots):
            state.add_lot(f"P{i:06d}", programme="BEN")
            state.add_third(guid=f"bp-{i:06d}", name=f"Prospect {i}")
    runner = await start_site(build_sandbox_app(state), "127.0.0.1", port)
    try:
        await wait_for_stop()
    finally:
        await runner.cleanup()


async def sweep_worker(tick: int) -> None:
    """Wait for a line on stdin, run sweep_expiries(tick) on the bench tenant, print JSON."""
    from service.bootstrap import build_tenants
    from service.config import load_settings
    from service.storage.redis_client import connect
    from service.usecases.sweep import sweep_expiries

    settings = load_settings()
    redis = connect(os.environ["KOBAN_OPTIONS_REDIS_URL"])
    try:
        store = build_tenants(settings, redis)[TENANT].store
        await redis.ping()
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.perf_counter()
        report = await sweep_expiries(store, tick)
        seconds = time.perf_counter() - started
        print(json.dumps({"expired": report.expired, "seconds": seconds}), flush=True)
    finally:
        await redis.aclose()


def child_env(redis_url: str, tenants_file: Path, sandbox_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOBAN_OPTIONS_")}
    env.pop("REDIS_URL", None)
    prefix = f"KOBAN_OPTIONS_TENANTS__{TENANT.upper()}__"
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "KOBAN_OPTIONS_TENANTS_FILE": str(tenants_file),
            "KOBAN_OPTIONS_REDIS_URL": redis_url,
            prefix + "KOBAN_API_KEY": SANDBOX_API_KEY,
            prefix + "KOBAN_USER_KEY": SANDBOX_USER_KEY,
            prefix + "API_TOKENS": json.dumps(
                [
                    {"token": READ_TOKEN, "scopes": ["read"]},
                    {"token": WRITE_TOKEN, "scopes": ["write"]},
                ]
            ),
        }
    )
    return env


def tenants_toml(sandbox_port: int) -> str:
    # The rate limit is lifted: the figure is the service's own cost, not Koban's quota.
    return (
        f"[tenants.{TENANT}]\n"
        'zone = "Europe/Paris"\n'
        'option_lifetime = "P2D"\n'
        f'koban_base_url = "http://127.0.0.1:{sandbox_port}/api/v1"\n'
        "koban_rate_limit_per_s = 1000000\n"
    )


async def load_store(env: dict[str, str], now: int) -> tuple[int, float]:
    """LOTS availability lots (A…) and SWEEP lots with one option due at the latest tick
    (S…), through the store's commit path; returns (the sweep's tick, seconds)."""
    from service.bootstrap import build_tenants
    from service.config import load_settings
    from service.storage.redis_client import connect
    from service.storage.store import View, view
    from statecharts import transitions as tr
    from statecharts.model import DomainEvent, Lot
    from statecharts.ticks import latest_tick

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    redis = connect(env["KOBAN_OPTIONS_REDIS_URL"])
    store = build_tenants(settings, redis)[TENANT].store
    rules = store.rules
    empty: View = view(Lot(""))

    async def load(codes: list[str], holders: list[int], placed_at: int) -> None:
        for start in range(0, len(codes), LOAD_BATCH):
            batch: list[list[Any]] = []
            for code, count in zip(
                codes[start : start + LOAD_BATCH],
                holders[start : start + LOAD_BATCH],
                strict=True,
            ):
                lot = Lot(code, program="BEN")
                events = [DomainEvent("lot.imported", now, {"program": "BEN", "actor": "sync"})]
                for h in range(count):
                    events += tr.place_option(
                        lot,
                        option_id=f"{code}o{h}",
                        holder=f"third-{code}-{h}",
                        partner=None,
                        placed_at=placed_at,
                        rules=rules,
                        via_api=True,
                        actor="api",
                    )
                batch.append(store.transition(empty, lot, events, now))
            await store.commit(batch, mode="each")

    started = time.perf_counter()
    try:
        await load(
            [f"A{i:06d}" for i in range(N_LOTS)], [(0, 0, 1, 2)[i % 4] for i in range(N_LOTS)], now
        )
        # Placed three days ago: due (lifetime two days) at or before the latest tick.
        await load([f"S{i:06d}" for i in range(N_SWEEP)], [1] * N_SWEEP, now - 3 * 86400)
    finally:
        await redis.aclose()
    return latest_tick(now), time.perf_counter() - started
