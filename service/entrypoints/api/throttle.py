"""The per-token rate limit of `/v1` (`api_rate_per_s`, `api_burst` per tenant).

Installed only when a tenant sets a rate, so an unlimited deployment pays nothing. The
bucket lives in Redis (`service.storage.rate_limit`), so every worker and replica shares
it; a refused request is `429 RATE_LIMITED` with `Retry-After`, before its handler runs.
"""

from __future__ import annotations

import math

from aiohttp import web
from aiohttp.typedefs import Handler

from service.entrypoints.api.auth import bearer
from service.entrypoints.api.context import TOKENS_KEY
from service.entrypoints.api.errors import RATE_LIMITED, ApiError
from service.storage.rate_limit import take
from service.tenancy import Tenants

__all__ = ["needs_throttle", "throttle_middleware"]


def needs_throttle(tenants: Tenants) -> bool:
    return any(t.settings.api_rate_per_s is not None for t in tenants.values())


@web.middleware
async def throttle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    tenant_name = request.match_info.get("tenant")
    presented = bearer(request) if tenant_name is not None else None
    if presented is not None and request.path.startswith("/v1/"):
        entry = request.app[TOKENS_KEY].identify(presented)
        if entry is not None and entry.caller.tenant.name == tenant_name:
            tenant = entry.caller.tenant
            rate = tenant.settings.api_rate_per_s
            if rate is not None:
                burst = tenant.settings.api_burst or max(1, math.ceil(rate))
                key = tenant.store.keys.rate_limit(entry.caller.token_id)
                wait = await take(tenant.store.redis, key, rate, burst)
                if wait > 0:
                    raise ApiError(
                        429,
                        RATE_LIMITED,
                        f"This token sends more than {rate:g} requests per second; "
                        "retry after the delay given.",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))},
                    )
    return await handler(request)
