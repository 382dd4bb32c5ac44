"""How the sandbox refuses a Koban call: a `SandboxRefusal` carries the Koban error code
when Koban's doc lists one for that method (answered HTTP 200), else an HTTP status and
the chart's reason. Which chart refusals carry a documented code, per method, is here."""

from __future__ import annotations

from statecharts.errors import ErrorCode, RuleViolation

__all__ = ["ADD_CODES", "PROLONG_CODES", "UNDO_CODES", "SandboxRefusal", "refuse_undocumented"]

# Chart refusals that carry a code the Koban doc lists, per API method.
ADD_CODES = frozenset(
    {
        ErrorCode.PROSPECT_OPTION_LIMIT,  # 01
        ErrorCode.LOT_NOT_AVAILABLE,  # 02
        ErrorCode.USER_OPTION_LIMIT,  # 03
        ErrorCode.LOT_PRERESERVED,  # 04
        ErrorCode.LOT_FULL,  # 05
    }
)
PROLONG_CODES = frozenset({ErrorCode.OPTION_NOT_FOUND, ErrorCode.ALREADY_PROLONGED})
UNDO_CODES = frozenset({ErrorCode.OPTION_NOT_FOUND})


class SandboxRefusal(Exception):
    """A refusal answered to the caller.

    `errorcode` is the Koban code the doc lists for the method (answered with HTTP 200);
    when the doc has none, `errorcode` is None and `http_status`/`reason` say what it is.
    """

    def __init__(
        self,
        message: str,
        *,
        errorcode: str | None = None,
        http_status: int = 200,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errorcode = errorcode
        self.http_status = http_status
        self.reason = reason

    @classmethod
    def from_violation(cls, exc: RuleViolation, documented: frozenset[ErrorCode]) -> SandboxRefusal:
        if exc.code in documented and exc.koban_code is not None:
            return cls(exc.message, errorcode=exc.koban_code, reason=exc.code.value)
        return cls(exc.message, http_status=exc.http_status, reason=exc.code.value)


def refuse_undocumented(message: str, status: int, reason: ErrorCode) -> SandboxRefusal:
    """A refusal Koban's doc gives no code for: an HTTP status and the chart's reason."""
    return SandboxRefusal(message, http_status=status, reason=reason.value)
