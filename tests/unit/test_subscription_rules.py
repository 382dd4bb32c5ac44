"""Pure rules of webhook subscriptions: which addresses and URLs are refused, which type
patterns are accepted and match, secrets sealed at rest, Standard Webhooks headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.outbound.signing import SecretBox, SecretBoxError, new_secret, signature_headers
from service.outbound.targets import TargetPolicy, check_url, refusal
from service.storage.subscriptions import matches
from service.usecases.subscriptions import type_error


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "::1",
        "::",
        "fd00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 form of 169.254.169.254
        "224.0.0.1",
        "240.0.0.1",
    ],
)
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_url_rules() -> None:
    strict, http_ok = TargetPolicy(), TargetPolicy(allow_http=True)
    assert check_url("https://hooks.example.org/k?x=1", strict) is None
    assert check_url("http://hooks.example.org/", strict) is not None
    assert check_url("http://hooks.example.org/", http_ok) is None
    for bad in ("ftp://x.org/", "https:///x", "https://x.org/#frag", "https://x.org:70000/", "x"):
        assert check_url(bad, http_ok) is not None, bad
    assert check_url("https://x.org/" + "a" * 3000, strict) is not None


def test_type_patterns() -> None:
    for good in ("*", "koban.option.*", "koban.*", "koban.lot.reserved", "koban.subscription.ping"):
        assert type_error(good) is None, good
    for bad in ("koban.option", "koban.nope.*", "option.*", "koban.option.exploded", "**", ""):
        assert type_error(bad) is not None, bad
    assert matches(["koban.option.*"], "koban.option.expired")
    assert not matches(["koban.option.*"], "koban.lot.reserved")
    assert matches(["koban.lot.reserved", "koban.sync.*"], "koban.sync.drift_detected")
    assert matches(["*"], "koban.intent.resolved")


def test_secrets_are_sealed_and_open_only_with_the_key() -> None:
    key, other = SecretBox.generate_key(), SecretBox.generate_key()
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == 6 + 32
    sealed = SecretBox(key).seal(secret)
    assert secret not in sealed
    assert SecretBox(key).open(sealed) == secret
    assert SecretBox(f"{other},{key}").open(sealed) == secret  # key rotation
    with pytest.raises(SecretBoxError):
        SecretBox(other).open(sealed)
    with pytest.raises(SecretBoxError) as refused:
        SecretBox("not-a-key")
    assert "not-a-key" not in str(refused.value)


def test_headers_verify_with_each_live_secret_and_not_with_others() -> None:
    old, new, stranger = new_secret(), new_secret(), new_secret()
    body = '{"id": "L1-000000000001"}'
    headers = signature_headers("t:L1-000000000001", body, [new, old])
    assert headers["webhook-id"] == "t:L1-000000000001"
    assert abs(int(headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 5
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"id": "L1-000000000001"}
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace("1", "2"), headers)
