"""The live server the bad-input tests send to (no tests here): the API (webhooks included)
and the Koban sandbox on loopback on a fresh tenant (`live_server`, over
tests/support/live_server.py), its stock of options and préréservations (`_seed`), and raw
requests (`Request`, `send`).

Shared by tests/integration/test_reliability_input_*.py (the `hooks_live` fixture of
tests/integration/conftest.py is one `hooks_server`).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from tests.support.api_harness import T0, TOKENS
from tests.support.live_server import WEBHOOK_SECRET, LiveServer
from tests.support.tenant_keys import delete_tenant_keys

RANDOM = os.environ.get("KOBAN_FUZZ_RANDOM") == "1"
MAX_BODY = 64 * 1024
TIMEOUT_S = 15.0  # a socket that hangs this long fails the test (no timing is asserted)


# --------------------------------------------------------------------------- harness


@dataclass
class Live:
    url: str
    host: str
    port: int
    tenant: str
    redis_url: str


@contextlib.contextmanager
def live_server(redis_url: str) -> Iterator[Live]:
    """The API (webhooks included) and the Koban sandbox on loopback, on a fresh tenant."""
    tenant = "t" + uuid.uuid4().hex[:12]
    try:
        with LiveServer(redis_url, tenant) as server:
            parsed = urllib.parse.urlsplit(server.url)
            assert parsed.hostname is not None and parsed.port is not None
            yield Live(server.url, parsed.hostname, parsed.port, tenant, redis_url)
    finally:
        delete_tenant_keys(redis_url, tenant)


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role][0]}"}


# --------------------------------------------------------------------------- schemathesis


def _seed(live: Live, session: requests.Session, writer: str) -> None:
    """Options and préréservations to act on, placed by `writer` (and one by another
    partner, so a partner token meets an option that is not its own)."""
    base = f"{live.url}/v1/tenants/{live.tenant}/lots"
    for lot, third, who in (
        ("L1", "p1", writer),
        ("L1", "p2", writer),
        ("L2", "p3", writer),
        ("L2", "p4", "cgp2"),
    ):
        answer = session.post(
            f"{base}/{lot}/options", json={"thirdGuid": third}, headers=bearer(who)
        )
        assert answer.status_code == 201, answer.text
    for lot, third, who in (("L3", "p5", writer), ("L4", "p6", "cgp2")):
        answer = session.post(
            f"{base}/{lot}/prereservation",
            json={"thirdGuid": third, "price": 250000, "deposit": 5000},
            headers=bearer(who),
        )
        assert answer.status_code == 201, answer.text


FORM = "application/x-www-form-urlencoded"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    endpoint: str

    def __repr__(self) -> str:  # hypothesis prints failing cases: keep them readable
        body = None if self.body is None else self.body[:300] + b"..." * (len(self.body) > 300)
        path = self.path[:300] + "..." * (len(self.path) > 300)
        return f"Request({self.method} {path!r}, {self.headers!r}, body={body!r})"


def send(live: Live, request: Request) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(live.host, live.port, timeout=TIMEOUT_S)
    try:
        conn.request(request.method, request.path, body=request.body, headers=request.headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def hooks_server(redis_url: str) -> Iterator[Live]:
    """`live_server`, seeded, with a lot Koban told us about and one with a tombstone."""
    with live_server(redis_url) as live:
        session = requests.Session()
        _seed(live, session, "admin")
        base = f"{live.url}/koban/{live.tenant}"
        auth = {"X-Koban-Webhook-Token": WEBHOOK_SECRET}
        # A lot Koban told us about (W1), with an option that ended: a tombstone to meet.
        for name, form in (
            (
                "option-placed",
                {"Deal_Extcode": "W1", "Third_Guid": "wx", "ExpDate": str(T0 + 86400)},
            ),
            ("option-cancelled", {"Deal_Extcode": "W1", "Third_Guid": "wx"}),
            (
                "option-placed",
                {"Deal_Extcode": "W2", "Third_Guid": "wx", "ExpDate": str(T0 + 86400)},
            ),
        ):
            answer = session.post(f"{base}/{name}", data=form, headers=auth)
            assert answer.json() == {"success": True}, answer.text
        yield live
