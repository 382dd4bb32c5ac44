"""Descriptions of Koban's webhooks under ``/koban/{tenant}/``: the option pre-check and
the six form posts, registered with `describe` (their handlers are closures made per app).
Refusals answer `WebhookErrorOut`; the secret goes in a header or the query."""

from __future__ import annotations

import inspect
from typing import Literal

from pydantic import BaseModel

from service.entrypoints.api.openapi import FORM, Operation, Reply, describe
from service.koban.webhook_forms import (
    MAX_IDENTIFIER,
    OptionCancelledForm,
    OptionExpiredForm,
    OptionPlacedForm,
    OptionProlongedForm,
    ReservationValidatedForm,
    ReservationWithdrawnForm,
)

__all__ = ["OptionCheckOut", "WebhookOkOut"]

PREFIX = "/koban/{tenant}/"
_TAG = "koban webhooks"
_ERRORS = {
    400: ["MALFORMED_REQUEST"],
    401: ["UNAUTHENTICATED"],
    404: ["TENANT_UNKNOWN"],
    503: ["STORE_UNAVAILABLE", "STORE_BUSY"],
}
FORMS: dict[str, type[BaseModel]] = {
    "option-placed": OptionPlacedForm,
    "option-cancelled": OptionCancelledForm,
    "option-prolonged": OptionProlongedForm,
    "option-expired": OptionExpiredForm,
    "reservation-validated": ReservationValidatedForm,
    "reservation-withdrawn": ReservationWithdrawnForm,
}


class WebhookOkOut(BaseModel):
    success: Literal[True]


class OptionCheckOut(BaseModel):
    """Koban's pre-check before it places an option."""

    status: bool
    rank: int | None


describe(
    "GET",
    PREFIX + "option-check",
    Operation(
        "Koban's pre-check: may an option be placed on the lot now?",
        _TAG,
        {200: Reply(OptionCheckOut, "The service's answer.")},
        _ERRORS,
        auth="webhook",
        extra_query=[
            {
                "name": "extcode",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDENTIFIER},
            }
        ],
    ),
)
for _name, _form in FORMS.items():
    describe(
        "POST",
        PREFIX + _name,
        Operation(
            f"Koban's {_name} webhook",
            _TAG,
            {200: Reply(WebhookOkOut, "Taken into account (replays and drift included).")},
            _ERRORS,
            auth="webhook",
            body=_form,
            body_media=FORM,
            description=inspect.getdoc(_form),
        ),
    )
