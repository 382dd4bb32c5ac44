"""Request bodies and query parameters of Koban's option and préréservation writes and
stock reads, with Koban's nesting (``Deal.Extcode``, ``Third.Guid``…).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.koban.wire.dates import to_unix
from service.koban.wire.values import cents_to_euros


class WireRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True)

    def wire(self) -> dict[str, Any]:
        """The JSON body, with Koban's names; absent optionals are omitted."""
        return self.model_dump(by_alias=True, exclude_none=True)


class GuidRef(WireRequest):
    guid: str = Field(serialization_alias="Guid")


class DealRef(WireRequest):
    extcode: str = Field(serialization_alias="Extcode")


class CodeRef(WireRequest):
    code: str = Field(serialization_alias="Code")


class AddBody(WireRequest):
    third: GuidRef = Field(serialization_alias="Third")
    deal: DealRef = Field(serialization_alias="Deal")
    date_option: int = Field(serialization_alias="DateOption")
    rank: int = Field(serialization_alias="Rank", ge=1, le=2)
    part: GuidRef | None = Field(default=None, serialization_alias="Part")


class ProlongBody(WireRequest):
    deal: DealRef = Field(serialization_alias="Deal")
    rank: int = Field(serialization_alias="Rank", ge=1, le=2)
    date_prolongation: int = Field(serialization_alias="DateProlongation")


class UndoBody(WireRequest):
    deal: DealRef = Field(serialization_alias="Deal")
    rank: int = Field(serialization_alias="Rank", ge=1, le=2)


class PreresvAddBody(WireRequest):
    deal: DealRef = Field(serialization_alias="Deal")
    third: GuidRef = Field(serialization_alias="Third")
    prix_vente: float = Field(serialization_alias="PrixVente")
    garantie: float = Field(serialization_alias="Garantie")
    part: GuidRef | None = Field(default=None, serialization_alias="Part")


class DesistBody(WireRequest):
    deal: DealRef = Field(serialization_alias="Deal")
    third: GuidRef = Field(serialization_alias="Third")


def _part(partner_guid: str | None) -> GuidRef | None:
    return None if partner_guid is None else GuidRef(guid=partner_guid)


def add_body(
    extcode: str, third_guid: str, rank: int, date_option: int, partner_guid: str | None = None
) -> dict[str, Any]:
    return AddBody(
        third=GuidRef(guid=third_guid),
        deal=DealRef(extcode=extcode),
        date_option=to_unix(date_option),
        rank=rank,
        part=_part(partner_guid),
    ).wire()


def prolong_body(extcode: str, rank: int, until: int) -> dict[str, Any]:
    return ProlongBody(
        deal=DealRef(extcode=extcode), rank=rank, date_prolongation=to_unix(until)
    ).wire()


def undo_body(extcode: str, rank: int) -> dict[str, Any]:
    return UndoBody(deal=DealRef(extcode=extcode), rank=rank).wire()


def preresv_add_body(
    extcode: str,
    third_guid: str,
    price_cents: int,
    deposit_cents: int,
    partner_guid: str | None = None,
) -> dict[str, Any]:
    return PreresvAddBody(
        deal=DealRef(extcode=extcode),
        third=GuidRef(guid=third_guid),
        prix_vente=cents_to_euros(price_cents),
        garantie=cents_to_euros(deposit_cents),
        part=_part(partner_guid),
    ).wire()


def desist_body(extcode: str, third_guid: str) -> dict[str, Any]:
    return DesistBody(deal=DealRef(extcode=extcode), third=GuidRef(guid=third_guid)).wire()


def lot_status_params(extcode: str) -> dict[str, str]:
    return {"extcode": extcode}


def updated_params(
    updated: int, start: int, limit: int, process_code: str | None = None
) -> dict[str, str]:
    params = {"updated": str(to_unix(updated)), "s": str(start), "l": str(limit)}
    if process_code is not None:
        params["processcode"] = process_code
    return params
