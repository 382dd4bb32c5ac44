"""The page's files (``GET /ui/static/{name}``) and the headers every page answer carries.

Only the files packaged under ``static/`` are served, read once at start-up and named
exactly (no directory walking from a request path). Swagger UI is vendored under
``static/vendor/swagger-ui/`` (version and licence in its ``VERSION`` note).
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["PAGE_CSP", "STATIC_DIR", "Assets", "page_headers"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# No inline script anywhere: Koban's strings (labels, statuses) are data, and a label that
# holds markup must never run. Inline SVG's presentation attributes are not styles.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI sets style attributes from script (React): its page allows inline styles,
# never inline script.
EXPLORER_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def page_headers(csp: str = PAGE_CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # "no-referrer" would make forms send Origin: null
        "Cache-Control": "no-store",
    }


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


class Assets:
    def __init__(self, root: Path = STATIC_DIR) -> None:
        self._files: dict[str, _Asset] = {}
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            body = path.read_bytes()
            kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._files[path.relative_to(root).as_posix()] = _Asset(body, kind, etag)

    def text(self, name: str) -> str:
        return self._files[name].body.decode("utf-8")

    async def serve(self, request: web.Request) -> web.Response:
        """A packaged file of the operator page or the API explorer (no session needed)."""
        asset = self._files.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()  # answered with the API's envelope
        headers = {
            **page_headers(),
            "ETag": asset.etag,
            "Cache-Control": "no-cache",  # revalidated: a new release changes them
        }
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type, headers=headers)
