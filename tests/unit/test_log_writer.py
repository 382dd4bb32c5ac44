"""`service.entrypoints.api.logging.LineWriter`: the lines of 20 ms in one write, in order."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap

from service.entrypoints.api import logging as api_logging
from service.entrypoints.api.logging import LineWriter


class CountingStream(io.StringIO):
    written: asyncio.Event | None = None  # set at each write, once a test gives one

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        if self.written is not None:
            self.written.set()
        return super().write(s)


def test_outside_a_loop_every_line_is_written_at_once() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    writer.info("a")
    assert stream.getvalue() == "a\n"
    writer.info("b")
    assert (stream.getvalue(), stream.writes) == ("a\nb\n", 2)


async def test_in_a_loop_lines_wait_for_one_write_and_warnings_flush_at_once() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(5):
        writer.info(f"line {i}")
    await asyncio.sleep(0)
    assert stream.getvalue() == ""  # waiting: more lines may join them
    stream.written = asyncio.Event()
    await asyncio.wait_for(stream.written.wait(), 5)
    assert loop.time() - started >= LineWriter.FLUSH_AFTER_S * 0.9
    assert stream.getvalue() == "".join(f"line {i}\n" for i in range(5))
    assert stream.writes == 1
    writer.info("before")
    writer.warning("the warning")  # written now, after what waited
    assert stream.getvalue().endswith("before\nthe warning\n") and stream.writes == 2
    await asyncio.sleep(LineWriter.FLUSH_AFTER_S * 2)
    assert stream.writes == 2  # nothing left for the scheduled flush
    writer.info("after")  # a new line after a flush schedules its own write
    await asyncio.sleep(LineWriter.FLUSH_AFTER_S * 2)
    assert stream.getvalue().endswith("the warning\nafter\n") and stream.writes == 3


async def test_a_full_queue_is_written_without_waiting_for_the_turn() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    for i in range(LineWriter._MAX_PENDING):
        writer.info(str(i))
    assert stream.writes == 1 and stream.getvalue().count("\n") == LineWriter._MAX_PENDING


def test_lines_waiting_when_the_loop_ends_are_written_at_exit() -> None:
    code = textwrap.dedent(
        """
        import asyncio, structlog
        from service.entrypoints.api.logging import configure_logging
        configure_logging("json", "info")
        async def main():
            structlog.get_logger("t").info("last words")
            raise SystemExit(3)  # out of the loop at once: its flush never runs
        asyncio.new_event_loop().run_until_complete(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 3 and '"event":"last words"' in done.stderr


def test_the_access_line_path_is_the_decoded_one() -> None:
    from aiohttp.test_utils import make_mocked_request

    from service.entrypoints.api.middleware import _logged_path

    for target in ["/a/b?x=1&token=s", "/a%20b?t%6Fken=a%2Fb", "/a?x=a+b", "/a?", "/a"]:
        request = make_mocked_request("GET", target)
        assert _logged_path(request) == request.path_qs, target


def test_generated_request_ids_are_unique_and_a_forked_child_draws_its_own_prefix() -> None:
    make = api_logging._new_request_id
    ids = [make() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[:16] for i in ids}) == 1  # one process, one prefix, a counter after it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, through the pipe
        os.write(write, make().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child[:16] != ids[0][:16]
