"""schemathesis 4 against the live app's /openapi.json (never a 500, answers as
documented).

What it sets up and checks, in detail: docs/testing.md, `test_api_schemathesis.py`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support.api_harness import (
    TOKENS,
)
from tests.support.live_server import CHECKS, WEBHOOK_SECRET, Live, LiveServer
from tests.support.tenant_keys import delete_tenant_keys

# The guard checks this module's output for e-mails and phones only: it sends generated input.
pytestmark = pytest.mark.fuzzing

TOKEN = TOKENS["admin"][0]
_REQUESTS_METRIC = "koban_options_http_requests_total"
EXAMPLES = int(os.environ.get("KOBAN_SCHEMATHESIS_EXAMPLES", "30"))
RANDOM = os.environ.get("KOBAN_SCHEMATHESIS_RANDOM") == "1"


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    tenant = "t" + uuid.uuid4().hex[:12]
    try:
        with LiveServer(redis_url, tenant) as server:
            yield Live(server.url, tenant)
    finally:
        delete_tenant_keys(redis_url, tenant)


def _seed(live: Live, session: requests.Session) -> None:
    """Options on L1 (two) and L2 (one), a préréservation on L3: something to act on."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{live.url}/v1/tenants/{live.tenant}/lots"
    for lot, third in (("L1", "p1"), ("L1", "p2"), ("L2", "p3")):
        answer = session.post(f"{base}/{lot}/options", json={"thirdGuid": third}, headers=auth)
        assert answer.status_code == 201, answer.text
    answer = session.post(
        f"{base}/L3/prereservation",
        json={"thirdGuid": "p4", "price": 250000, "deposit": 5000},
        headers=auth,
    )
    assert answer.status_code == 201, answer.text


def _pinned(live: Live, path: str) -> list[dict[str, Any]]:
    """Path parameters to pin: the test tenant, then known lots and a known prospect."""
    base: dict[str, Any] = {"tenant": live.tenant} if "{tenant}" in path else {}
    variants = [base]
    if "{extcode}" in path:
        variants += [{**base, "extcode": code} for code in ("L1", "L2", "L3")]
    if "{third}" in path:
        variants.append({**base, "third": "p1"})
    if "{rank}" in path:
        variants += [{**v, "rank": 1} for v in variants if "extcode" in v]
    return variants


def _strategy(live: Live, operation: Any) -> st.SearchStrategy[Any]:
    webhook = operation.path.startswith("/koban/")
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Koban-Webhook-Token": WEBHOOK_SECRET}
    query = {"token": WEBHOOK_SECRET} if webhook else None
    strategies = [
        operation.as_strategy(mode, path_parameters=pinned, headers=headers, query=query)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for pinned in _pinned(live, operation.path)
    ]
    return st.one_of(strategies)


def test_schemathesis_finds_no_server_error_nor_schema_violation(live: Live) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", timeout=10)
    session = requests.Session()
    _seed(live, session)
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("x-undocumented"):
            continue  # described by nobody yet: nothing to check it against
        if operation.path.endswith("/events/stream"):
            continue  # an endless SSE answer (tests/integration/test_api_events.py drives it)
        operations.append(operation)
    assert len(operations) >= 20
    failures: dict[str, str] = {}
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=not RANDOM,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @given(case=_strategy(live, operation))
        def run(case: Any) -> None:
            case.call_and_validate(session=session, checks=CHECKS, timeout=10)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:4000]
    if os.environ.get("KOBAN_SCHEMATHESIS_DEBUG"):
        text = session.get(f"{live.url}/metrics").text
        print("\n".join(x for x in text.splitlines() if x.startswith(_REQUESTS_METRIC)))
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())


def test_what_schemathesis_found_is_answered_as_documented(live: Live) -> None:
    """Regressions: instants past the year 4999 were 500s (Koban's wire refuses them; an
    expiry in 9999 rounded up to its tick cannot be written as ISO-8601)."""
    session = requests.Session()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{live.url}/v1/tenants/{live.tenant}/lots"
    placed = session.post(f"{base}/L7/options", json={"thirdGuid": "p5"}, headers=auth)
    assert placed.status_code == 201, placed.text
    for until in ("9849-03-27T17:07:22.678288-22:11", "1969-12-31T23:59:59Z"):
        answer = session.post(
            f"{base}/L7/options/1/prolongation", json={"until": until}, headers=auth
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == "until"
    hook = session.post(
        f"{live.url}/koban/{live.tenant}/option-placed",
        data={"Deal_Extcode": "NEW-1", "Third_Guid": "p6", "ExpDate": "253402300798999"},
        headers={"X-Koban-Webhook-Token": WEBHOOK_SECRET},
    )
    assert hook.status_code == 400, hook.text
    assert hook.json()["error"]["code"] == "MALFORMED_REQUEST"
