"""How the sandbox's Koban shows its records on the wire: a lot's Status, a lot as
ncDeal/GetUpdated lists it, the fields of the webhooks it fires, and the sandbox's own
view of a lot (for twin tests). Pure functions of the records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from statecharts.model import Lot, Option

from .stock import LotInfo, Programme, SalesRep, Third

__all__ = [
    "deal_fields",
    "dotnet_dates",
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


_STATUS_LABEL = {
    "LIBRE": "Libre",
    "OPTION": "Option",
    "PRERESV": "Préréservé",
    "RESV": "Réservé",
    "BLOQUE": "Bloqué",
}
_DATE_FIELDS = frozenset({"ExpDate", "PrgDate", "PreresaDate"})


def _naive_iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat()


def dotnet_dates(values: Mapping[str, object]) -> dict[str, object]:
    """Webhook dates as Koban's generic webhooks write them: ``/Date(ms)/``."""
    return {
        k: f"/Date({v * 1000})/" if k in _DATE_FIELDS and isinstance(v, int) else v
        for k, v in values.items()
    }


def lot_json(
    lot: Lot, info: LotInfo, programme: Programme | None, profile: str = "doc"
) -> dict[str, object]:
    """A lot as ncDeal/GetUpdated lists it: as the immobilier doc writes it (``doc``), or
    as Koban's generic deal structure shows it (``generic``: `Status` an object, `Updated`
    naive ISO beside `DUpdated`, no `Type`/`Link` on a primary lot, `TagCategoryCode`)."""
    if profile == "generic":
        return _generic_lot_json(lot, info, programme)
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


def _generic_lot_json(lot: Lot, info: LotInfo, programme: Programme | None) -> dict[str, object]:
    status = wire_status(lot, info)
    if isinstance(status, str):
        status = {"Label": _STATUS_LABEL.get(status, status), "Code": status}
    body: dict[str, object] = {
        "Guid": lot.guid,
        "Extcode": lot.extcode,
        "Label": lot.label,
        "Status": {**status, "Guid": f"step-{status['Code']}".lower()},
        "Result": "WON" if lot.config == "sold" else None,
        "Process": (
            {"Code": programme.code, "Label": programme.label, "Guid": programme.guid}
            if programme
            else None
        ),
        "Amountprev": info.amount,
        "Tags": [
            {"TagCategoryCode": t.get("TagCategoryCode", t.get("TagCategory")), "Label": t["Label"]}
            for t in info.tags
        ],
        "MoreFields": [dict(m) for m in info.more_fields],
        "Updated": _naive_iso(lot.modified_at),
        "DUpdated": float(lot.modified_at),
    }
    if lot.secondary:
        body["Type"] = "SECONDARY"
        body["Link"] = lot.link
    return body


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
