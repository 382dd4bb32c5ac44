"""`running_api` with tenant settings of the test's choosing (a webhook secret, token CGPs),
the sandbox's lead webhook pointed at the API, and no second tenant."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.asyncio import Redis

from tests.support.api_harness import Api, running_api

WEBHOOK_SECRET = "wh-secret"


def running_api_with(
    redis: Redis, tenant: str, **settings: Any
) -> AbstractAsyncContextManager[Api]:
    """The API (tenant `tenant` with `settings`) and the sandbox on loopback ports."""
    return running_api(redis, tenant, other_tenant=False, webhook_secret=WEBHOOK_SECRET, **settings)
