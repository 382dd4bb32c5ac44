"""`python -m bench.webhooks`: what a Koban webhook costs over the store's own transition.

On N lots (KOBAN_BENCH_WEBHOOK_LOTS, default 2000), each round places then cancels one
option per lot, twice in one process against a private redis-server:

(a) baseline: the store's own transitions (`LotStore.place_local`, `LotStore.cancel`);
(b) webhooks: `apply_webhook` with option-placed then option-cancelled forms (the use
    case: history tail and tombstones prefetched, the pure rule step, one commit).

Printed as ``BENCH <name> <value> <unit>``, with (b)/(a) per operation.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from service.bootstrap import rules_from
from service.clock import FixedClock
from service.config import TenantSettings
from service.koban.webhook_forms import OptionCancelledForm, OptionPlacedForm
from service.storage.redis_client import connect
from service.storage.store import LotStore
from service.tenancy import Tenant
from service.usecases.koban_webhooks import apply_webhook
from tests.support.redis_server import start_redis_server

N_LOTS = int(os.environ.get("KOBAN_BENCH_WEBHOOK_LOTS", "2000"))
T0 = 1_795_000_000 - 1_795_000_000 % 1800
DAY = 86400


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis_server(Path(tmp))
        redis = connect(url)
        try:
            settings = TenantSettings(webhook_secret=SecretStr("bench"))
            rules = rules_from(settings)
            clock = FixedClock(T0 + 600)
            base = LotStore(redis, "bench-base", rules)
            hooked = LotStore(redis, "bench-hook", rules)
            tenant = Tenant("bench-hook", settings, rules, hooked, clock)
            codes = [f"L{i:06d}" for i in range(N_LOTS)]
            for code in codes:  # both tenants know every lot before the timed rounds
                await base.import_lot(code, T0, program="P1")
                await hooked.import_lot(code, T0, program="P1")
            now = clock.now()

            started = time.perf_counter()
            for code in codes:
                await base.place_local(code, f"third-{code}", None, now)
            place_base = (time.perf_counter() - started) / N_LOTS
            started = time.perf_counter()
            for code in codes:
                await base.cancel(code, 1, now, f"third-{code}", actor="koban")
            cancel_base = (time.perf_counter() - started) / N_LOTS

            fields = {"Rank": "1", "ExpDate": str(T0 + 2 * DAY)}
            started = time.perf_counter()
            for code in codes:
                placed = {"Deal_Extcode": code, "Third_Guid": f"third-{code}", **fields}
                form = OptionPlacedForm.model_validate(placed)
                await apply_webhook(tenant, "option-placed", form)
            place_hook = (time.perf_counter() - started) / N_LOTS
            started = time.perf_counter()
            for code in codes:
                cancel = {"Deal_Extcode": code, "Third_Guid": f"third-{code}", "Rank": "1"}
                form2 = OptionCancelledForm.model_validate(cancel)
                await apply_webhook(tenant, "option-cancelled", form2)
            cancel_hook = (time.perf_counter() - started) / N_LOTS

            bench("webhook_bench_lots", N_LOTS, "lots")
            bench("store_place_local", place_base * 1e6, "us/op")
            bench("store_cancel", cancel_base * 1e6, "us/op")
            bench("webhook_option_placed", place_hook * 1e6, "us/op")
            bench("webhook_option_cancelled", cancel_hook * 1e6, "us/op")
            bench("webhook_option_placed_over_store", place_hook / place_base, "ratio")
            bench("webhook_option_cancelled_over_store", cancel_hook / cancel_base, "ratio")
        finally:
            await redis.aclose()
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
