"""`sync` (one stock import from Koban, with progress) and `koban check` (the read-only
contract probe).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from service.bootstrap import KobanConfigError, koban_session, missing_keys
from service.entrypoints.commands.common import (
    clock_mark,
    print_json,
    setup_for,
    unknown_tenant,
    with_tenants,
)
from service.entrypoints.commands.exit_codes import NOT_FOUND, OK, UNAVAILABLE, USAGE
from service.koban import KobanClient, KobanError, KobanUnavailable
from service.tenancy import Tenant, Tenants
from service.usecases.sync import SyncReport
from service.usecases.sync_runs import SyncInProgress, claim_sync, last_run
from statecharts.ticks import to_iso


async def koban_check(tenant_name: str, as_json: bool) -> int:
    """The read-only contract probe (`service.usecases.koban_check`): 0 when every guess
    held, 1 when one did not, 2 bad configuration, 3 Koban unavailable or in error."""
    import aiohttp

    from service.bootstrap import koban_keys
    from service.usecases.koban_check import check_koban

    settings = setup_for(tenant_name).settings
    if unknown_tenant(settings, tenant_name):
        return USAGE
    tenant = settings.tenants[tenant_name]
    try:
        api_key, user_key = koban_keys(tenant_name, tenant)
    except KobanConfigError as exc:
        print(f"koban-options: bad configuration\n{exc}", file=sys.stderr)
        return USAGE
    url = tenant.koban_base_url
    try:
        async with aiohttp.ClientSession() as session:
            koban = KobanClient(session, url, api_key, user_key, retries=1, rate_per_s=5)
            report = await check_koban(koban)
    except (KobanUnavailable, KobanError) as exc:
        print(f"koban-options: Koban at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "findings": [
                    {"method": f.method, "field": f.name, "state": f.state, "detail": f.detail}
                    for f in report.findings
                ],
                "casings": sorted(report.casings),
                "dateForms": sorted(report.date_forms),
            }
        )
    else:
        print(f"koban check {tenant_name} at {url}")
        for line in report.lines():
            print(line)
    return OK if report.ok else NOT_FOUND


@contextmanager
def _progress(label: str, out: TextIO) -> Iterator[Callable[[int, int], None]]:
    """`progress(done, total)` for `sync_stock`: a rich bar on a terminal, else a plain
    line on `out` at every tenth of the run (and at its end)."""
    if out is sys.stdout and sys.stdout.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("lots"),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as bar:
            task = bar.add_task(f"sync {label}", total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update
        return

    def line(done: int, total: int) -> None:
        step = max(1, total // 10)
        if done == total or done % step == 0:
            print(f"sync {label}: {done}/{total} lots", file=out, flush=True)

    yield line


def _summary(tenant: Tenant, report: SyncReport, seconds: float) -> str:
    since = "the beginning" if report.since == 0 else to_iso(report.since) + clock_mark(tenant)
    return (
        f"{tenant.name}: imported {report.imported}, changed {report.changed}, "
        f"unchanged {report.unchanged}, deferred {report.deferred}, drift {report.drift}; "
        f"{report.seen} lots in {report.pages} pages since {since}"
        f"{' (full)' if report.full else ''} in {seconds:.1f} s"
    )


async def _sync_tenant(tenant: Tenant, full: bool, as_json: bool) -> int:
    url = tenant.settings.koban_base_url
    started = time.monotonic()
    try:
        claim = await claim_sync(tenant)
    except SyncInProgress as exc:
        print(f"koban-options: {exc}; try again when it has finished", file=sys.stderr)
        return UNAVAILABLE
    try:
        async with koban_session(tenant) as koban:
            with _progress(tenant.name, sys.stderr if as_json else sys.stdout) as progress:
                report = await claim.run(koban, tenant.clock.now(), full=full, progress=progress)
    except KobanUnavailable as exc:
        print(
            f"koban-options: Koban unavailable for {tenant.name} at {url}: {exc}", file=sys.stderr
        )
        return UNAVAILABLE
    except KobanError as exc:
        print(f"koban-options: Koban error for {tenant.name} at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    line = _summary(tenant, report, time.monotonic() - started)
    print(line, file=sys.stderr if as_json else sys.stdout, flush=True)
    return OK


async def _sync_status(tenant: Tenant) -> dict[str, Any]:
    """The tenant's latest sync run exactly as ``GET /v1/tenants/{t}/sync`` answers it."""
    from service.entrypoints.api.models import dump
    from service.entrypoints.api.routes_sync import SyncStatusOut

    run = await last_run(tenant)
    if run is None:
        return dump(SyncStatusOut(state="never"))
    return dump(SyncStatusOut.model_validate(run, from_attributes=True))


async def sync(tenant_name: str | None, full: bool, as_json: bool) -> int:
    settings = setup_for(tenant_name).settings
    if tenant_name is not None and unknown_tenant(settings, tenant_name):
        return USAGE
    names = [tenant_name] if tenant_name is not None else sorted(settings.tenants)
    if not names:
        print("koban-options: no tenant configured", file=sys.stderr)
        return USAGE
    problems = [p for name in names for p in missing_keys(name, settings.tenants[name])]
    if problems:
        print("koban-options: bad configuration\n" + "\n".join(problems), file=sys.stderr)
        return USAGE

    async def sync_all(tenants: Tenants) -> int:
        code = OK
        reports: dict[str, Any] = {}
        for name in names:
            code = await _sync_tenant(tenants[name], full, as_json)
            reports[name] = await _sync_status(tenants[name])
            if code:
                break
        if as_json:
            print_json(reports[tenant_name] if tenant_name is not None else reports)
        return code

    return await with_tenants(settings, sync_all)
