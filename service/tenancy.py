"""A tenant's runtime context: its settings, rules, store and clock (`service.bootstrap`
builds one per configured tenant)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from service.clock import Clock
from service.config import TenantSettings
from service.outbound.signing import SecretBox
from service.storage.store import LotStore
from service.storage.subscriptions import SubscriptionStore
from statecharts.model import Rules


@dataclass(slots=True)
class Tenant:
    name: str
    settings: TenantSettings
    rules: Rules
    store: LotStore
    clock: Clock
    # Webhook subscriptions; `secret_box` is None when no subscription key is configured.
    subscriptions: SubscriptionStore | None = None
    secret_box: SecretBox | None = None

    def __post_init__(self) -> None:
        if self.subscriptions is None:  # a tenant built by hand still lists and reads them
            self.subscriptions = SubscriptionStore(self.store.redis, self.name)


class Tenants(Mapping[str, Tenant]):
    """Every configured tenant, by name."""

    def __init__(self, tenants: Mapping[str, Tenant]) -> None:
        self._tenants = dict(tenants)

    def __getitem__(self, name: str) -> Tenant:
        return self._tenants[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tenants)

    def __len__(self) -> int:
        return len(self._tenants)
