"""The page's templates (Jinja2, one per view, autoescaped: every value from Koban is text)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from service.entrypoints.ui.assets import PAGE_CSP, page_headers

__all__ = ["render", "sign_in_page"]

_ENV = Environment(
    loader=PackageLoader("service.entrypoints.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_SIGNED_OUT: dict[str, Any] = {"tenant": None, "session": None, "clock_control": False}


def render(template: str, status: int = 200, *, csp: str = PAGE_CSP, **values: Any) -> web.Response:
    text = _ENV.get_template(template).render(**values)
    return web.Response(
        text=text, status=status, content_type="text/html", headers=page_headers(csp)
    )


def sign_in_page(message: str | None = None, status: int = 401) -> web.Response:
    return render("signin.html", status, message=message, **_SIGNED_OUT)
