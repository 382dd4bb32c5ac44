"""Rule violations raised by the statecharts, with their HTTP status and Koban code.

Pure data: no I/O. The codes are the public error names of the internal API; a local
refusal carries Koban's matching code (``KOBAN_CODE``) so callers can answer like Koban.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a transition was refused. The value is the name."""

    LOT_UNKNOWN = "LOT_UNKNOWN"
    LOT_NOT_AVAILABLE = "LOT_NOT_AVAILABLE"
    LOT_PRERESERVED = "LOT_PRERESERVED"
    LOT_FULL = "LOT_FULL"
    PROSPECT_ALREADY_HOLDS = "PROSPECT_ALREADY_HOLDS"
    PROSPECT_OPTION_LIMIT = "PROSPECT_OPTION_LIMIT"
    USER_OPTION_LIMIT = "USER_OPTION_LIMIT"
    RANK_NOT_AVAILABLE = "RANK_NOT_AVAILABLE"
    PROSPECT_UNKNOWN = "PROSPECT_UNKNOWN"
    OPTION_NOT_FOUND = "OPTION_NOT_FOUND"
    OPTION_MOVED = "OPTION_MOVED"
    ALREADY_PROLONGED = "ALREADY_PROLONGED"
    PROLONGATION_NOT_LATER = "PROLONGATION_NOT_LATER"
    PROLONGATION_TOO_LONG = "PROLONGATION_TOO_LONG"
    NOT_PRERESERVED = "NOT_PRERESERVED"
    PRERESERVATION_HOLDER_MISMATCH = "PRERESERVATION_HOLDER_MISMATCH"
    # Internal: an expire/promote event that had nothing to do (never an API answer).
    NOTHING_DUE = "NOTHING_DUE"


_NOT_FOUND = frozenset(
    {ErrorCode.LOT_UNKNOWN, ErrorCode.PROSPECT_UNKNOWN, ErrorCode.OPTION_NOT_FOUND}
)
_UNPROCESSABLE = frozenset(
    {ErrorCode.PROLONGATION_NOT_LATER, ErrorCode.PROLONGATION_TOO_LONG, ErrorCode.NOTHING_DUE}
)

HTTP_STATUS: dict[ErrorCode, int] = {
    code: 404 if code in _NOT_FOUND else 422 if code in _UNPROCESSABLE else 409
    for code in ErrorCode
}

_KOBAN: dict[ErrorCode, str] = {
    ErrorCode.PROSPECT_OPTION_LIMIT: "01",
    ErrorCode.LOT_NOT_AVAILABLE: "02",
    ErrorCode.USER_OPTION_LIMIT: "03",
    ErrorCode.LOT_PRERESERVED: "04",
    ErrorCode.LOT_FULL: "05",
    ErrorCode.OPTION_NOT_FOUND: "01",  # Koban ncOption/Prolong and Undo: 01
    ErrorCode.ALREADY_PROLONGED: "02",  # Koban ncOption/Prolong: 02
}

KOBAN_CODE: dict[ErrorCode, str | None] = {code: _KOBAN.get(code) for code in ErrorCode}

MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.LOT_UNKNOWN: "The lot is unknown.",
    ErrorCode.LOT_NOT_AVAILABLE: "The lot is not available (reserved, blocked, sold or custom).",
    ErrorCode.LOT_PRERESERVED: "The lot is pre-reserved.",
    ErrorCode.LOT_FULL: "The lot already has two options (rank 1 and rank 2).",
    ErrorCode.PROSPECT_ALREADY_HOLDS: "The prospect already holds an option on this lot.",
    ErrorCode.PROSPECT_OPTION_LIMIT: "The prospect already holds the maximum number of options.",
    ErrorCode.USER_OPTION_LIMIT: "The Koban API user already holds the maximum number of options.",
    ErrorCode.RANK_NOT_AVAILABLE: "The requested rank is not the next free rank.",
    ErrorCode.PROSPECT_UNKNOWN: "The prospect is unknown.",
    ErrorCode.OPTION_NOT_FOUND: "No such active option on this lot.",
    ErrorCode.OPTION_MOVED: "The option at this rank belongs to another prospect now.",
    ErrorCode.ALREADY_PROLONGED: "The option has already been prolonged once.",
    ErrorCode.PROLONGATION_NOT_LATER: "The new deadline does not expire at a later tick.",
    ErrorCode.PROLONGATION_TOO_LONG: "The new deadline exceeds the maximum prolongation.",
    ErrorCode.NOT_PRERESERVED: "The lot is neither pre-reserved nor reserved.",
    ErrorCode.PRERESERVATION_HOLDER_MISMATCH: "Only the pre-reserving prospect may withdraw.",
    ErrorCode.NOTHING_DUE: "Nothing is due on this lot.",
}


class RuleViolation(Exception):
    """A business rule refused the event. ``code`` says which rule."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = message if message is not None else MESSAGES[self.code]
        super().__init__(self.message)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def koban_code(self) -> str | None:
        return KOBAN_CODE[self.code]

    def __repr__(self) -> str:
        return f"RuleViolation({self.code.value!r}, {self.message!r})"

    def __reduce__(self) -> tuple[type[RuleViolation], tuple[ErrorCode, str]]:
        return (type(self), (self.code, self.message))
