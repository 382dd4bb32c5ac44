"""Security (issue #6, item 4): bearer tokens and webhook secrets are compared in constant
time (`hmac.compare_digest`, no early exit), and no code in service/ compares them with an
operator (an AST scan).

What it sets up and checks, in detail: docs/testing.md, `test_reliability_security_*.py`.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.security_deployment import Deployment

SERVICE = Path(__file__).resolve().parents[2] / "service"


# --------------------------------------------------------------------------- constant time


class Spy:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.real = hmac.compare_digest

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls.append((bytes(a, "utf-8") if isinstance(a, str) else bytes(a), bytes(b)))
        return self.real(a, b)


async def test_bearer_tokens_are_compared_in_constant_time(
    dep: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    configured = sum(len(t.settings.api_tokens) for t in (dep.tenant, dep.other_tenant))
    for presented, status in (
        (dep.secrets.tokens["admin"], 200),  # the first configured: still compared to all
        (dep.secrets.tokens["cgp2"], 200),
        (dep.secrets.other_token, 404),
        (dep.secrets.tokens["read"] + "x", 401),
        ("garbage", 401),
    ):
        spy.calls.clear()
        answer = await dep.call("GET", "lots/L1", token=presented)
        assert answer.status == status
        digest = hashlib.sha256(presented.encode()).digest()
        assert len(spy.calls) == configured, presented  # no early exit
        assert all(digest in pair for pair in spy.calls)


async def test_webhook_secrets_are_compared_in_constant_time(
    dep: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    secret = dep.secrets.webhook
    expected = secret.encode()
    for header, query, status in (
        (secret, None, 200),
        (None, secret, 200),
        (secret, secret, 200),
        ("wrong", None, 401),
        (secret, "wrong", 401),
    ):
        for name in ("option-check", "option-expired"):
            spy.calls.clear()
            answer = await dep.hook(
                name, {"Deal_Extcode": "L1", "Third_Guid": "p1"}, header=header, query=query
            )
            assert answer.status == status, (name, header, query, answer.body)
            given = [g for g in (header, query) if g is not None]
            assert spy.calls == [(g.encode(), expected) for g in given], name


_SECRET_WORDS = re.compile(r"(?i)(secret|token|digest|api_key|user_key|password)")


def _secret_operand(node: ast.expr) -> bool:
    text = ast.unparse(node)
    if not _SECRET_WORDS.search(text):
        return False
    # Constants naming a header or a parameter (TOKEN_HEADER, TOKEN_QUERY) are no secrets.
    return not re.fullmatch(r"[A-Z_][A-Z0-9_.]*", text)


def operator_comparisons(source: str, where: str = "") -> list[str]:
    """Comparisons by ==, !=, in, not in with a token, secret or digest as an operand."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if isinstance(left, ast.Constant) or isinstance(right, ast.Constant):
                continue  # 'header' in token_in: where a token goes, not a token
            if isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) and (
                _secret_operand(left) or _secret_operand(right)
            ):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_token_or_secret_is_compared_with_an_operator() -> None:
    """Code inspection: in service/, tokens, secrets and digests are compared only through
    hmac.compare_digest, never with ==, !=, in or not in."""
    planted = "if entry.digest == digest or presented in tokens or s.get_secret_value() != x: pass"
    assert len(operator_comparisons(planted)) == 3  # the scan sees what it looks for
    found = []
    for path in sorted(SERVICE.rglob("*.py")):
        found += operator_comparisons(path.read_text(), str(path.relative_to(SERVICE.parent)))
    assert not found, "\n".join(found)
