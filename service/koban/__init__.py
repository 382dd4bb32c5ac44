"""Koban integration: the wire shapes (``wire``) and the async client (``client``)."""

from service.koban.client import (
    KobanClient,
    KobanError,
    KobanMethod,
    KobanOutcomeUnknown,
    KobanUnavailable,
    koban_refusal,
)
from service.koban.wire import DealPage, KobanAnswer, KobanLot, LotStatus, Program, to_unix

__all__ = [
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
    "koban_refusal",
    "to_unix",
]
