"""KobanClient against scripted Koban servers on 127.0.0.1 (tests/support/koban_scripted.py):
when Koban fails: retries and backoff, 429 and Retry-After, unreadable bodies, writes whose
outcome is unknown, and the rate limit.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from service.entrypoints.api.errors import as_api_error
from service.koban.client import KobanClient, KobanError, KobanOutcomeUnknown, KobanUnavailable
from tests.support.koban_client_env import (
    T0,
    FakeSleep,
    make_client,
)
from tests.support.koban_scripted import (
    ADD,
    DROP,
    FREE,
    HANG,
    LOT_STATUS,
    OK,
    PROLONG,
    UNDO,
    Reply,
    ScriptedKoban,
)

# ------------------------------------------------------------------ retries and failures


async def test_a_read_is_retried_on_503_with_jittered_backoff(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep
) -> None:
    koban.script("GET", LOT_STATUS, Reply(503), Reply(502, raw=b"bad gateway"), FREE)
    assert (await client.get_lot_status("A101")).result == 0
    assert len(koban.seen) == 3
    assert len(sleep.delays) == 2
    assert 0 <= sleep.delays[0] <= 0.2 and 0 <= sleep.delays[1] <= 0.4
    assert client.calls[("GetLotStatus", "retry")] == 2
    assert client.calls[("GetLotStatus", "ok")] == 1


async def test_a_read_is_retried_after_the_connection_is_reset(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep
) -> None:
    # aiohttp itself resends an idempotent request once after a disconnect; two resets
    # make sure the client's own retry is exercised too.
    koban.script("GET", LOT_STATUS, DROP, DROP, FREE)
    assert (await client.get_lot_status("A101")).result == 0
    assert len(koban.seen) == 3
    assert len(sleep.delays) >= 1
    assert client.calls[("GetLotStatus", "retry")] == len(sleep.delays)


async def test_a_read_that_keeps_failing_is_unavailable_after_the_retries(
    koban: ScriptedKoban, session: aiohttp.ClientSession, sleep: FakeSleep
) -> None:
    client = make_client(session, koban.base_url, sleep, retries=2)
    koban.script("GET", LOT_STATUS, Reply(503))
    with pytest.raises(KobanUnavailable) as caught:
        await client.get_lot_status("A101")
    assert not isinstance(caught.value, KobanOutcomeUnknown)
    assert caught.value.status == 503
    assert len(koban.seen) == 3
    assert client.calls[("GetLotStatus", "unavailable")] == 1


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_no_retry_on_4xx(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep, status: int
) -> None:
    koban.script("GET", LOT_STATUS, Reply(status, json={"success": False, "message": "no"}))
    koban.script("POST", ADD, Reply(status, json={"success": False, "message": "no"}))
    with pytest.raises(KobanError) as caught:
        await client.get_lot_status("A101")
    assert caught.value.status == status
    with pytest.raises(KobanError):
        await client.add_option("A101", "third-1", 1, T0)
    assert len(koban.seen) == 2
    assert sleep.delays == []


async def test_a_429_is_retried_after_the_wait_koban_asked_for_even_for_a_write(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep
) -> None:
    koban.script("POST", ADD, Reply(429, headers={"Retry-After": "7"}), OK)
    answer = await client.add_option("A101", "third-1", 1, T0)
    assert answer.success
    assert len(koban.seen) == 2  # turned away, then sent again: nothing was done the first time
    assert sleep.delays and sleep.delays[0] >= 7
    assert client.calls[("Add", "retry")] == 1


async def test_a_429_without_retry_after_backs_off_like_any_transient_failure(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep
) -> None:
    koban.script("GET", LOT_STATUS, Reply(429), FREE)
    assert (await client.get_lot_status("A101")).result == 0
    assert len(koban.seen) == 2 and len(sleep.delays) == 1 and sleep.delays[0] <= 0.2


async def test_a_429_asking_for_longer_than_the_client_waits_is_unavailable_with_its_wait(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep
) -> None:
    koban.script("POST", ADD, Reply(429, headers={"Retry-After": "120"}))
    with pytest.raises(KobanUnavailable) as caught:
        await client.add_option("A101", "third-1", 1, T0)
    assert not isinstance(caught.value, KobanOutcomeUnknown)
    assert caught.value.retry_after == 120
    assert len(koban.seen) == 1 and sleep.delays == []
    error = as_api_error(caught.value)
    assert error.status == 503 and error.headers["Retry-After"] == "120"


async def test_a_429_with_an_http_date_waits_until_that_date(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep
) -> None:
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=12), usegmt=True)
    koban.script("GET", LOT_STATUS, Reply(429, headers={"Retry-After": later}), FREE)
    assert (await client.get_lot_status("A101")).result == 0
    assert 5 <= sleep.delays[0] <= 12


async def test_unreadable_bodies(koban: ScriptedKoban, client: KobanClient) -> None:
    koban.script("GET", LOT_STATUS, Reply(raw=b"<html>oops</html>"), Reply(json={"x": 1}))
    koban.script("POST", ADD, Reply(raw=b"<html>oops</html>"), Reply(json={"Guid": "x"}))
    for _ in range(2):
        with pytest.raises(KobanError):
            await client.get_lot_status("A101")
        # Koban answered 2xx to the write: it may have applied it.
        with pytest.raises(KobanOutcomeUnknown):
            await client.add_option("A101", "third-1", 1, T0)
    assert len(koban.seen) == 4


async def test_a_write_answered_5xx_is_outcome_unknown_and_not_resent(
    koban: ScriptedKoban, client: KobanClient, sleep: FakeSleep
) -> None:
    koban.script("POST", ADD, Reply(503), OK)
    with pytest.raises(KobanOutcomeUnknown) as caught:
        await client.add_option("A101", "third-1", 1, T0)
    assert caught.value.status == 503
    assert len(koban.seen) == 1
    assert sleep.delays == []
    assert client.calls[("Add", "outcome_unknown")] == 1


async def test_a_write_timing_out_after_it_was_received_is_outcome_unknown(
    koban: ScriptedKoban, session: aiohttp.ClientSession, sleep: FakeSleep
) -> None:
    client = make_client(session, koban.base_url, sleep, timeout_s=0.2)
    koban.script("POST", PROLONG, HANG, OK)
    with pytest.raises(KobanOutcomeUnknown):
        await client.prolong_option("A101", 1, T0)
    assert len(koban.seen) == 1
    assert sleep.delays == []


async def test_a_write_whose_connection_is_reset_is_outcome_unknown(
    koban: ScriptedKoban, client: KobanClient
) -> None:
    koban.script("POST", UNDO, DROP, OK)
    with pytest.raises(KobanOutcomeUnknown):
        await client.undo_option("A101", 1)
    assert len(koban.seen) == 1


async def test_a_write_that_could_not_connect_is_retried_then_unavailable(
    session: aiohttp.ClientSession, sleep: FakeSleep
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(session, f"http://127.0.0.1:{port}/api/v1", sleep, retries=3)
    with pytest.raises(KobanUnavailable) as caught:
        await client.add_option("A101", "third-1", 1, T0)
    assert not isinstance(caught.value, KobanOutcomeUnknown)
    assert caught.value.transient
    assert len(sleep.delays) == 3
    assert client.calls[("Add", "retry")] == 3
    assert client.calls[("Add", "unavailable")] == 1


# ------------------------------------------------------------------ rate limit


async def test_the_rate_limit_holds_requests_until_the_clock_allows_them(
    koban: ScriptedKoban,
    session: aiohttp.ClientSession,
    sleep: FakeSleep,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loop clock frozen and moved by hand: no timing assumptions."""
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    client = make_client(session, koban.base_url, sleep, rate_per_s=2.0)
    koban.script("GET", LOT_STATUS, FREE)

    async def settle() -> None:
        # Round trips to the server outside the client: lets any unblocked task progress.
        for _ in range(3):
            async with session.get(koban.base_url + "/ping") as response:
                await response.read()
        for _ in range(20):
            await asyncio.sleep(0)

    def statuses() -> int:
        return len(koban.requests(LOT_STATUS))

    tasks = [asyncio.create_task(client.get_lot_status(f"A{i}")) for i in range(5)]
    await asyncio.wait(tasks[:2])  # the burst of 2
    await settle()
    assert statuses() == 2
    assert not any(t.done() for t in tasks[2:])

    now[0] += 0.5  # one more slot at 2/s
    await tasks[2]
    await settle()
    assert statuses() == 3
    assert not any(t.done() for t in tasks[3:])

    now[0] += 1.0
    await asyncio.gather(*tasks[3:])
    assert statuses() == 5
    assert sleep.delays == []
