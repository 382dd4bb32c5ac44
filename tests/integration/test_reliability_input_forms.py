"""Reliability against bad input (issue #6, item 3): Koban's webhook forms fuzzed with
Hypothesis (fields, encodings, content types, sizes, methods, secrets): never a 5xx, a
refusal changes nothing, and the API still reads whatever the webhooks wrote.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_input_*.py`.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections import Counter

import pytest
import redis as redis_sync
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.api_harness import T0
from tests.support.input_fuzzing import FORM, MAX_BODY, RANDOM, Live, Request, bearer, send
from tests.support.live_server import WEBHOOK_SECRET
from tests.support.redis_snapshot import changed, snapshot

# The guard checks this module's output for e-mails and phones only: it sends generated input.
pytestmark = pytest.mark.fuzzing

FORM_EXAMPLES = int(os.environ.get("KOBAN_FUZZ_FORM_EXAMPLES", "150"))


# --------------------------------------------------------------------------- webhook forms

PLACED_EXTRA = (
    "Third_Name",
    "Third_FirstName",
    "Third_EMail",
    "AssignedTo_Name",
    "AssignedTo_FirstName",
    "AssignedTo_EMail",
)
FIELDS: dict[str, tuple[str, ...]] = {
    "option-placed": (
        "Deal_Extcode",
        "Deal_Guid",
        "Third_Extcode",
        "Third_Guid",
        "Rank",
        "ExpDate",
        *PLACED_EXTRA,
    ),
    "option-cancelled": ("Deal_Extcode", "Deal_Guid", "Third_Extcode", "Third_Guid", "Rank"),
    "option-prolonged": (
        "Deal_Extcode",
        "Deal_Guid",
        "Third_Extcode",
        "Third_Guid",
        "Rank",
        "ExpDate",
        "PrgDate",
    ),
    "option-expired": ("Deal_Extcode", "Deal_Guid", "Third_Extcode", "Third_Guid"),
    "reservation-validated": ("Lot_Code", "DealId", "ThirdId", "_id", "PrixVente", "Garantie"),
    "reservation-withdrawn": ("Deal_Extcode", "Deal_Guid"),
    # Koban's lead webhook, Tags/MoreFields both as JSON text and as indexed fields.
    "lead": (
        "Contact_Type",
        "Lead_Guid",
        "Third_Guid",
        "Name",
        "FirstName",
        "EMail",
        "Phone",
        "Tags",
        "MoreFields",
        "Tags[0].TagCategoryCode",
        "Tags[0].Label",
        "MoreFields[0][FieldId]",
        "MoreFields[0][Value]",
        "Optin",
        "Comments",
    ),
}
ALL_FIELDS = sorted({f for names in FIELDS.values() for f in names} | {"extcode", "token"})
ENDPOINTS = [*FIELDS, "option-check"]
LOTS = ("L1", "L2", "L3", "L4", "L5", "W1", "W2", "NEW-1")
THIRDS = ("p1", "p2", "p3", "p4", "p5", "p6", "wx")
TICK = 1800


def _good(name: str) -> st.SearchStrategy[str]:
    """A plausible value for a field of Koban's forms."""
    if name in ("Deal_Extcode", "Lot_Code", "extcode"):
        return st.sampled_from(LOTS)
    if name in ("Third_Guid", "ThirdId"):
        return st.sampled_from(THIRDS)
    if name == "Rank":
        return st.sampled_from(["1", "2", ""])
    if name == "Lead_Guid":
        return st.sampled_from(["ld-1", "ld-2", ""])
    if name in ("Tags", "MoreFields"):
        return st.sampled_from(
            ['[{"TagCategoryCode": "PROGRAMME", "Label": "HAR"}]', '[{"FieldId": "f"}]', "[]", ""]
        )
    if name in ("ExpDate", "PrgDate"):
        seconds = st.integers(-4, 200).map(lambda k: T0 - T0 % TICK + k * TICK)
        return st.one_of(
            seconds.map(str),
            seconds.map(lambda s: str(s * 1000)),
            seconds.map(lambda s: f"{s}.5"),
        )
    return st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=12
    )


BAD_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "1.5",
            "1e9",
            "9" * 30,
            "9" * 400,
            "1" * 5000,
            "NaN",
            "inf",
            "-0",
            "true",
            "null",
            "[]",
            "{}",
            "3",
            "١٧٩٥٠٠٠٠٠٠",
            "2026-11-25T10:00:00Z",
            "0x10",
            "a|b",
            "a/b",
            "{x}",
            "*",
            "L1\x00",
            "L1\n",
            "\u202e",
            "é" * 201,
            "x" * 200,
            "x" * 201,
        ]
    ),
    st.text(max_size=40),
    st.integers(180, 260).map(lambda n: "y" * n),
)


def _encode_pairs(pairs: list[tuple[str, str]], how: str) -> bytes:
    if how == "latin-1":
        return urllib.parse.urlencode(pairs, encoding="latin-1", errors="replace").encode()
    if how == "raw-utf8":
        return "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")
    if how == "raw-latin1":
        return "&".join(f"{k}={v}" for k, v in pairs).encode("latin-1", "replace")
    return urllib.parse.urlencode(pairs).encode()


GARBAGE = [
    b"%",
    b"%G1",
    b"%FF%FE",
    b"%C3%28",
    b"%00",
    b"%%",
    b"\xff\xfe",
    b"\xc3\x28",
    b"%u00e9",
    b"+",
]


def usually(odds: int = 3) -> st.SearchStrategy[bool]:
    """True `odds` times in `odds + 1` (hypothesis favours the first of a sampled list)."""
    return st.sampled_from([True] * odds + [False])


@st.composite
def webhook_requests(draw: st.DrawFn, endpoint: str, tenant: str) -> Request:
    check = endpoint == "option-check"
    names = FIELDS.get(endpoint, ("extcode",))
    # The fields: a valid form most of the time, then a few mutations.
    pairs: list[tuple[str, str]] = []
    if draw(usually()):
        pairs = [(n, draw(_good(n))) for n in names if draw(usually(9))]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["drop", "bad", "twice-same", "twice-other", "extra", "big"]))
        if kind == "drop" and pairs:
            pairs.pop(draw(st.integers(0, len(pairs) - 1)))
        elif kind == "bad":
            name, value = draw(st.sampled_from(names)), draw(BAD_VALUES)
            pairs = [(n, value if n == name else v) for n, v in pairs]
            if name not in dict(pairs):
                pairs.append((name, value))
        elif kind == "twice-same" and pairs:
            pairs.append(pairs[draw(st.integers(0, len(pairs) - 1))])
        elif kind == "twice-other" and pairs:
            name = pairs[draw(st.integers(0, len(pairs) - 1))][0]
            pairs.append((name, draw(st.one_of(_good(name), BAD_VALUES))))
        elif kind == "extra":
            pairs.append(
                (
                    draw(st.one_of(st.sampled_from(ALL_FIELDS), st.text(max_size=10))),
                    draw(BAD_VALUES),
                )
            )
        elif kind == "big":
            pairs.append(
                (
                    draw(st.sampled_from(ALL_FIELDS)),
                    "z" * draw(st.integers(MAX_BODY - 64, MAX_BODY + 4096)),
                )
            )
    # The secret: header, query, both, neither, wrong ones.
    right, wrong = (
        WEBHOOK_SECRET,
        draw(
            st.sampled_from(
                ["", "x", WEBHOOK_SECRET + "x", WEBHOOK_SECRET[:-1], WEBHOOK_SECRET.upper(), "é"]
            )
        ),
    )
    if draw(usually()):  # the secret where Koban puts it (both places are allowed here)
        header, query_token = draw(st.sampled_from([(right, None), (None, right), (right, right)]))
    else:
        header, query_token = draw(
            st.sampled_from(
                [(None, None), (wrong, None), (None, wrong), (right, wrong), (wrong, right)]
            )
        )
    headers: dict[str, str] = {}
    if header is not None:
        headers["X-Koban-Webhook-Token"] = header
    query: list[tuple[str, str]] = []
    if query_token is not None:
        query.append(("token", query_token))
    # The body's encoding and content type.
    encoding = "utf-8"
    if not draw(usually()):
        encoding = draw(
            st.sampled_from(
                [
                    "latin-1",
                    "raw-utf8",
                    "raw-latin1",
                    "garbage",
                    "bytes",
                    "json",
                    "multipart",
                    "none",
                ]
            )
        )
    body: bytes | None
    if encoding == "garbage":
        raw = bytearray(_encode_pairs(pairs, "utf-8"))
        for _ in range(draw(st.integers(1, 3))):
            raw[draw(st.integers(0, len(raw))) : 0] = draw(st.sampled_from(GARBAGE))
        body = bytes(raw)
    elif encoding == "bytes":
        body = draw(st.binary(max_size=300))
    elif encoding == "json":
        body = json.dumps(dict(pairs)).encode()
    elif encoding == "multipart":
        parts = b"".join(
            b'--XyZ\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
            % (k.encode("utf-8", "replace"), v.encode("utf-8", "replace"))
            for k, v in pairs
        )
        body = parts + b"--XyZ--\r\n"
    elif encoding == "none":
        body = None
    else:
        body = _encode_pairs(pairs, encoding)
    content_type: str | None = FORM
    if not draw(usually()):
        content_type = draw(
            st.sampled_from(
                [
                    FORM + "; charset=utf-8",
                    FORM + "; charset=latin-1",
                    FORM + "; charset=utf-16",
                    FORM + "; charset=hex",
                    FORM + "; charset=base64",
                    FORM + "; charset=undefined",
                    FORM + "; charset=unicode_escape",
                    FORM + "; charset=idna",
                    FORM + "; charset=punycode",
                    FORM + "; charset=utf-7",
                    FORM + "; charset=no-such-codec",
                    FORM + '; charset="',
                    FORM + ";;;",
                    "APPLICATION/X-WWW-FORM-URLENCODED",
                    "application/json",
                    "multipart/form-data; boundary=XyZ",
                    "text/plain",
                    "",
                    None,
                ]
            )
        )
    if content_type is not None:
        headers["Content-Type"] = content_type
    if check:
        # The pre-check reads the query; fields go there (a body is ignored). The request
        # line stays under aiohttp's 8190 bytes (see test_a_request_line_over_...).
        fields = pairs if draw(st.booleans()) else [("extcode", draw(_good("extcode")))]
        query.extend((k[:1000], v[:1000]) for k, v in fields)
        if draw(st.booleans()):
            body = None
    method = "GET" if check else "POST"
    if not draw(usually(19)):
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    who = tenant if draw(usually(9)) else draw(st.sampled_from(["nobody", "t%00", "T" * 300]))
    text = "&".join(
        f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" for k, v in query
    )
    if query and not draw(usually(4)):
        text += "&" + draw(st.sampled_from(["%", "%G1", "token=%FF", "extcode=%C3%28", "=", "&&"]))
    text = text[:7000]
    path = f"/koban/{who}/{endpoint}" + (f"?{text}" if text else "")
    return Request(method, path, headers, body, endpoint)


REFUSAL_KEYS = {"success", "error"}


FORM_FIGURES: Counter[str] = Counter()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_webhook_form_fuzzer(hooks_live: Live, endpoint: str) -> None:
    live = hooks_live
    client = redis_sync.Redis.from_url(live.redis_url)
    seen: Counter[str] = Counter()

    @settings(
        max_examples=FORM_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(request=webhook_requests(endpoint, live.tenant))
    def run(request: Request) -> None:
        before = snapshot(client, live.tenant)
        status, content_type, raw = send(live, request)
        after = snapshot(client, live.tenant)
        seen[f"{status}"] += 1
        assert status < 500, (status, raw[:500])
        assert content_type.startswith("application/json"), (status, content_type, raw[:200])
        body = json.loads(raw)
        if status == 200 and endpoint == "option-check" and request.method == "GET":
            assert set(body) == {"status", "rank"} and isinstance(body["status"], bool), body
            assert not changed(before, after), "the pre-check changed Redis"
            return
        if status == 200:
            assert body == {"success": True}, body
            return
        assert set(body) == REFUSAL_KEYS and body["success"] is False, body
        error = body["error"]
        assert set(error) == {"message", "code"}, body
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["code"], str) and error["code"].isupper()
        assert not changed(before, after), (status, error, changed(before, after))

    try:
        run()
    finally:
        client.close()
    FORM_FIGURES.update({f"{endpoint} {k}": v for k, v in seen.items()})
    statuses = dict(sorted(seen.items()))
    print(f"\nFUZZ webhook {endpoint}: requests={sum(seen.values())} statuses={statuses}")
    assert seen["400"] > 0 and seen["401"] > 0 and seen["200"] > 0


def test_the_api_reads_whatever_the_webhooks_wrote(hooks_live: Live) -> None:
    """After the fuzzer: every lot, listing and the event stream still read without a 5xx
    (odd extcodes and guids the forms accepted do not break the API's indexes)."""
    live = hooks_live
    session = requests.Session()
    base = f"{live.url}/v1/tenants/{live.tenant}"
    auth = bearer("admin")
    codes: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = session.get(f"{base}/lots", params=params, headers=auth)
        assert page.status_code == 200, page.text
        codes += [item["extcode"] for item in page.json()["items"]]
        cursor = page.json()["nextCursor"]
        if cursor is None:
            break
    assert {"L1", "W1", "W2"} <= set(codes)
    for code in codes:
        quoted = urllib.parse.quote(code, safe="")
        for rest in ("", "/history", "/availability"):
            answer = session.get(f"{base}/lots/{quoted}{rest}", headers=auth)
            assert answer.status_code < 500, (code, rest, answer.text)
    for rest in ("options?limit=1000", "events?limit=1000"):
        answer = session.get(f"{base}/{rest}", headers=auth)
        assert answer.status_code == 200, answer.text
    print(f"\nFUZZ webhook lots afterwards: {len(codes)}")
