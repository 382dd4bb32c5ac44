"""Reliability against bad input (issue #6, item 3): bodies over the size limit are refused
without being read whole (announced or chunked), request lines over aiohttp's limit are a
clean 400, and a form's charset is read only when it is a text codec we accept.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_input_*.py`.
"""

from __future__ import annotations

import json
import select
import socket
import urllib.parse

import pytest
import redis as redis_sync
import requests

from tests.support.api_harness import T0
from tests.support.input_fuzzing import FORM, MAX_BODY, TIMEOUT_S, Live, Request, bearer, send
from tests.support.live_server import WEBHOOK_SECRET
from tests.support.redis_snapshot import changed, snapshot

# --------------------------------------------------------------------------- size limits


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from `sock` (Content-Length framed, as aiohttp answers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, headers, rest[:length]


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


TARGETS = {
    "api": (
        "/v1/tenants/{t}/lots/L5/options",
        {**bearer("admin"), "Content-Type": "application/json"},
    ),
    "webhook": (
        "/koban/{t}/option-placed",
        {"X-Koban-Webhook-Token": WEBHOOK_SECRET, "Content-Type": FORM},
    ),
}


def _assert_refused(target: str, status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 400, (status, body)
    assert headers["content-type"].startswith("application/json")
    payload = json.loads(body)
    if target == "api":
        assert payload["errorCode"] == "MALFORMED_REQUEST", payload
        assert (
            str(MAX_BODY) in payload["message"]
            or "exceeds" in payload["message"]
            or "large" in payload["message"]
        )
    else:
        assert payload["success"] is False and payload["error"]["code"] == "MALFORMED_REQUEST"
        assert "larger" in payload["error"]["message"]


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_body_announced_over_the_limit_is_refused_unread(hooks_live: Live, target: str) -> None:
    """Content-Length: 50 MB, and only 1 KiB sent: the answer comes without the rest (a
    server waiting for the whole body would never answer)."""
    live = hooks_live
    client = redis_sync.Redis.from_url(live.redis_url)
    before = snapshot(client, live.tenant)
    path, headers = TARGETS[target]
    with socket.create_connection((live.host, live.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(
            _head("POST", path.format(t=live.tenant), {**headers, "Content-Length": "50000000"})
        )
        sock.sendall(b"{" + b" " * 1023)
        status, answer_headers, body = _read_answer(sock)
    _assert_refused(target, status, answer_headers, body)
    assert not changed(before, snapshot(client, live.tenant))
    client.close()


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_chunked_body_over_the_limit_is_refused_while_still_arriving(
    hooks_live: Live, target: str
) -> None:
    """A chunked body that would go on for 256 MiB: the 400 arrives while the client is
    still sending, long before the end (the body is never read whole)."""
    live = hooks_live
    client = redis_sync.Redis.from_url(live.redis_url)
    before = snapshot(client, live.tenant)
    path, headers = TARGETS[target]
    total, chunk = 256 * 1024 * 1024, b" " * 16384
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    with socket.create_connection((live.host, live.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(
            _head("POST", path.format(t=live.tenant), {**headers, "Transfer-Encoding": "chunked"})
        )
        while sent < total:
            sock.sendall(frame)
            sent += len(chunk)
            readable, _, _ = select.select([sock], [], [], 0.005)
            if readable:
                break
        assert sent < total, "no answer while the body was arriving"
        status, answer_headers, body = _read_answer(sock)
    _assert_refused(target, status, answer_headers, body)
    assert not changed(before, snapshot(client, live.tenant))
    print(f"\nFUZZ chunked {target}: answered after {sent} bytes of a {total}-byte body")
    client.close()


@pytest.mark.parametrize("where", ["/koban/{t}/option-check", "/v1/tenants/{t}/lots/L1"])
def test_a_request_line_over_the_http_limit_is_a_clean_400(hooks_live: Live, where: str) -> None:
    """aiohttp's HTTP parser refuses a request line over 8190 bytes itself, before any
    handler, in plain text (so documented in /openapi.json): a clean 400, nothing changed."""
    live = hooks_live
    client = redis_sync.Redis.from_url(live.redis_url)
    before = snapshot(client, live.tenant)
    path = where.format(t=live.tenant) + "?extcode=L1&pad=" + "x" * 9000
    headers = {"X-Koban-Webhook-Token": WEBHOOK_SECRET, **bearer("admin")}
    status, content_type, _ = send(live, Request("GET", path, headers, None, "option-check"))
    assert (status, content_type.split(";")[0]) == (400, "text/plain")
    assert not changed(before, snapshot(client, live.tenant))
    client.close()


@pytest.mark.parametrize("charset", ["unicode_escape", "punycode", "utf-16", "hex", "nope"])
def test_a_form_in_an_unsupported_charset_is_refused_unread(hooks_live: Live, charset: str) -> None:
    """Regression (found by the fuzzer): the declared charset went straight to
    ``bytes.decode``; ``unicode_escape`` warned (a 500 under -W error) and ``punycode``
    decodes in quadratic time (a 64 KiB body held the event loop). Now only UTF-8, Latin-1,
    Windows-1252 and ASCII are read."""
    live = hooks_live
    client = redis_sync.Redis.from_url(live.redis_url)
    before = snapshot(client, live.tenant)
    body = b"Deal_Extcode=L5&Third_Guid=p1&ExpDate=" + str(T0 + 86400).encode() + b"&x=\\xc3"
    headers = {
        "X-Koban-Webhook-Token": WEBHOOK_SECRET,
        "Content-Type": f"{FORM}; charset={charset}",
    }
    status, _, raw = send(
        live, Request("POST", f"/koban/{live.tenant}/option-placed", headers, body, "")
    )
    assert status == 400, raw
    assert json.loads(raw)["error"] == {
        "code": "MALFORMED_REQUEST",
        "message": "unsupported charset (use one of ascii, cp1252, iso8859-1, utf-8)",
    }
    assert not changed(before, snapshot(client, live.tenant))
    client.close()


@pytest.mark.parametrize(
    ("charset", "encoded"),
    [("ISO-8859-1", "latin-1"), ("windows-1252", "cp1252"), ("UTF-8", "utf-8")],
)
def test_a_form_in_a_supported_charset_is_read(
    hooks_live: Live, charset: str, encoded: str
) -> None:
    live = hooks_live
    extcode = f"CS-{encoded}"
    fields = {
        "Deal_Extcode": extcode,
        "Third_Guid": "p1",
        "ExpDate": str(T0 + 86400),
        "Third_Name": "Éloïse",
    }
    body = urllib.parse.urlencode(fields, encoding=encoded).encode()
    headers = {
        "X-Koban-Webhook-Token": WEBHOOK_SECRET,
        "Content-Type": f"{FORM}; charset={charset}",
    }
    status, _, raw = send(
        live, Request("POST", f"/koban/{live.tenant}/option-placed", headers, body, "")
    )
    assert (status, json.loads(raw)) == (200, {"success": True})
    answer = requests.get(
        f"{live.url}/v1/tenants/{live.tenant}/lots/{extcode}", headers=bearer("admin")
    )
    assert [o["thirdGuid"] for o in answer.json()["options"]] == ["p1"]
