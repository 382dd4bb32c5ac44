"""How the sandbox's Koban shows its records on the wire: a lot's Status, a lot as
ncDeal/GetUpdated lists it, the fields of the webhooks it fires, and the sandbox's own
view of a lot (for twin tests). Pure functions of the records."""

from __future__ import annotations

from collections.abc import Mapping

from statecharts.model import Lot, Option

from .stock import LotInfo, Programme, SalesRep, Third

__all__ = [
    "deal_fields",
    "euros",
    "lot_json",
    "lot_view",
    "option_placed_fields",
    "reservation_validated_fields",
    "third_fields",
    "wire_status",
]

_WIRE_STATUS: dict[str, str] = {
    "free": "LIBRE",
    "one_option": "OPTION",
    "two_options": "OPTION",
    "prereserved": "PRERESV",
    "reserved": "RESV",
    "blocked": "BLOQUE",
    "sold": "RESV",  # a sold lot is reserved and "acté": Result = WON
}


def euros(cents: int) -> str:
    whole, rest = divmod(cents, 100)
    return f"{whole}.{rest:02d}"


def wire_status(lot: Lot, info: LotInfo) -> str | dict[str, str]:
    """Koban's Status of a lot: a label, or `{Code, Label}` for a custom status."""
    if lot.config == "custom":
        label = info.custom_label or lot.status
        return {"Code": lot.status, "Label": label}
    return _WIRE_STATUS[lot.config]


def lot_json(lot: Lot, info: LotInfo, programme: Programme | None) -> dict[str, object]:
    """A lot as ncDeal/GetUpdated lists it."""
    return {
        "Guid": lot.guid,
        "Extcode": lot.extcode,
        "Label": lot.label,
        "Status": wire_status(lot, info),
        "Result": "WON" if lot.config == "sold" else None,
        "Process": (
            {"Code": programme.code, "Label": programme.label, "Guid": programme.guid}
            if programme
            else None
        ),
        "Amountprev": info.amount,
        "Tags": [dict(t) for t in info.tags],
        "MoreFields": [dict(m) for m in info.more_fields],
        "Type": "Secondary" if lot.secondary else None,
        "Link": lot.link,
        "Updated": lot.modified_at,
    }


def lot_view(lot: Lot, info: LotInfo) -> dict[str, object]:
    """The sandbox's own view of a lot (for twin tests)."""
    pre = lot.prereservation
    return {
        "extcode": lot.extcode,
        "guid": lot.guid,
        "config": lot.config,
        "status": wire_status(lot, info),
        "result": "WON" if lot.config == "sold" else None,
        "updated": lot.modified_at,
        "options": [
            {
                "rank": o.rank,
                "thirdGuid": o.holder,
                "partnerGuid": o.partner,
                "placedAt": o.placed_at,
                "deadline": o.deadline,
                "expDate": o.expiry,
                "prolonged": o.prolonged,
                "viaApi": o.via_api,
            }
            for o in sorted(lot.options, key=lambda o: o.rank)
        ],
        "prereservation": (
            {
                "thirdGuid": pre.holder,
                "partnerGuid": pre.partner,
                "price": euros(pre.price_cents),
                "deposit": euros(pre.deposit_cents),
                "at": pre.at,
            }
            if pre is not None
            else None
        ),
    }


# --------------------------------------------------------------------------- webhook fields


def deal_fields(lot: Lot) -> dict[str, object]:
    return {"Deal_Extcode": lot.extcode, "Deal_Guid": lot.guid}


def third_fields(guid: object, prospects: Mapping[str, Third]) -> dict[str, object]:
    third = prospects.get(guid) if isinstance(guid, str) else None
    return {
        "Third_Guid": guid if isinstance(guid, str) else "",
        "Third_Extcode": third.extcode if third else "",
    }


def option_placed_fields(
    lot: Lot, option: Option, holder: str, prospects: Mapping[str, Third], rep: SalesRep
) -> dict[str, object]:
    person = prospects[holder]
    return {
        **deal_fields(lot),
        **third_fields(holder, prospects),
        "Rank": option.rank,
        "ExpDate": option.expiry,
        "Third_Name": person.name,
        "Third_FirstName": person.first_name,
        "Third_EMail": person.email,
        "AssignedTo_Name": rep.name,
        "AssignedTo_FirstName": rep.first_name,
        "AssignedTo_EMail": rep.email,
    }


def reservation_validated_fields(
    lot: Lot,
    holder: str | None,
    person: Third | None,
    info: LotInfo,
    programme: Programme | None,
    rep: SalesRep,
) -> dict[str, object]:
    pre = lot.prereservation
    return {
        "Lot_Code": lot.extcode,
        "_id": info.prereservation_id,
        "DealId": lot.guid,
        "ThirdId": holder,
        "PrixVente": euros(pre.price_cents) if pre else None,
        "Garantie": euros(pre.deposit_cents) if pre else None,
        "AssignedToId": rep.guid,
        "OptionId": info.converted_option,
        "PreresaDate": pre.at if pre else None,
        "DealProcessId": programme.guid if programme else None,
        "Res1Nom": person.name if person else None,
        "Res1Prenom": person.first_name if person else None,
        "Res1Phone": person.phone if person else None,
        "Res1Mail": person.email if person else None,
        "Res2": "N",
        "AssignedTo_Name": rep.name,
        "AssignedTo_FirstName": rep.first_name,
        "AssignedTo_EMail": rep.email,
    }
