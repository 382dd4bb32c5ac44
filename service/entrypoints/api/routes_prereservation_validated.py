"""``POST …/lots/{extcode}/prereservation/validated``: a complete dossier through Koban's
``ncPreresv/AddValid`` (`service.usecases.validated_prereservation`). Not for partner
tokens: the dossier carries the buyers' personal data. Field table: docs/api.md."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any, TypeAlias

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.entrypoints.api.context import authenticate, flows_for
from service.entrypoints.api.errors import FORBIDDEN, ApiError, json_response
from service.entrypoints.api.idempotency import idempotent
from service.entrypoints.api.models import (
    Euros,
    Guid,
    InstantIn,
    LotOut,
    canonical_body,
    cents,
    dump,
)
from service.entrypoints.api.openapi import (
    WRITE,
    Operation,
    Reply,
    documented,
)
from service.entrypoints.api.option_operations import PRERESERVE_ERRORS
from service.entrypoints.api.routes_lots import LOT, lot_out

__all__ = ["PRERESERVE_VALIDATED", "ValidatedPrereserveIn", "routes"]

routes = web.RouteTableDef()

Cents: TypeAlias = Annotated[int, Field(ge=0, le=10**13, strict=True)]
Text: TypeAlias = Annotated[str, StringConstraints(strip_whitespace=True, max_length=256)]
Code: TypeAlias = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)
]


class ValidatedPrereserveIn(BaseModel):
    """The doc's AddValid fields in camelCase (``…_cent`` as integer ``…Cents``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    third_guid: Guid = Field(alias="thirdGuid")
    price: Euros
    deposit: Euros
    assigned_to_id: Guid | None = Field(default=None, alias="assignedToId")
    preresa_date: InstantIn | None = Field(default=None, alias="preresaDate")
    res1_genre: Code | None = Field(default=None, alias="res1Genre")
    annexe1_cents: Cents | None = Field(default=None, alias="annexe1Cents")
    annexe2_cents: Cents | None = Field(default=None, alias="annexe2Cents")
    annexe3_cents: Cents | None = Field(default=None, alias="annexe3Cents")
    annexe4_cents: Cents | None = Field(default=None, alias="annexe4Cents")
    annexe5_cents: Cents | None = Field(default=None, alias="annexe5Cents")
    res1_nom: Text | None = Field(default=None, alias="res1Nom")
    res1_prenom: Text | None = Field(default=None, alias="res1Prenom")
    res1_date_naissance: date | None = Field(default=None, alias="res1DateNaissance")
    canal_origine: Code | None = Field(default=None, alias="canalOrigine")
    res1_nom_sci: Text | None = Field(default=None, alias="res1NomSci")
    res1_adr_street: Text | None = Field(default=None, alias="res1AdrStreet")
    res1_adr_complement: Text | None = Field(default=None, alias="res1AdrComplement")
    res1_adr_zip_code: Code | None = Field(default=None, alias="res1AdrZipCode")
    res1_adr_city: Text | None = Field(default=None, alias="res1AdrCity")
    res1_phone: Code | None = Field(default=None, alias="res1Phone")
    res1_mail: Text | None = Field(default=None, alias="res1Mail")
    res2: bool | None = None
    res2_nom: Text | None = Field(default=None, alias="res2Nom")
    res2_prenom: Text | None = Field(default=None, alias="res2Prenom")
    res2_phone: Code | None = Field(default=None, alias="res2Phone")
    res2_mail: Text | None = Field(default=None, alias="res2Mail")
    options: Text | None = None
    frais_notaire_montant_cents: Cents | None = Field(
        default=None, alias="fraisNotaireMontantCents"
    )
    apport_cents: Cents | None = Field(default=None, alias="apportCents")
    pret_immo1_cents: Cents | None = Field(default=None, alias="pretImmo1Cents")
    tva: Annotated[Decimal, Field(ge=0, le=100, decimal_places=2)] | None = None
    pret_immo2_cents: Cents | None = Field(default=None, alias="pretImmo2Cents")
    canal_vente: Code | None = Field(default=None, alias="canalVente")
    res1_profession: Code | None = Field(default=None, alias="res1Profession")
    res2_date_naissance: date | None = Field(default=None, alias="res2DateNaissance")
    res2_profession: Code | None = Field(default=None, alias="res2Profession")
    res2_adr_street: Text | None = Field(default=None, alias="res2AdrStreet")
    res2_adr_zip_code: Code | None = Field(default=None, alias="res2AdrZipCode")
    res2_adr_city: Text | None = Field(default=None, alias="res2AdrCity")
    frais_notaire_offert: bool | None = Field(default=None, alias="fraisNotaireOffert")
    nature_achat: Code | None = Field(default=None, alias="natureAchat")
    plusieurs_prets: bool | None = Field(default=None, alias="plusieursPrets")
    ptz: bool | None = None
    ptz_montant_cents: Cents | None = Field(default=None, alias="ptzMontantCents")


PRERESERVE_VALIDATED = Operation(
    "Place a validated préréservation (a complete dossier) through Koban's AddValid",
    "lots",
    {201: Reply(LotOut, "The lot, PRERESV, its préréservation `validated`.")},
    PRERESERVE_ERRORS,
    scope=WRITE,
    body=ValidatedPrereserveIn,
    idempotent=True,
)


@routes.post(LOT + "/prereservation/validated")
@documented(PRERESERVE_VALIDATED)
async def prereserve_validated(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    if caller.partner is not None:
        raise ApiError(403, FORBIDDEN, "A partner token may not place a validated dossier.")
    body, raw = await PRERESERVE_VALIDATED.parse_body(request)
    extcode = request.match_info["extcode"]
    values: dict[str, Any] = body.model_dump(exclude={"price", "deposit"})
    values["price_cents"] = cents(body.price)
    values["deposit_cents"] = cents(body.deposit)
    if values["preresa_date"] is None:
        values["preresa_date"] = caller.tenant.clock.now()
    if values["assigned_to_id"] is None:
        values["assigned_to_id"] = caller.tenant.settings.assigned_to_guid

    async def action() -> web.Response:
        lot = await flows_for(request, caller).prereserve_validated(extcode, values)
        return json_response(dump(lot_out(lot, caller)), 201)

    return await idempotent(request, caller, canonical_body(raw), action)
