"""The operator page's views: the tenant at a glance (``GET /ui/``) and one lot
(``GET /ui/lots/{extcode}``), rendered from the same answers as the ``/v1`` reads (same
redaction for a partner's session). Without a session both answer 401 with the sign-in
form. Live parts (event feed, countdowns, rows and options refreshed on events) are
``static/ui.js`` reading the ``/v1`` routes and the SSE stream with the session cookie.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from aiohttp import web
from markupsafe import Markup

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.context import FLOWS_KEY
from service.entrypoints.api.models import dump
from service.entrypoints.api.routes_lots import START, lot_out, read_lot, redact_event
from service.entrypoints.ui.assets import Assets
from service.entrypoints.ui.chart import mark
from service.entrypoints.ui.render import render, sign_in_page
from service.entrypoints.ui.session import session_of
from service.storage.codec import decode_lot
from service.storage.event_stream import stream_end
from service.storage.heartbeat import read_heartbeat
from service.storage.lot_reads import raw_lots
from service.storage.paging import lots_after
from service.storage.sessions import UiSession
from service.storage.sync_state import queued_count
from service.usecases.sandbox_clock import is_sandbox
from statecharts import transitions as tr
from statecharts.ticks import next_tick, to_iso

__all__ = ["ASSETS_KEY", "MAX_LOTS", "lot_page", "overview"]

ASSETS_KEY = web.AppKey("ui_assets", Assets)
MAX_LOTS = 5000  # one page shows at most this many lots (a programme is far smaller)
_BATCH = 500
_UNREACHABLE = frozenset({"unavailable", "outcome_unknown", "error"})


async def _common(request: web.Request, session: UiSession, caller: Caller) -> dict[str, Any]:
    tenant = caller.tenant
    # Read before the page's data: the page's stream starts after this entry, so an event
    # written while the page is rendered is replayed to it rather than missed.
    after = await stream_end(tenant.store)
    now = tenant.clock.now()
    sandbox = is_sandbox(tenant)
    scope = next(s for s in ("admin", "write", "read") if s in caller.scopes)
    return {
        "session": session,
        "after": after,
        "tenant": tenant,
        "now": now,
        "now_iso": to_iso(now),
        "next_tick_iso": to_iso(next_tick(now)),
        "sandbox": sandbox,
        # Moving the clock expires options for every client of the tenant: admin only,
        # as ``POST …/clock`` itself requires.
        "clock_control": sandbox and "admin" in caller.scopes,
        "scopes": scope,
        "partner": caller.partner,
    }


async def _lots(caller: Caller, now: int) -> tuple[list[dict[str, Any]], bool]:
    """The tenant's lots as the ``/v1`` listing answers them (lazy expiry, redaction), in
    the listing's order; True when there were more than `MAX_LOTS`."""
    tenant = caller.tenant
    store = tenant.store
    out: list[dict[str, Any]] = []
    position = START
    while len(out) < MAX_LOTS:
        batch = await lots_after(store, position, _BATCH)
        raws = await raw_lots(store, [code for code, _ in batch])
        for (code, score), raw in zip(batch, raws, strict=True):
            position = (score, code)
            if raw is None:
                continue
            lot = decode_lot(code, raw)
            tr.expire_due(lot, now, tenant.rules)
            out.append(dump(lot_out(lot, caller)))
        if len(batch) < _BATCH:
            return out, False
    return out[:MAX_LOTS], True


async def _heartbeat(caller: Caller) -> str:
    raw = await read_heartbeat(caller.tenant.store.redis)
    try:
        age = time.time() - float(raw) if raw is not None else None
    except ValueError:
        age = None
    # Real time: the heartbeat is a real-time TTL key, whatever the tenant's clock says.
    return "no heartbeat" if age is None else f"beat {max(0, round(age))} s ago"


def _koban(request: web.Request, caller: Caller) -> str:
    pool = request.app.get(FLOWS_KEY)
    client = pool.clients.get(caller.tenant.name) if pool is not None else None
    if client is None:
        return "no credentials"
    answered = sum(n for (_, outcome), n in client.calls.items() if outcome not in _UNREACHABLE)
    failed = sum(n for (_, outcome), n in client.calls.items() if outcome in _UNREACHABLE)
    return f"{answered} call(s) answered, {failed} unreachable since start"


def _extcode(lot: dict[str, Any]) -> str:
    return str(lot["extcode"])


async def overview(request: web.Request) -> web.Response:
    """The tenant at a glance: programmes and lots, pending placements, ticks, scheduler,
    Koban, drift and the live event feed (the sign-in form without a session)."""
    found = session_of(request)
    if found is None:
        return sign_in_page()
    session, caller = found
    common = await _common(request, session, caller)
    lots, truncated = await _lots(caller, common["now"])
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lot in lots:
        grouped[lot["program"] or ""].append(lot)
    programmes: list[dict[str, Any]] = [
        {"name": name, "lots": sorted(grouped[name], key=_extcode)} for name in sorted(grouped)
    ]
    pending = [{"extcode": lot["extcode"], **p} for lot in lots for p in lot["pendingPlacements"]]
    drift = await queued_count(caller.tenant.store)
    return render(
        "tenant.html",
        **common,
        programmes=programmes,
        pending=pending,
        lot_count=len(lots),
        truncated=truncated,
        heartbeat=await _heartbeat(caller),
        koban=_koban(request, caller),
        drift=drift,
    )


async def lot_page(request: web.Request) -> web.Response:
    """One lot: options with a countdown to their expiry tick, pending placements,
    préréservation, history and the statechart with the lot's state marked."""
    found = session_of(request)
    if found is None:
        return sign_in_page()
    session, caller = found
    common = await _common(request, session, caller)
    lot = await read_lot(caller, request.match_info["extcode"])
    answer = dump(lot_out(lot, caller))
    history = [redact_event(e, caller) for e in await caller.tenant.store.history(lot.extcode)]
    items = [
        {"time": e.get("time"), "type": e.get("type"), "rank": (e.get("data") or {}).get("rank")}
        for e in history
    ]
    chart = mark(request.app[ASSETS_KEY].text("lot-chart.svg"), answer["statePath"])
    # Markup: the chart is the package's own file (`chart.page_svg`), not Koban's text.
    return render("lot.html", **common, lot=answer, history=items, chart=Markup(chart))
