"""Cleaning up after a test: only the keys under its tenant's hash tag, never a flush, so
REDIS_URL may point at a shared server."""

from __future__ import annotations

from service.storage.keys import TenantKeys
from tests.support.redis_cluster import sync_nodes


def delete_tenant_keys(url: str, tenant: str) -> None:
    pattern = TenantKeys(tenant).prefix + "*"
    for client in sync_nodes(url):  # every master of a cluster, or the one server
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 1000):
            client.delete(*batch[i : i + 1000])
        client.close()
