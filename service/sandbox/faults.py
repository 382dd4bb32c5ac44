"""Injected failures of the sandbox's Koban API: latency, 5xx, hangs, TCP resets and
business refusals, for the next calls of some methods, before or after the call is
carried out (`Fault.apply`: the caller cannot tell the outcome)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from service.koban.wire import normalise_error_code

__all__ = ["KOBAN_METHODS", "Fault", "Faults"]

# The Koban API methods the sandbox serves (a fault names the ones it targets).
KOBAN_METHODS: tuple[str, ...] = (
    "ncOption/GetLotStatus",
    "ncOption/Add",
    "ncOption/Prolong",
    "ncOption/Undo",
    "ncPreresv/Add",
    "ncPreresv/Desist",
    "ncDeal/GetUpdated",
    "ncDeal/GetUpdatedProcess",
    "ncDealProcess/GetAll",
    "ncThird/PostOne",
    "ncThird/GetOneByKey",
    "ncDenonc/CheckDenonc",
    "ncDenonc/Create",
    "ncPreresv/AddValid",
)


@dataclass(slots=True)
class Fault:
    """An injected failure for the next `count` calls (None: until cleared) of `methods`
    (None: every Koban method).

    `latency_ms` delays the answer; `timeout` hangs for `hang_seconds` (or until the app
    shuts down) and then answers 504; `status` answers that 5xx; `reset` drops the
    connection with a TCP reset instead of answering; `errorcode` answers a Koban business
    refusal with that code. With `apply`, a hang, 5xx or reset comes *after* the call was
    carried out (its webhook fired): the caller cannot tell the outcome.
    """

    latency_ms: int = 0
    status: int | None = None
    timeout: bool = False
    reset: bool = False
    errorcode: str | None = None
    methods: frozenset[str] | None = None
    count: int | None = None
    apply: bool = False
    hang_seconds: float = 600.0

    @classmethod
    def from_json(cls, body: object) -> Fault:
        if not isinstance(body, dict):
            raise ValueError("a fault is a JSON object")
        known = {
            "latency_ms",
            "status",
            "timeout",
            "reset",
            "errorcode",
            "methods",
            "count",
            "apply",
            "hang_seconds",
        }
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        latency = body.get("latency_ms") or 0
        if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
            raise ValueError("latency_ms must be an integer >= 0")
        status = body.get("status")
        if status is not None and (
            not isinstance(status, int) or isinstance(status, bool) or not 500 <= status <= 599
        ):
            raise ValueError("status must be a 5xx code or null")
        timeout = body.get("timeout", False)
        reset = body.get("reset", False)
        apply = body.get("apply", False)
        if not all(isinstance(flag, bool) for flag in (timeout, reset, apply)):
            raise ValueError("timeout, reset and apply must be booleans")
        errorcode = body.get("errorcode")
        if errorcode is not None:
            errorcode = _koban_code(errorcode)
        methods = body.get("methods")
        if methods is not None:
            if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                raise ValueError("methods must be a list of Koban method names or null")
            bad = [m for m in methods if m not in KOBAN_METHODS]
            if bad:
                raise ValueError(f"unknown Koban methods {bad}; known: {list(KOBAN_METHODS)}")
        count = body.get("count")
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 1
        ):
            raise ValueError("count must be an integer >= 1 or null")
        hang = body.get("hang_seconds", 600.0)
        if not isinstance(hang, int | float) or isinstance(hang, bool) or hang <= 0:
            raise ValueError("hang_seconds must be a positive number")
        if not (latency or status or timeout or reset or errorcode):
            raise ValueError("a fault needs latency_ms, status, timeout, reset or errorcode")
        return cls(
            latency_ms=latency,
            status=status,
            timeout=timeout,
            reset=reset,
            errorcode=errorcode,
            methods=frozenset(methods) if methods is not None else None,
            count=count,
            apply=apply,
            hang_seconds=float(hang),
        )

    def as_json(self) -> dict[str, object]:
        return {
            "latency_ms": self.latency_ms,
            "status": self.status,
            "timeout": self.timeout,
            "reset": self.reset,
            "errorcode": self.errorcode,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "count": self.count,
            "apply": self.apply,
            "hang_seconds": self.hang_seconds,
        }


def _koban_code(value: object) -> str:
    """A Koban error code as two digits: 5, "5" and "05" are "05"."""
    code = None if isinstance(value, float) else normalise_error_code(value)
    if code is None or len(code) != 2 or not code.isdigit():
        raise ValueError(f"not a Koban error code: {value!r}")
    return code


class Faults:
    """The faults in force, first added first served."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def __iter__(self) -> Iterator[Fault]:
        return iter(self._faults)

    def __len__(self) -> int:
        return len(self._faults)

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def take(self, method: str) -> Fault | None:
        """The first fault that applies to this call of `method`, consuming one count."""
        for fault in self._faults:
            if fault.methods is not None and method not in fault.methods:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
            return replace(fault)
        return None
