"""Security (issue #6, item 4): secrets are never logged, neither by the app in this process
(structlog, aiohttp's access and server logs, every standard-library record, stderr) nor by
the `koban-options api` process, and `token=` is redacted whole.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_security_*.py`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web
from redis.asyncio import Redis

from service.clock import SystemClock
from service.entrypoints.api.logging import configure_logging
from service.entrypoints.koban_webhooks import redact_token
from service.sandbox import Fault, build_sandbox_app
from service.storage.store import LotStore
from statecharts.ticks import to_iso
from tests.support.api_harness import DAY, import_stock, make_sandbox
from tests.support.redis_server import free_port
from tests.support.rules import make_rules
from tests.support.security_deployment import ROLES, Deployment, Secrets, read_sse
from tests.support.tenant_keys import delete_tenant_keys

# --------------------------------------------------------------------------- logs


class Records(logging.Handler):
    """Every standard-library record, formatted with its exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.names.append(record.name)


@contextlib.contextmanager
def every_log() -> Iterator[Records]:
    """structlog as production sets it up (JSON, debug) and the standard library at DEBUG."""
    saved = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    records = Records()
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    configure_logging("json", "debug")
    try:
        yield records
    finally:
        root.removeHandler(records)
        root.setLevel(level)
        structlog.configure(**saved)


async def _workload(d: Deployment) -> None:
    """Reads, writes through Koban, Koban failures, bad requests, auth failures, webhooks
    with the secret in the header and in ?token=, and an over-long request line."""
    s = d.secrets
    admin_near_miss = s.tokens["admin"] + "x"
    # Reads, writes through Koban (with an idempotent replay), and the event stream.
    for rest in (
        "lots/L1",
        "lots?limit=5",
        "options",
        "events",
        "prospects/p1",
        "lots/L1/availability?source=koban",
    ):
        assert (await d.call("GET", rest, role="read")).status == 200, rest
    headers = {"Idempotency-Key": "k-1"}
    for _ in range(2):
        answer = await d.call(
            "POST", "lots/L1/options", role="write", json={"thirdGuid": "p1"}, headers=headers
        )
        assert answer.status == 201
    until = to_iso(d.now + 4 * DAY)
    assert (
        await d.call("POST", "lots/L1/options/1/prolongation", role="admin", json={"until": until})
    ).status == 200
    assert (await d.call("DELETE", "lots/L1/options/1", role="admin")).status == 200
    assert (
        await d.call("POST", "lots/L2/options", role="cgp1", json={"thirdGuid": "p2"})
    ).status == 201
    body = {"thirdGuid": "p3", "price": 1000, "deposit": 10}
    assert (await d.call("POST", "lots/L3/prereservation", role="admin", json=body)).status == 201
    assert (
        await d.call(
            "POST", "lots/L3/prereservation/withdrawal", role="admin", json={"thirdGuid": "p3"}
        )
    ).status == 200
    await read_sse(d, "admin", 3)
    # Koban failing: unavailable, unusable (our keys refused), outcome unknown.
    d.koban.add_fault(Fault.from_json({"status": 503, "methods": ["ncOption/GetLotStatus"]}))
    assert (
        await d.call("POST", "lots/L4/options", role="admin", json={"thirdGuid": "p4"})
    ).status == 503  # through the client's retries
    d.koban.clear_faults()
    d.koban.api_key = "rotated"
    assert (
        await d.call("POST", "lots/L4/options", role="admin", json={"thirdGuid": "p4"})
    ).status == 502
    d.koban.api_key = s.koban_api_key
    d.koban.add_fault(Fault.from_json({"reset": True, "methods": ["ncOption/Add"], "count": 1}))
    assert (
        await d.call("POST", "lots/L5/options", role="admin", json={"thirdGuid": "p5"})
    ).status == 202
    # Bad requests and auth failures (a near miss contains the whole secret).
    json_type = {"Content-Type": "application/json"}
    assert (
        await d.call("POST", "lots/L6/options", role="admin", data=b"{", headers=json_type)
    ).status == 400
    assert (
        await d.call("POST", "lots/L6/options", role="admin", json={"thirdGuid": "a b"})
    ).status == 422
    assert (await d.call("GET", f"lots/L1?token={s.tokens['admin']}", role="admin")).status == 422
    for token in (admin_near_miss, "garbage", s.other_token):
        assert (await d.call("GET", "lots/L1", token=token)).status in (401, 404)
    basic = {"Authorization": "Basic " + base64.b64encode(s.tokens["admin"].encode()).decode()}
    assert (await d.call("GET", "lots/L1", headers=basic)).status == 401
    # Webhooks: secret in the header, in ?token=, wrong ones, an unknown tenant, bad forms.
    form = {"Deal_Extcode": "L7", "Third_Guid": "p6", "ExpDate": str(d.now + DAY)}
    assert (await d.hook("option-placed", form, header=s.webhook)).status == 200
    assert (await d.hook("option-cancelled", form, query=s.webhook)).status == 200
    assert (await d.hook("option-check", {"extcode": "L7"}, query=s.webhook)).status == 200
    assert (await d.hook("option-placed", form, query=s.webhook + "x")).status == 401
    assert (await d.hook("option-placed", form, header=s.webhook + "x")).status == 401
    assert (await d.hook("option-placed", form, query=s.other_webhook)).status == 401
    assert (await d.hook("option-placed", form, query=s.webhook, tenant="nobody")).status == 404
    assert (await d.hook("option-placed", {"Deal_Extcode": "L7"}, query=s.webhook)).status == 400
    # A request line too long for aiohttp's parser, the secret at its start: aiohttp logs
    # the first bytes of the URL at ERROR, with a traceback.
    path = f"/koban/{d.name}/option-check?token={s.webhook}&extcode=L1&pad=" + "x" * 9000
    host, port = d.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        async with asyncio.timeout(10):
            assert (await reader.readline()).split()[1] == b"400"
    finally:
        writer.close()


def assert_no_secret(outputs: dict[str, str], secrets: Secrets) -> None:
    for name, secret in secrets.named().items():
        forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
        # Any 12 characters of it: a secret cut in two (token=***;rest) leaks too.
        forms |= {secret[i : i + 12] for i in range(len(secret) - 11)}
        for form in forms:
            for where, text in outputs.items():
                assert form not in text, f"{name}: {form!r} of it logged in {where}"


async def test_secrets_are_never_logged(dep: Deployment, capfd: pytest.CaptureFixture[str]) -> None:
    with every_log() as records:
        await _workload(dep)
        await asyncio.sleep(0.05)  # the access log line of the last request
    captured = capfd.readouterr()
    outputs = {"stderr": captured.err, "stdout": captured.out, "stdlib": "\n".join(records.lines)}
    assert_no_secret(outputs, dep.secrets)
    # What was captured is the real thing: JSON lines, aiohttp's access log, the parser error.
    lines = [orjson.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "http_request"]
    assert len(access) >= 30
    assert any("token=***" in line["path"] for line in access)
    assert sum(n == "aiohttp.access" for n in records.names) >= 30
    assert any("token=***" in line for line in records.lines if line.startswith("aiohttp.access"))
    too_long = [line for line in records.lines if "Got more than 8190 bytes" in line]
    assert too_long and all("token=***" in line for line in too_long)
    assert any(line.get("event") == "upstream_failure" for line in lines)
    print(
        f"\nSECURITY logs: {dep.sent} requests, {len(lines)} structlog lines, "
        f"{len(records.lines)} stdlib records"
    )


def test_aiohttps_records_are_redacted_even_without_configure_logging() -> None:
    """Regression: aiohttp's parser error quotes the URL; it reached stderr unredacted
    (Python's last-resort handler prints ERROR records when nothing is configured)."""
    record = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("1.2.3.4",),
        None,
    )
    try:
        raise ValueError(
            "Got more than 8190 bytes: bytearray(b'/koban/t/x?token=s3cr;et&extcode=1')"
        )
    except ValueError:
        record.exc_info = sys.exc_info()
    assert logging.getLogger("aiohttp.server").filter(record)
    formatted = logging.Formatter().format(record)
    assert "s3cr" not in formatted and "et&" not in formatted and "token=***&extcode=1" in formatted


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("/koban/t/x?token=ab;cd&extcode=1", "/koban/t/x?token=***&extcode=1"),
        ("/koban/t/x?extcode=1;token=ab;cd", "/koban/t/x?extcode=1;token=***"),
        ("/koban/t/x?token=ab%3Bcd", "/koban/t/x?token=***"),
        ("bytearray(b'/koban/t/x?token=abcd...')", "bytearray(b'/koban/t/x?token=***"),
    ],
)
def test_redact_token_keeps_no_part_of_a_secret(url: str, redacted: str) -> None:
    """Regression: the value stopped at ";", which aiohttp does not treat as a separator,
    so a secret with a ";" in it was logged from there on (``token=***;cd``)."""
    assert redact_token(url) == redacted


async def test_the_api_process_never_logs_a_secret(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """`koban-options api` as an operator runs it (configuration and secrets from the
    environment, log level debug, the real clock): everything it writes to stdout and
    stderr over the same workload, Koban being the sandbox, holds no secret."""
    name = "s" + uuid.uuid4().hex[:12]
    s = Secrets()
    state = make_sandbox(SystemClock())  # type: ignore[arg-type]
    state.api_key, state.user_key = s.koban_api_key, s.koban_user_key
    for guid in ("holder-x",):
        state.add_third(guid=guid, name=guid.upper(), first_name="F", email=f"{guid}@x.fr")
    sandbox = web.AppRunner(build_sandbox_app(state, tick_interval=None))
    await sandbox.setup()
    await web.TCPSite(sandbox, "127.0.0.1", 0).start()
    host, sandbox_port = sandbox.addresses[0][:2]
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[tenants.{name}]\nkoban_base_url = "http://{host}:{sandbox_port}/api/v1"\n'
    )
    prefix = f"KOBAN_OPTIONS_TENANTS__{name.upper()}__"
    tokens = [
        {"token": s.tokens[role], "scopes": sorted(scopes), "partner_guid": partner}
        for role, (scopes, partner) in ROLES.items()
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOBAN_OPTIONS_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "KOBAN_OPTIONS_TENANTS_FILE": str(tenants),
            "KOBAN_OPTIONS_LOG_LEVEL": "debug",
            "KOBAN_OPTIONS_LOG_FORMAT": "json",
            prefix + "KOBAN_API_KEY": s.koban_api_key,
            prefix + "KOBAN_USER_KEY": s.koban_user_key,
            prefix + "WEBHOOK_SECRET": s.webhook,
            prefix + "API_TOKENS": orjson.dumps(tokens).decode(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    binary = Path(sys.executable).with_name("koban-options")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            stdout=stdout,
            stderr=stderr,
            cwd=tmp_path,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    store = LotStore(redis, name, make_rules())
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(60):
                while True:
                    assert proc.returncode is None, err.read_text()
                    try:
                        async with session.get(url + "/healthz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            now = SystemClock().now()
            await import_stock(store, state, now - 3600)
            d = Deployment(
                url,
                None,
                session,
                name,
                name + "-none",
                None,
                None,
                state,
                [],
                s,  # type: ignore[arg-type]
                redis_url,
                now,
            )
            await _workload(d)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.wait()
        await sandbox.cleanup()
        delete_tenant_keys(redis_url, name)
    assert proc.returncode == 0, err.read_text()[-2000:]
    outputs = {"stdout": out.read_text(), "stderr": err.read_text()}
    assert_no_secret(outputs, s)
    text = "\n".join(outputs.values())
    lines = [orjson.loads(x) for x in text.splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("event") == "http_request"]
    assert len(access) >= 30 and any("token=***" in x["path"] for x in access)
    assert any(x.get("event") == "api_stopped" for x in lines)
    too_long = [x for x in text.splitlines() if "Got more than 8190 bytes" in x]
    assert too_long and all("token=***" in x for x in too_long), too_long
    print(f"\nSECURITY api process: {len(lines)} JSON lines, {len(text)} bytes of output")
