"""Koban's wire shapes, in one place (docs/koban-wire.md); callers import them from here.

Everything that depends on how Koban spells things lives in this package: verbs and paths
(`endpoints`), instants (`dates`), scalar values (`values`), answers to option writes
(`answers`), stock pages and programmes (`deals`), request bodies (`requests`) and accounts
(`accounts`). Answers are parsed case-insensitively and error codes normalised to two
digits (``5`` → ``"05"``). The rest of the service only sees the parsed results. Pure: no
I/O.
"""

from service.koban.wire.accounts import (
    OWN_EXTCODE_PREFIX,
    STATUS_CODE_OF_KIND,
    UNIQUE_PROPERTY,
    Account,
    MoreField,
    TagRef,
    ThirdKind,
    account,
    own_extcode,
    third_params,
)
from service.koban.wire.answers import (
    STANDARD_STATUSES,
    KobanAnswer,
    LotStatus,
)
from service.koban.wire.dates import (
    MS_THRESHOLD,
    NO_DATE_MS,
    from_unix,
    koban_instant,
    to_unix,
)
from service.koban.wire.deals import (
    DealPage,
    KobanLot,
    Program,
    SkippedDeal,
    parse_programs,
    read_deal,
)
from service.koban.wire.endpoints import (
    DEAL_GET_UPDATED,
    DEAL_GET_UPDATED_PROCESS,
    DEAL_PROCESS_GET_ALL,
    GET_LOT_STATUS,
    HEADER_API_KEY,
    HEADER_USER_KEY,
    OPTION_ADD,
    OPTION_PROLONG,
    OPTION_UNDO,
    PRERESV_ADD,
    PRERESV_DESIST,
    THIRD_POST_ONE,
    Endpoint,
)
from service.koban.wire.requests import (
    AddBody,
    CodeRef,
    DealRef,
    DesistBody,
    GuidRef,
    PreresvAddBody,
    ProlongBody,
    UndoBody,
    add_body,
    desist_body,
    lot_status_params,
    preresv_add_body,
    prolong_body,
    undo_body,
    updated_params,
)
from service.koban.wire.values import (
    cents_to_euros,
    normalise_error_code,
)

__all__ = [
    "DEAL_GET_UPDATED",
    "DEAL_GET_UPDATED_PROCESS",
    "DEAL_PROCESS_GET_ALL",
    "GET_LOT_STATUS",
    "HEADER_API_KEY",
    "HEADER_USER_KEY",
    "MS_THRESHOLD",
    "NO_DATE_MS",
    "OPTION_ADD",
    "OPTION_PROLONG",
    "OPTION_UNDO",
    "OWN_EXTCODE_PREFIX",
    "PRERESV_ADD",
    "PRERESV_DESIST",
    "STANDARD_STATUSES",
    "STATUS_CODE_OF_KIND",
    "THIRD_POST_ONE",
    "UNIQUE_PROPERTY",
    "Account",
    "AddBody",
    "CodeRef",
    "DealPage",
    "DealRef",
    "DesistBody",
    "Endpoint",
    "GuidRef",
    "KobanAnswer",
    "KobanLot",
    "LotStatus",
    "MoreField",
    "PreresvAddBody",
    "Program",
    "ProlongBody",
    "SkippedDeal",
    "TagRef",
    "ThirdKind",
    "UndoBody",
    "account",
    "add_body",
    "cents_to_euros",
    "desist_body",
    "from_unix",
    "koban_instant",
    "lot_status_params",
    "normalise_error_code",
    "own_extcode",
    "parse_programs",
    "preresv_add_body",
    "prolong_body",
    "read_deal",
    "third_params",
    "to_unix",
    "undo_body",
    "updated_params",
]
