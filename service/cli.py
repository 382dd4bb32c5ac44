"""`koban-options`: the operator's command line (SPEC §1).

Only commands that work are listed; `api`, `scheduler` and `run` arrive with their issues.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from service import diagram
from service.config import ConfigError, Settings, load_settings
from service.redis_client import connect
from service.tenancy import build_tenants
from statecharts.ticks import next_tick, to_iso

DEV_KOBAN_API_KEY = "sandbox-api-key"
DEV_KOBAN_USER_KEY = "sandbox-user-key"


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as e:
        print(f"koban-options: bad configuration\n{e}", file=sys.stderr)
        raise SystemExit(2) from e


def _redis_url(settings: Settings) -> str:
    return os.environ.get("REDIS_URL") or settings.redis_url


async def _show_lot(tenant_name: str, extcode: str) -> int:
    settings = _settings()
    redis = connect(_redis_url(settings))
    try:
        tenants = build_tenants(settings, redis)
        tenant = tenants.get(tenant_name)
        if tenant is None:
            print(f"unknown tenant {tenant_name!r}", file=sys.stderr)
            return 2
        now = tenant.clock.now()
        lot = await tenant.store.read(extcode, now)
        if lot is None:
            print(f"lot {extcode} is unknown to tenant {tenant_name}", file=sys.stderr)
            return 1
        print(f"{lot.extcode}  {lot.status}  ({lot.config})  version {lot.version}")
        print(f"now {to_iso(now)}   next tick {to_iso(next_tick(now))}")
        for o in sorted(lot.options, key=lambda o: o.rank):
            expiry = to_iso(o.expiry) if o.expiry is not None else "unknown"
            holder = o.holder or "(opaque)"
            flags = " prolonged" if o.prolonged else ""
            print(f"  rank {o.rank}  {holder}  expires {expiry}  [{o.source}]{flags}")
        for i in lot.intents:
            print(f"  pending intent {i.id}: rank {i.rank} for {i.holder}")
        if lot.prereservation:
            print(f"  préréservation by {lot.prereservation.holder}")
        print("history:")
        for event in await tenant.store.history(extcode):
            print(f"  {event['time']}  {event['type']}  v{event['lotversion']}")
        return 0
    finally:
        await redis.aclose()


async def _tail(tenant_name: str, from_start: bool) -> int:
    settings = _settings()
    if tenant_name not in settings.tenants:
        print(f"unknown tenant {tenant_name!r}", file=sys.stderr)
        return 2
    redis = connect(_redis_url(settings))
    key = build_tenants(settings, redis)[tenant_name].store.keys.events
    last = "0-0" if from_start else "$"
    try:
        while True:
            # BLOCK stays under redis-py's 5 s socket timeout (STACK.md).
            replies: Any = await redis.xread({key: last}, block=2000, count=100)
            for _, entries in replies:
                for entry_id, fields in entries:
                    last = entry_id
                    e = orjson.loads(fields[b"ce"])
                    data = e["data"]
                    who = data.get("thirdGuid") or ""
                    print(f"{e['time']}  {e['subject']:<14} {e['type']:<28} {who}", flush=True)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    finally:
        await redis.aclose()


async def _sandbox(host: str, port: int) -> int:
    from aiohttp import web

    from service.sandbox import SandboxState, build_sandbox_app, populate

    state = SandboxState(api_key=DEV_KOBAN_API_KEY, user_key=DEV_KOBAN_USER_KEY)
    populate(state)
    runner = web.AppRunner(build_sandbox_app(state))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"Koban sandbox on http://{host}:{port}/api/v1 ({len(state.lots)} demo lots)")
    print(f"X-ncApi: {DEV_KOBAN_API_KEY}   X-ncUser: {DEV_KOBAN_USER_KEY}  (dev keys)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    print("Koban sandbox stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="koban-options", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("diagram", help="render the lot statechart (Mermaid, SVG/PNG with dot)")
    p.add_argument("outdir", nargs="?", default="docs")
    p.add_argument("--format", choices=["mermaid", "svg", "png"], default="svg")
    p = sub.add_parser("lot", help="a lot's state, options, next tick and history")
    p.add_argument("tenant")
    p.add_argument("extcode")
    p = sub.add_parser("events", help="the event stream")
    events = p.add_subparsers(dest="events_command", required=True)
    p = events.add_parser("tail", help="follow a tenant's events")
    p.add_argument("tenant")
    p.add_argument("--from-start", action="store_true")
    p = sub.add_parser("sandbox", help="the Koban simulator alone, with demo stock")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)

    try:
        if args.command == "diagram":
            return diagram.main([args.outdir, "--format", args.format])
        if args.command == "lot":
            return asyncio.run(_show_lot(args.tenant, args.extcode))
        if args.command == "events":
            return asyncio.run(_tail(args.tenant, args.from_start))
        if args.command == "sandbox":
            return asyncio.run(_sandbox(args.host, args.port))
    except KeyboardInterrupt:
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
