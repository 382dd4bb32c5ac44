"""What a Koban call can end in besides an answer, and Koban's refusal codes mapped to the
service's error codes.

``KobanError``: an answer retrying will not fix; ``KobanUnavailable``: nothing was sent, or
a read kept failing, or Koban answered 429; ``KobanOutcomeUnknown``: a write that may have
reached Koban (never resent). A refusal (``success: false``) is an answer, not an error:
`koban_refusal` names it.
"""

from __future__ import annotations

from enum import StrEnum

from service.koban import wire
from statecharts.errors import ErrorCode


class KobanError(Exception):
    """Koban answered something unexpected (401/403/4xx, unreadable body). Not retried."""

    def __init__(self, message: str, *, status: int | None = None, envelope: bool = False) -> None:
        super().__init__(message)
        self.status = status
        # The answer carried Koban's envelope (`success: false`, a message): Koban itself
        # refused, rather than a wrong URL or a proxy (docs/koban-wire.md, the 404 guess).
        self.envelope = envelope


class KobanUnavailable(Exception):
    """Koban could not be reached (after retries); for a write, nothing was sent.

    ``transient`` is true when the failure was of a retryable kind (network, 5xx)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.retry_after = retry_after  # seconds Koban asked us to wait (its 429's Retry-After)


class KobanOutcomeUnknown(KobanUnavailable):
    """A write that may have reached Koban: keep the intent pending, never resend blindly."""


# --------------------------------------------------------------------------------------
# Refusal codes → service error codes
# --------------------------------------------------------------------------------------


class KobanMethod(StrEnum):
    """Koban write methods whose refusal codes have a meaning."""

    ADD = "Add"
    PROLONG = "Prolong"
    UNDO = "Undo"
    PRERESV = "PreresvAdd"
    DESIST = "PreresvDesist"


_REFUSALS: dict[KobanMethod, dict[str, ErrorCode]] = {
    KobanMethod.ADD: {
        "01": ErrorCode.PROSPECT_OPTION_LIMIT,
        "02": ErrorCode.LOT_NOT_AVAILABLE,
        "03": ErrorCode.USER_OPTION_LIMIT,
        "04": ErrorCode.LOT_PRERESERVED,
        "05": ErrorCode.LOT_FULL,
    },
    KobanMethod.PROLONG: {"01": ErrorCode.OPTION_NOT_FOUND, "02": ErrorCode.ALREADY_PROLONGED},
    KobanMethod.UNDO: {"01": ErrorCode.OPTION_NOT_FOUND},
    KobanMethod.PRERESV: {"01": ErrorCode.LOT_UNKNOWN, "02": ErrorCode.PROSPECT_UNKNOWN},
    KobanMethod.DESIST: {"01": ErrorCode.LOT_UNKNOWN, "02": ErrorCode.PROSPECT_UNKNOWN},
}

_METHOD_ALIASES: dict[str, KobanMethod] = {
    **{m.value.lower(): m for m in KobanMethod},
    "preresv": KobanMethod.PRERESV,
    "desist": KobanMethod.DESIST,
}

REFUSAL_FALLBACK: dict[KobanMethod, ErrorCode] = {
    KobanMethod.ADD: ErrorCode.LOT_NOT_AVAILABLE,
    KobanMethod.PROLONG: ErrorCode.OPTION_NOT_FOUND,
    KobanMethod.UNDO: ErrorCode.OPTION_NOT_FOUND,
    KobanMethod.PRERESV: ErrorCode.LOT_NOT_AVAILABLE,
    KobanMethod.DESIST: ErrorCode.NOT_PRERESERVED,
}
"""An unknown or missing code: the closest generic refusal of that method. Add/Preresv →
LOT_NOT_AVAILABLE (409: Koban will not do it on this lot), Prolong/Undo → OPTION_NOT_FOUND
(no option Koban will act on), Desist → NOT_PRERESERVED. The caller should treat it like
any refusal that contradicts local state: record drift and reconcile the lot."""


def koban_refusal(method: str, code: str | None) -> ErrorCode:
    """The service's error code for Koban's refusal ``code`` to ``method``.

    ``method`` is a :class:`KobanMethod` value (``"Add"``, ``"Prolong"``, ``"Undo"``,
    ``"PreresvAdd"`` or ``"Preresv"``, ``"PreresvDesist"`` or ``"Desist"``), any case.
    ``code`` is normalised (``5`` → ``"05"``). Unknown codes fall back per
    :data:`REFUSAL_FALLBACK`; an unknown method raises ``ValueError``.
    """
    koban_method = _METHOD_ALIASES.get(method.lower())
    if koban_method is None:
        raise ValueError(f"not a Koban write method: {method!r}")
    normalised = wire.normalise_error_code(code)
    known = _REFUSALS[koban_method].get(normalised) if normalised else None
    return known if known is not None else REFUSAL_FALLBACK[koban_method]


def is_unknown_prospect(exc: BaseException) -> bool:
    """Koban's answer to a write naming a prospect it does not know: HTTP 404 carrying its
    envelope (``success: false`` and a message). Koban documents no answer for this case,
    so this is a guess (docs/koban-wire.md); a 404 without the envelope is a wrong URL or
    method and stays a `KobanError` (502 KOBAN_ERROR at the API)."""
    return isinstance(exc, KobanError) and exc.status == 404 and exc.envelope
