"""`koban-options`: the operator's command line.

Sub-commands: `lot`, `intents`, `events tail`, `sync`, `clock`, `scheduler` (`--check`),
`api`, `run`, `sandbox`, `diagram`. Times shown are the tenant's clock (a sandbox tenant's
test clock, marked so). In a folder where `run` is running, commands about its sandbox
tenant reach it through ``./var/run.json`` (`run_file`). `--json` prints the API's own
answer shapes; the exit codes are `commands.exit_codes.EXIT_CODES` (also in the help text
and docs/cli.md). This module parses the arguments; the commands live in `commands/`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from service.entrypoints import diagram
from service.entrypoints.api.worker_metrics import Workers
from service.entrypoints.commands.clock import clock
from service.entrypoints.commands.common import TOKEN_VAR, settings_or_exit
from service.entrypoints.commands.events import tail_events
from service.entrypoints.commands.exit_codes import EXIT_CODES, OK, USAGE
from service.entrypoints.commands.lots import intents, show_lot
from service.entrypoints.commands.processes import api, sandbox, scheduler, scheduler_check
from service.entrypoints.commands.sync import koban_check, sync

DESCRIPTION = """The operator's command line of koban-options.

Times shown are the tenant's clock; a sandbox tenant's test clock is marked "(test clock)".
In the folder where `koban-options run` is running, commands about its sandbox tenant use
./var/run.json (its Redis, API and development keys) unless REDIS_URL or any
KOBAN_OPTIONS_* variable is set; one stderr line says so. See docs/cli.md."""


def _epilog() -> str:
    lines = ["exit codes:"]
    for code, text in EXIT_CODES.items():
        lines += textwrap.wrap(text, 78, initial_indent=f"  {code}  ", subsequent_indent="     ")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koban-options",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    json_help = "print JSON, in the API's own answer shapes (see docs/cli.md)"
    p = sub.add_parser("diagram", help="render the lot statechart (Mermaid, SVG/PNG with dot)")
    p.add_argument("outdir", nargs="?", default="docs")
    p.add_argument("--format", choices=["mermaid", "svg", "png"], default="svg")
    p = sub.add_parser("lot", help="a lot's state, options, next tick and history")
    p.add_argument("tenant")
    p.add_argument("extcode")
    p.add_argument("--resync", action="store_true", help="reconcile it with Koban first")
    p.add_argument("--json", action="store_true", help=json_help)
    p = sub.add_parser("events", help="the event stream")
    events = p.add_subparsers(dest="events_command", required=True)
    p = events.add_parser("tail", help="follow a tenant's events (Ctrl-C stops)")
    p.add_argument("tenant")
    p.add_argument("--from-start", action="store_true")
    p.add_argument("--json", action="store_true", help="one CloudEvent (JSON) per line")
    p = sub.add_parser("sync", help="one stock import from Koban, with a progress bar")
    p.add_argument("--tenant", help="only this tenant (default: every configured tenant)")
    p.add_argument("--full", action="store_true", help="read every lot, not only changes")
    p.add_argument("--json", action="store_true", help=json_help)
    p = sub.add_parser("intents", help="pending placement intents; resolve one by asking Koban")
    p.add_argument("tenant")
    p.add_argument(
        "--resolve",
        metavar="ID",
        help="ask Koban and settle this intent now (write --resolve=ID: ids may start with '-')",
    )
    p.add_argument("--json", action="store_true", help=json_help + " (the listing only)")
    p = sub.add_parser(
        "clock", help="a sandbox tenant's test clock: read it, or advance it (through the API)"
    )
    p.add_argument("tenant")
    moves = p.add_mutually_exclusive_group()
    moves.add_argument("--advance-by", metavar="DURATION", help="ISO-8601 duration, e.g. P1DT2H")
    moves.add_argument("--advance-to", metavar="INSTANT", help="ISO-8601 instant with offset")
    p.add_argument("--api", metavar="URL", help="the API (default: the run's, else api_host/port)")
    p.add_argument("--token", help=f"an API token (default: ${TOKEN_VAR}, else the run's)")
    p.add_argument("--json", action="store_true", help="print the API's answer as it is")
    p = sub.add_parser("api", help="the internal HTTP API and Koban's webhooks")
    p.add_argument("--host", help="listen address (default: api_host of the configuration)")
    p.add_argument("--port", type=int, help="listen port (default: api_port)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port (SO_REUSEPORT), each a replica (default 1)",
    )
    # Set by the supervisor of `--workers N` for each of its processes.
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--workers-dir", help=argparse.SUPPRESS)
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT, so other processes may serve the same port",
    )
    p = sub.add_parser(
        "scheduler", help="the daemon: ticks, catch-up, notices, sync, reconciliation, intents"
    )
    p.add_argument(
        "--check", action="store_true", help="exit 0 when a scheduler's heartbeat is fresh, else 1"
    )
    p.add_argument("--json", action="store_true", help="with --check: the verdict as JSON")
    sub.add_parser(
        "run", help="everything in one process: API, scheduler, Koban sandbox, private Redis"
    )
    p = sub.add_parser("koban", help="probe a tenant's Koban")
    koban = p.add_subparsers(dest="koban_command", required=True)
    p = koban.add_parser(
        "check", help="read-only contract probe: exit 0 when every guess held, 1 otherwise"
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true", help="the findings as JSON")
    p = sub.add_parser("sandbox", help="the Koban simulator alone, with demo stock")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    if args.command == "intents" and as_json and args.resolve is not None:
        parser.error("--json lists the pending intents; it does not go with --resolve")
    if args.command == "scheduler" and as_json and not args.check:
        parser.error("--json goes with --check")

    try:
        if args.command == "diagram":
            return diagram.main([args.outdir, "--format", args.format])
        if args.command == "lot":
            return asyncio.run(show_lot(args.tenant, args.extcode, args.resync, as_json))
        if args.command == "events":
            return asyncio.run(tail_events(args.tenant, args.from_start, as_json))
        if args.command == "sync":
            return asyncio.run(sync(args.tenant, args.full, as_json))
        if args.command == "intents":
            return asyncio.run(intents(args.tenant, args.resolve, as_json))
        if args.command == "clock":
            return clock(
                args.tenant, args.advance_by, args.advance_to, args.api, args.token, as_json
            )
        if args.command == "sandbox":
            return asyncio.run(sandbox(args.host, args.port))
        if args.command == "koban":
            return asyncio.run(koban_check(args.tenant, as_json))
        if args.command == "run":
            from service.entrypoints.run import main_run

            return main_run(settings_or_exit())
        if args.command == "api":
            if args.workers < 1:
                parser.error("--workers must be at least 1")
            worker = None
            if args.workers_dir is not None:
                worker = Workers(Path(args.workers_dir), args.worker_index)
            return asyncio.run(api(args.host, args.port, args.workers, args.reuse_port, worker))
        if args.command == "scheduler":
            return asyncio.run(scheduler_check(as_json) if args.check else scheduler())
    except KeyboardInterrupt:
        return OK
    except BrokenPipeError:
        # The reader of our output stopped early (`| head`): what it read is all it wanted.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    parser.error(f"unknown command {args.command}")
    return USAGE


if __name__ == "__main__":
    raise SystemExit(main())
