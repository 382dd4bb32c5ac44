"""The sandbox's small parts on their own: fault parsing (Koban codes read by the Koban
client's normaliser), the fault list, the methods a fault may name, and the clock."""

from __future__ import annotations

import pytest

from service.sandbox.clock import ClockBackwards, SandboxClock
from service.sandbox.faults import KOBAN_METHODS, Fault, Faults
from service.sandbox.koban_api import KOBAN_ROUTES
from statecharts.ticks import latest_tick

T0 = 1_800_000_600  # ten minutes after a tick


@pytest.mark.parametrize(("given", "code"), [(5, "05"), ("5", "05"), (" 05 ", "05"), (12, "12")])
def test_a_fault_reads_koban_codes_as_two_digits(given: object, code: str) -> None:
    assert Fault.from_json({"errorcode": given}).errorcode == code


@pytest.mark.parametrize("given", [True, 5.0, "5a", 123, -5, "", [5]])
def test_a_fault_refuses_what_is_not_a_koban_code(given: object) -> None:
    with pytest.raises(ValueError, match="not a Koban error code"):
        Fault.from_json({"errorcode": given})


def test_faults_are_taken_first_come_and_counted_down() -> None:
    faults = Faults()
    faults.add(Fault(status=503, methods=frozenset({"ncOption/Add"}), count=2))
    faults.add(Fault(latency_ms=10))
    assert len(faults) == 2
    assert faults.take("ncOption/Undo") == Fault(latency_ms=10)  # the first does not apply
    first = faults.take("ncOption/Add")
    assert first is not None and first.status == 503
    assert faults.take("ncOption/Add") is not None
    assert [f.latency_ms for f in faults] == [10]  # the counted one is used up
    faults.clear()
    assert not faults and faults.take("ncOption/Add") is None


def test_a_fault_names_exactly_the_methods_the_sandbox_serves() -> None:
    assert sorted(KOBAN_METHODS) == sorted(method for _, method, _ in KOBAN_ROUTES)
    with pytest.raises(ValueError, match="unknown Koban methods"):
        Fault.from_json({"status": 500, "methods": ["ncOption/Nope"]})


def test_the_clock_moves_forward_only_and_passes_each_tick_once() -> None:
    now = [T0]
    clock = SandboxClock(lambda: now[0])
    assert clock.pass_ticks() == ([], T0)
    clock.move_to(T0 + 3600)
    assert clock.offset == 3600 and clock.now() == T0 + 3600
    ticks, upto = clock.pass_ticks()
    assert ticks == [latest_tick(T0) + 1800, latest_tick(T0) + 3600] and upto == T0 + 3600
    assert clock.pass_ticks() == ([], T0 + 3600) and clock.ticked_upto == T0 + 3600
    with pytest.raises(ClockBackwards):
        clock.move_to(T0)
    now[0] += 1800  # the injected clock moves on its own
    assert clock.pass_ticks()[0] == [latest_tick(T0) + 5400]
