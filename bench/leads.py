"""`python -m bench.leads`: what a lead webhook costs next to an option-placed one.

On N leads (KOBAN_BENCH_LEADS, default 2000), against a private redis-server, in one run:

(a) baseline: `apply_webhook` with an option-placed form on N lots (one lot commit each);
(b) leads: `parse_lead_form` + `receive_lead` (the contact kept, the event appended, the
    dedup guard set: one script);
(c) repeats: the same N lead forms again, each answered by the dedup guard.

Printed as ``BENCH <name> <value> <unit>``, with (b)/(a) and (c)/(a).
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
from service.koban.lead_form import parse_lead_form
from service.koban.webhook_forms import OptionPlacedForm
from service.storage.redis_client import connect
from service.storage.store import LotStore
from service.tenancy import Tenant
from service.usecases.koban_webhooks import apply_webhook
from service.usecases.leads import receive_lead
from tests.support.redis_server import start_redis_server

N_LEADS = int(os.environ.get("KOBAN_BENCH_LEADS", "2000"))
T0 = 1_795_000_000 - 1_795_000_000 % 1800
DAY = 86400


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def lead_pairs(i: int) -> list[tuple[str, str]]:
    return [
        ("Contact_Type", "Lead"),
        ("Lead_Guid", f"lead-{i:06d}"),
        ("Name", "Martin"),
        ("FirstName", "Alice"),
        ("EMail", f"alice{i}@example.fr"),
        ("Phone", "0102030405"),
        ("Tags[0].TagCategoryCode", "PROGRAMME"),
        ("Tags[0].Label", "HAR"),
        ("Tags[1].TagCategoryCode", "NBPIECES"),
        ("Tags[1].Label", "T3"),
        ("MoreFields", '[{"FieldId": "budget", "Value": "250000"}]'),
    ]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis_server(Path(tmp))
        redis = connect(url)
        try:
            settings = TenantSettings(webhook_secret=SecretStr("bench"))
            rules = rules_from(settings)
            clock = FixedClock(T0 + 600)
            lots = Tenant(
                "bench-lots", settings, rules, LotStore(redis, "bench-lots", rules), clock
            )
            leads = Tenant(
                "bench-leads", settings, rules, LotStore(redis, "bench-leads", rules), clock
            )
            codes = [f"L{i:06d}" for i in range(N_LEADS)]
            for code in codes:
                await lots.store.import_lot(code, T0, program="P1")
            fields = {"Rank": "1", "ExpDate": str(T0 + 2 * DAY)}

            started = time.perf_counter()
            for code in codes:
                placed = {"Deal_Extcode": code, "Third_Guid": f"third-{code}", **fields}
                await apply_webhook(lots, "option-placed", OptionPlacedForm.model_validate(placed))
            placed_s = (time.perf_counter() - started) / N_LEADS

            started = time.perf_counter()
            for i in range(N_LEADS):
                assert await receive_lead(leads, parse_lead_form(lead_pairs(i))) is not None
            lead_s = (time.perf_counter() - started) / N_LEADS

            started = time.perf_counter()
            for i in range(N_LEADS):
                assert await receive_lead(leads, parse_lead_form(lead_pairs(i))) is None
            repeat_s = (time.perf_counter() - started) / N_LEADS

            bench("lead_bench_leads", N_LEADS, "leads")
            bench("webhook_option_placed", placed_s * 1e6, "us/op")
            bench("webhook_lead_received", lead_s * 1e6, "us/op")
            bench("webhook_lead_repeat", repeat_s * 1e6, "us/op")
            bench("lead_received_over_option_placed", lead_s / placed_s, "ratio")
            bench("lead_repeat_over_option_placed", repeat_s / placed_s, "ratio")
        finally:
            await redis.aclose()
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
