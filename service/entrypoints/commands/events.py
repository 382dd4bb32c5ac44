"""`events tail`: follow a tenant's CloudEvents stream."""

from __future__ import annotations

import asyncio
import signal

from service.entrypoints.commands.common import (
    clock_mark,
    print_json,
    setup_for,
    unknown_tenant,
    with_tenants,
)
from service.entrypoints.commands.exit_codes import OK, USAGE
from service.storage.event_stream import StreamTail
from service.tenancy import Tenants
from statecharts.ticks import to_iso


async def tail_events(tenant_name: str, from_start: bool, as_json: bool) -> int:
    setup = setup_for(tenant_name)
    if unknown_tenant(setup.settings, tenant_name):
        return USAGE

    async def follow(tenants: Tenants) -> int:
        tenant = tenants[tenant_name]
        tail = StreamTail.of(tenant.store)
        # A concrete position, taken before the header is printed: whatever is appended
        # after the header shows up (``$`` would only start counting at the first read).
        last = "0-0" if from_start else await tail.last_id()
        if not as_json:
            now = tenant.clock.now()
            print(
                f"{tenant_name}: events {'from the start' if from_start else 'from now'}; "
                f"now {to_iso(now)}{clock_mark(tenant)}",
                flush=True,
            )
        # Ctrl-C / SIGTERM end the loop between two reads: cancelling a read in flight
        # can be lost (and the process left waiting) when it lands during a blocked write.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            while not stop.is_set():
                # The wait stays under the client's socket timeout, which would cut it short.
                for entry_id, e in await tail.read(last, 100, 1000):
                    last = entry_id
                    if as_json:
                        print_json(e)
                        continue
                    who = e["data"].get("thirdGuid") or ""
                    line = f"{e['time']}  {e['subject']:<14} {e['type']:<28} {who}"
                    print(line, flush=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return OK

    return await with_tenants(setup.settings, follow)
