"""`clock`: read or advance a sandbox tenant's test clock through the API."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

from service.entrypoints.commands.common import TOKEN_VAR, age_text, print_json, setup_for
from service.entrypoints.commands.exit_codes import OK, UNAVAILABLE, USAGE

API_TIMEOUT_S = 300.0  # advancing a clock by weeks runs every tick passed before answering


def _call_api(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    """(status, JSON answer) of one API request; OSError when the API cannot be reached."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return err.code, {"message": raw.decode(errors="replace")[:200]}


def clock(
    tenant_name: str,
    advance_by: str | None,
    advance_to: str | None,
    api: str | None,
    token: str | None,
    as_json: bool,
) -> int:
    """Read or advance a sandbox tenant's test clock through the API's clock route, so
    whatever serves that API (the sandbox under `run` included) follows."""
    setup = setup_for(tenant_name)
    settings = setup.settings
    base = api or (
        setup.run.api_url if setup.run else f"http://{settings.api_host}:{settings.api_port}"
    )
    token = token or os.environ.get(TOKEN_VAR) or (setup.run.token if setup.run else None)
    if not token:
        print(f"koban-options: no API token: pass --token or set {TOKEN_VAR}", file=sys.stderr)
        return USAGE
    url = f"{base.rstrip('/')}/v1/tenants/{tenant_name}/clock"
    body: dict[str, str] | None = None
    if advance_by is not None:
        body = {"advanceBy": advance_by}
    elif advance_to is not None:
        body = {"advanceTo": advance_to}
    try:
        status, answer = _call_api("GET" if body is None else "POST", url, token, body)
    except OSError as exc:
        print(f"koban-options: API unavailable at {base}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    if status >= 300:
        code = answer.get("errorCode", "") if isinstance(answer, dict) else ""
        message = answer.get("message", "") if isinstance(answer, dict) else ""
        print(f"koban-options: {status} {code}: {message}".rstrip(": "), file=sys.stderr)
        for error in answer.get("errors") or [] if isinstance(answer, dict) else []:
            print(f"  {error.get('field')}: {error.get('message')}", file=sys.stderr)
        return UNAVAILABLE if status >= 500 else USAGE
    if as_json:
        print_json(answer)
    elif body is None:
        offset = age_text(int(answer["offsetSeconds"]))
        print(
            f"{tenant_name}: now {answer['now']} (test clock, {offset} ahead of real time), "
            f"next tick {answer['nextTick']}"
        )
    else:
        ticks = answer["ticksRun"]
        ran = f"; {len(ticks)} ticks run" + (f", {ticks[0]} … {ticks[-1]}" if ticks else "")
        print(f"{tenant_name}: now {answer['now']} (test clock){ran}")
    return OK
