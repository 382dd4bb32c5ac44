"""The webhook secret is masked wherever a URL or a request line is logged."""

from __future__ import annotations

import pytest

from service.entrypoints.koban_webhooks import redact_token


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("/koban/t/x?extcode=A1&token=abc", "/koban/t/x?extcode=A1&token=***"),
        ("/koban/t/option-placed?token=abc", "/koban/t/option-placed?token=***"),
        ("https://h/koban/t/x?token=a%20b&x=1#f", "https://h/koban/t/x?token=***&x=1#f"),
        ('POST /koban/t/x?TOKEN=abc HTTP/1.1" 200', 'POST /koban/t/x?TOKEN=*** HTTP/1.1" 200'),
        ("/koban/t/x?token=a&token=b", "/koban/t/x?token=***&token=***"),
        ("/koban/t/x?mytoken=a&extcode=token=1", "/koban/t/x?mytoken=a&extcode=token=1"),
        ("/koban/t/option-check?extcode=A1", "/koban/t/option-check?extcode=A1"),
    ],
)
def test_redact_token(url: str, redacted: str) -> None:
    assert redact_token(url) == redacted
    assert "abc" not in redact_token(url)
