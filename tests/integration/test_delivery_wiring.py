"""The deliverer is part of the scheduler daemon (and so of `run`), whose demo tenant
accepts a receiver on this machine."""

from __future__ import annotations

from redis.asyncio import Redis

from service.clock import FixedClock
from service.config import Settings
from service.entrypoints.run import dev_settings
from service.entrypoints.scheduler import Daemon
from service.storage.keys import SCHEDULER_HEARTBEAT_KEY
from service.tenancy import Tenants
from service.usecases.subscriptions import create_subscription
from tests.support.subscriptions import Receiver, serving, subs_tenant, wait_for

T0 = 1_795_000_200


async def test_the_scheduler_daemon_delivers_and_stops_cleanly(redis: Redis, tenant: str) -> None:
    shop = subs_tenant(redis, tenant, FixedClock(T0))
    await shop.store.import_lot("L1", T0 - 60, program="HAR", label="L1")
    receiver = Receiver()
    async with serving(receiver):
        _, secret = await create_subscription(shop, "r", receiver.url, ["*"])
        receiver.secrets = [secret]
        daemon = Daemon(Tenants({tenant: shop}), redis, koban_factory=lambda t, s: None)
        await daemon.start()
        try:
            assert daemon.deliverer is not None
            await shop.store.place_local("L1", "p1", None, T0)
            await wait_for(lambda: receiver.acked_ids() == ["L1-000000000002"])
        finally:
            await daemon.stop()
            await redis.delete(SCHEDULER_HEARTBEAT_KEY)  # service-wide: /readyz tests expect none
        assert daemon.deliverer is None
    assert receiver.forged == 0


def test_runs_demo_tenant_allows_local_receivers_and_has_a_subscription_key() -> None:
    settings = dev_settings(Settings(), "http://127.0.0.1:8081/api/v1")
    demo = settings.tenants["demo"]
    assert demo.allow_private_targets and demo.allow_http_targets
    assert settings.subscription_key is not None
