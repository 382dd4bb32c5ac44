"""Koban integration: the wire shapes (``wire``) and the async client (``client``)."""

from service.koban.client import (
    KobanClient,
    KobanError,
    KobanMethod,
    KobanOutcomeUnknown,
    KobanUnavailable,
    is_unknown_prospect,
    koban_refusal,
)
from service.koban.wire import (
    Account,
    DealPage,
    KobanAnswer,
    KobanLot,
    LotStatus,
    Program,
    SkippedDeal,
    to_unix,
)

__all__ = [
    "Account",
    "DealPage",
    "KobanAnswer",
    "KobanClient",
    "KobanError",
    "KobanLot",
    "KobanMethod",
    "KobanOutcomeUnknown",
    "KobanUnavailable",
    "LotStatus",
    "Program",
    "SkippedDeal",
    "is_unknown_prospect",
    "koban_refusal",
    "to_unix",
]
