"""Reliability against bad input (issue #6, item 3): schemathesis against /openapi.json with
a deep budget, as an admin, a partner and a read token, each on stock of its own kind of
caller: never a 5xx, answers as documented.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_input_*.py`.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support.api_harness import TOKENS
from tests.support.input_fuzzing import RANDOM, Live, _seed, live_server
from tests.support.live_server import CHECKS, WEBHOOK_SECRET

# The guard checks this module's output for e-mails and phones only: it sends generated input.
pytestmark = pytest.mark.fuzzing

EXAMPLES = int(os.environ.get("KOBAN_FUZZ_EXAMPLES", "50"))


class CountingSession(requests.Session):
    """A requests session that counts what it sends, by answer status."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: Counter[int] = Counter()

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        response = super().request(*args, **kwargs)
        self.statuses[response.status_code] += 1
        return response


def _pinned(live: Live, path: str) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"tenant": live.tenant} if "{tenant}" in path else {}
    variants = [base]
    if "{extcode}" in path:
        variants += [{**base, "extcode": code} for code in ("L1", "L2", "L3", "L4", "L5")]
    if "{third}" in path:
        variants += [{**base, "third": third} for third in ("p1", "p4")]
    if "{code}" in path:  # a programme
        variants += [{**base, "code": code} for code in ("HAR", "BEL")]
    if "{leadId}" in path:
        variants += [{**base, "leadId": "ld-1"}]
    if "{rank}" in path:
        variants += [{**v, "rank": r} for v in variants if "extcode" in v for r in (1, 2)]
    return variants


ROLES = {
    # role: (token, writer of the seed, examples per operation and variant, webhooks too)
    "admin": ("admin", "admin", EXAMPLES, True),
    "partner": ("cgp1", "cgp1", max(1, EXAMPLES // 2), False),
    "read": ("read", "admin", max(1, EXAMPLES // 2), False),
}


@pytest.mark.parametrize("role", list(ROLES))
def test_schemathesis_deep(redis_url: str, role: str) -> None:
    token, writer, examples, webhooks = ROLES[role]
    with live_server(redis_url) as live:
        session = CountingSession()
        _seed(live, session, writer)
        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", timeout=10)
        operations = []
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.definition.raw.get("x-undocumented"):
                continue  # nothing to check it against (test_api_openapi lists them)
            if operation.path.endswith("/events/stream"):
                continue  # an endless SSE answer (tests/integration/test_api_events.py drives it)
            if not webhooks and not operation.path.startswith("/v1/"):
                continue
            operations.append(operation)
        assert len(operations) >= (20 if webhooks else 12)
        headers = {
            "Authorization": f"Bearer {TOKENS[token][0]}",
            "X-Koban-Webhook-Token": WEBHOOK_SECRET,
        }
        failures: dict[str, str] = {}
        cases = 0
        for operation in operations:
            query = {"token": WEBHOOK_SECRET} if operation.path.startswith("/koban/") else None
            strategy = st.one_of(
                [
                    operation.as_strategy(
                        mode, path_parameters=pinned, headers=headers, query=query
                    )
                    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                    for pinned in _pinned(live, operation.path)
                ]
            )
            # More cases where more path variants lead to more states.
            budget = examples * (1 + len(_pinned(live, operation.path)) // 3)

            @settings(
                max_examples=budget,
                deadline=None,
                database=None,
                derandomize=not RANDOM,
                suppress_health_check=list(HealthCheck),
                print_blob=True,
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                nonlocal cases
                cases += 1
                case.call_and_validate(session=session, checks=CHECKS, timeout=10)

            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:
                failures[operation.label] = f"{type(exc).__name__}: {exc}"[:4000]
        statuses = dict(sorted(session.statuses.items()))
        print(
            f"\nFUZZ schemathesis role={role} operations={len(operations)} cases={cases} "
            f"requests={sum(statuses.values())} statuses={statuses}"
        )
        assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
        assert not [s for s in statuses if s >= 500]
        # Deep paths were reached: writes succeeded, and the rules and Koban refused some.
        assert any(200 <= s < 300 for s in statuses) and statuses.get(422, 0) > 0
        if role != "read":
            assert statuses.get(409, 0) + statuses.get(404, 0) > 0
