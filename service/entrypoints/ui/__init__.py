"""The operator page (``/ui/``) and the API explorer (``/docs``), served by the API process.

Server-rendered HTML (Jinja2, autoescaped, one template per view) with one small script and
one stylesheet, no build step; the lot chart is an SVG made at build time (`chart`);
Swagger UI is vendored. Sessions (`session`, `service.storage.sessions`) let a browser use
the ``/v1`` routes with a cookie instead of a bearer token, with the same scopes and
redaction; `docs/operator-page.md` describes the page; `install.install_ui` wires it.
"""
