"""``GET /docs``: a self-contained HTML page listing the operations of the document
(no scripts, no CDN), built once from the same document ``/openapi.json`` serves."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from service.entrypoints.api.openapi import JSON

__all__ = ["docs_html"]


def docs_html(spec: Mapping[str, Any]) -> str:
    """A self-contained page listing the operations of `spec` (no scripts, no CDN)."""
    esc = html.escape
    rows = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            security = op.get("security")
            auth = (
                "none"
                if not security
                else "bearer" + (f" ({op['x-scope']})" if op.get("x-scope") else "")
                if "bearerAuth" in security[0]
                else "webhook secret"
            )
            params = ", ".join(
                f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})"
                for p in op.get("parameters", [])
            )
            body = ""
            if "requestBody" in op:
                media, content = next(iter(op["requestBody"]["content"].items()))
                schema = content["schema"]
                body = f"{_schema_name(schema)} ({media})"
            answers = "<br>".join(
                f"<b>{esc(status)}</b> {esc(_answer(r))}" for status, r in op["responses"].items()
            )
            rows.append(
                "<tr>"
                f"<td><code>{esc(method.upper())}</code></td>"
                f"<td><code>{esc(path)}</code></td>"
                f"<td>{esc(op.get('summary', ''))}</td>"
                f"<td>{esc(auth)}</td>"
                f"<td>{esc(params)}</td>"
                f"<td>{esc(body)}</td>"
                f"<td>{answers}</td>"
                "</tr>"
            )
    schemas = ", ".join(f"<code>{esc(name)}</code>" for name in spec["components"]["schemas"])
    title = esc(f"{spec['info']['title']} {spec['info']['version']}")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5em}"
        "table{border-collapse:collapse;font-size:.9em}"
        "td,th{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:left}"
        "th{background:#eee}code{white-space:nowrap}"
        "</style></head><body>"
        f"<h1>{title}</h1>"
        f'<p>OpenAPI {esc(spec["openapi"])}: <a href="/openapi.json">/openapi.json</a>. '
        f"{esc(spec['info'].get('description', ''))}</p>"
        "<table><thead><tr><th>method</th><th>path</th><th>does</th><th>auth</th>"
        "<th>parameters</th><th>body</th><th>answers</th></tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table><h2>Schemas</h2><p>{schemas}</p></body></html>"
    )


def _schema_name(schema: Mapping[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    return str(schema.get("title") or schema.get("type") or "object")


def _answer(response: Mapping[str, Any]) -> str:
    content = response.get("content")
    if not content:
        return str(response.get("description", ""))
    media, body = next(iter(content.items()))
    name = _schema_name(body.get("schema", {}))
    return f"{name} ({media})" if media != JSON else name
