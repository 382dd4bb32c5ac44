"""``ncPreresv/AddValid`` (a validated préréservation, a complete dossier) on the wire.

`FIELDS` is the doc's table, one row per field: the API's name (the doc's in camelCase,
``…_cent`` as ``…Cents``), Koban's name, and how the value is written. Koban's doc gives
names but no formats; we write as for ``ncPreresv/Add``: euros with two decimals, UNIX
seconds for ``PreresaDate``, and (guesses, listed in docs/koban-wire.md) ``O``/``N`` for
the yes/no fields and ISO dates (``YYYY-MM-DD``) for dates of birth. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from service.koban.wire import Endpoint, cents_to_euros, to_unix

__all__ = ["ADD_VALID", "FIELDS", "Kind", "add_valid_body"]

ADD_VALID = Endpoint("PreresvAddValid", "POST", "/ncPreresv/AddValid")

Kind = Literal["text", "guid", "euros", "cents", "instant", "date", "flag", "number"]

# (API attribute, Koban's field, kind); the lot (``Deal.Extcode``) is added by the body.
FIELDS: tuple[tuple[str, str, Kind], ...] = (
    ("res1_genre", "Res1Genre", "text"),
    ("third_guid", "ThirdId", "guid"),
    ("price_cents", "PrixVente", "euros"),
    ("deposit_cents", "Garantie", "euros"),
    ("assigned_to_id", "AssignedToId", "guid"),
    ("preresa_date", "PreresaDate", "instant"),
    ("annexe1_cents", "Annexe1_cent", "cents"),
    ("annexe2_cents", "Annexe2_cent", "cents"),
    ("annexe3_cents", "Annexe3_cent", "cents"),
    ("annexe4_cents", "Annexe4_cent", "cents"),
    ("annexe5_cents", "Annexe5_cent", "cents"),
    ("res1_nom", "Res1Nom", "text"),
    ("res1_prenom", "Res1Prenom", "text"),
    ("res1_date_naissance", "Res1DateNaissance", "date"),
    ("canal_origine", "CanalOrigine", "text"),
    ("res1_nom_sci", "Res1NomSCI", "text"),
    ("res1_adr_street", "Res1Adr_Street", "text"),
    ("res1_adr_complement", "Res1Adr_Complement", "text"),
    ("res1_adr_zip_code", "Res1Adr_ZipCode", "text"),
    ("res1_adr_city", "Res1Adr_City", "text"),
    ("res1_phone", "Res1Phone", "text"),
    ("res1_mail", "Res1Mail", "text"),
    ("res2", "Res2", "flag"),
    ("res2_nom", "Res2Nom", "text"),
    ("res2_prenom", "Res2Prenom", "text"),
    ("res2_phone", "Res2Phone", "text"),
    ("res2_mail", "Res2Mail", "text"),
    ("options", "Options", "text"),
    ("frais_notaire_montant_cents", "FraisNotaireMontant_cent", "cents"),
    ("apport_cents", "Apport_cent", "cents"),
    ("pret_immo1_cents", "PretImmo1_cent", "cents"),
    ("tva", "TVA", "number"),
    ("pret_immo2_cents", "PretImmo2_cent", "cents"),
    ("canal_vente", "CanalVente", "text"),
    ("res1_profession", "Res1Profession", "text"),
    ("res2_date_naissance", "Res2DateNaissance", "date"),
    ("res2_profession", "Res2Profession", "text"),
    ("res2_adr_street", "Res2Adr_Street", "text"),
    ("res2_adr_zip_code", "Res2Adr_ZipCode", "text"),
    ("res2_adr_city", "Res2Adr_City", "text"),
    ("frais_notaire_offert", "FraisNotaireOffert", "flag"),
    ("nature_achat", "NatureAchat", "text"),
    ("plusieurs_prets", "PlusieursPrets", "flag"),
    ("ptz", "PTZ", "flag"),
    ("ptz_montant_cents", "PTZMontant_cent", "cents"),
)


def _wire(kind: Kind, value: Any) -> Any:
    if kind == "euros":
        return cents_to_euros(int(value))
    if kind == "instant":
        return to_unix(int(value))
    if kind == "date":
        return value.isoformat() if isinstance(value, date) else str(value)
    if kind == "flag":
        return "O" if value else "N"
    if kind == "number":
        return float(value) if isinstance(value, Decimal) else value
    if kind == "cents":
        return int(value)
    return str(value)


def add_valid_body(extcode: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """AddValid's JSON body from `values` keyed by API attribute (absent or None: omitted)."""
    body: dict[str, Any] = {"Deal": {"Extcode": extcode}}
    for attribute, wire_name, kind in FIELDS:
        value = values.get(attribute)
        if value is not None:
            body[wire_name] = _wire(kind, value)
    return body
