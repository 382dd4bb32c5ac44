"""The option routes' `Operation`s (`routes_options`): what each documents in /openapi.json
(summary, tag, answers, errors, scope) and what it parses (query, body, path)."""

from __future__ import annotations

from service.entrypoints.api.errors import PLACEMENT_NOT_MADE
from service.entrypoints.api.models import (
    CancelQuery,
    LotOut,
    NoQuery,
    OptionListOut,
    OptionOut,
    OptionsQuery,
    PendingOut,
    PlaceOptionIn,
    PrereserveIn,
    ProlongIn,
    ProspectOut,
    WithdrawIn,
)
from service.entrypoints.api.openapi import (
    AUTH_ERRORS,
    READ,
    WRITE,
    WRITE_ERRORS,
    Operation,
    Reply,
    merge,
    rules,
)
from statecharts.errors import ErrorCode

__all__ = [
    "CANCEL_OPTION",
    "GET_PROSPECT",
    "LIST_OPTIONS",
    "PLACE_OPTION",
    "PRERESERVE",
    "PRERESERVE_ERRORS",
    "PROLONG_OPTION",
    "WITHDRAW",
]

_RANK = {"type": "integer", "minimum": 1, "maximum": 2}
# What Koban may refuse about an option addressed by rank.
_OPTION_RULES = rules(
    ErrorCode.LOT_UNKNOWN,
    ErrorCode.OPTION_NOT_FOUND,
    ErrorCode.OPTION_MOVED,
    ErrorCode.PROSPECT_UNKNOWN,
)
# What taking a lot for a prospect may meet: a placement's and a préréservation's first
# refusals.
_TAKE_LOT_RULES = rules(
    ErrorCode.LOT_UNKNOWN,
    ErrorCode.PROSPECT_UNKNOWN,
    ErrorCode.LOT_NOT_AVAILABLE,
    ErrorCode.LOT_PRERESERVED,
)


LIST_OPTIONS = Operation(
    "Active options across lots, soonest expiry first",
    "options",
    {200: Reply(OptionListOut, "A page of options and the cursor of the next one.")},
    AUTH_ERRORS,
    scope=READ,
    query=OptionsQuery,
)


GET_PROSPECT = Operation(
    "A prospect's active options, pending placements and remaining allowance",
    "options",
    {200: Reply(ProspectOut, "The prospect's options.")},
    AUTH_ERRORS,
    scope=READ,
    query=NoQuery,
)


PLACE_OPTION = Operation(
    "Place an option through Koban",
    "options",
    {
        201: Reply(OptionOut, "Placed."),
        202: Reply(
            PendingOut,
            "Sent to Koban, outcome pending; the same request with the same "
            "`Idempotency-Key` answers the outcome once known.",
        ),
    },
    merge(
        WRITE_ERRORS,
        _TAKE_LOT_RULES,
        rules(
            ErrorCode.LOT_FULL,
            ErrorCode.PROSPECT_ALREADY_HOLDS,
            ErrorCode.PROSPECT_OPTION_LIMIT,
            ErrorCode.USER_OPTION_LIMIT,
            ErrorCode.RANK_NOT_AVAILABLE,
        ),
        {409: [PLACEMENT_NOT_MADE]},
    ),
    scope=WRITE,
    body=PlaceOptionIn,
    idempotent=True,
)


PROLONG_OPTION = Operation(
    "Prolong the option at a rank through Koban",
    "options",
    {200: Reply(OptionOut, "The prolonged option.")},
    merge(
        WRITE_ERRORS,
        _OPTION_RULES,
        rules(
            ErrorCode.ALREADY_PROLONGED,
            ErrorCode.PROLONGATION_NOT_LATER,
            ErrorCode.PROLONGATION_TOO_LONG,
        ),
    ),
    scope=WRITE,
    body=ProlongIn,
    idempotent=True,
    path_schemas={"rank": _RANK},
)


CANCEL_OPTION = Operation(
    "Cancel the option at a rank through Koban",
    "options",
    {200: Reply(OptionOut, "The ended option.")},
    merge(WRITE_ERRORS, _OPTION_RULES),
    scope=WRITE,
    query=CancelQuery,
    idempotent=True,
    path_schemas={"rank": _RANK},
)


# What a préréservation may meet, plain or validated (Koban answers both alike).
PRERESERVE_ERRORS = merge(WRITE_ERRORS, _TAKE_LOT_RULES)

PRERESERVE = Operation(
    "Pre-reserve the lot through Koban",
    "lots",
    {201: Reply(LotOut, "The pre-reserved lot.")},
    PRERESERVE_ERRORS,
    scope=WRITE,
    body=PrereserveIn,
    idempotent=True,
)


WITHDRAW = Operation(
    "Withdraw the lot's préréservation through Koban",
    "lots",
    {200: Reply(LotOut, "The lot after the withdrawal.")},
    merge(
        WRITE_ERRORS,
        rules(
            ErrorCode.LOT_UNKNOWN,
            ErrorCode.NOT_PRERESERVED,
            ErrorCode.PRERESERVATION_HOLDER_MISMATCH,
        ),
    ),
    scope=WRITE,
    body=WithdrawIn,
    idempotent=True,
)
