"""Descriptions of ``/healthz`` (the app's own), ``/readyz`` and ``/metrics``
(`service.entrypoints.api.health`), registered with `describe`: no token, tag operations."""

from __future__ import annotations

from service.entrypoints.api.health import HealthOut, ReadyOut
from service.entrypoints.api.openapi import Operation, Reply, describe

_TAG = "operations"

describe(
    "GET",
    "/healthz",
    Operation("Liveness", _TAG, {200: Reply(HealthOut, "Serving.")}, auth="none"),
)
describe(
    "GET",
    "/readyz",
    Operation(
        "Readiness: Redis answers PING; the scheduler's heartbeat age when there is one",
        _TAG,
        {
            200: Reply(ReadyOut, "Ready."),
            503: Reply(ReadyOut, "Redis does not answer."),
        },
        auth="none",
    ),
)
describe(
    "GET",
    "/metrics",
    Operation(
        "Prometheus metrics",
        _TAG,
        {200: Reply(None, "Prometheus text format 0.0.4.", "text/plain", {"type": "string"})},
        auth="none",
    ),
)
