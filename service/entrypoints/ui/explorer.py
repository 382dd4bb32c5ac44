"""``GET /docs``: an interactive explorer of ``/openapi.json`` — Swagger UI, vendored under
``static/vendor/swagger-ui/`` and served by the service; ``static/docs-init.js`` starts it
with this service's document only (no configuration taken from the query string). A
signed-in operator's "try it" goes with the session cookie and, for writes, its
``X-CSRF-Token`` (read from the page, never stored by the browser)."""

from __future__ import annotations

from aiohttp import web

from service.entrypoints.ui.assets import EXPLORER_CSP
from service.entrypoints.ui.render import render
from service.entrypoints.ui.session import session_of

__all__ = ["explorer"]


async def explorer(request: web.Request) -> web.Response:
    """The API explorer (Swagger UI) of /openapi.json."""
    found = session_of(request)
    csrf = found[0].csrf if found is not None else None
    return render("explorer.html", csp=EXPLORER_CSP, title="koban-options API", csrf=csrf)
