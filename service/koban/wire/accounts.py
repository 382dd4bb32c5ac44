"""Koban's accounts (thirds) as ``ncThird/PostOne`` takes them: prospects and CGPs, keyed
by the service's own Extcode when the caller has none; and the guessed lookup of one by
e-mail (``ncThird/GetOneByKey``), whose answer's ``Result`` is an account.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from service.koban.wire.requests import CodeRef, WireRequest
from service.koban.wire.values import as_bool, fold_keys

ThirdKind = Literal["PROSPECT", "CGP"]
# Account status codes (Koban's `Status{Code}`): a prospect, and a CGP ("Statut CGP (Code
# CGP)" in the immobilier doc). A tenant whose Koban names CGPs otherwise sets
# `cgp_status_code`, passed here as `status_code`.
STATUS_CODE_OF_KIND: dict[str, str] = {"PROSPECT": "PROSPECT", "CGP": "CGP"}
# The service's own Extcodes for thirds it creates without one from the caller.
OWN_EXTCODE_PREFIX = "ko-"
UNIQUE_PROPERTY = "Extcode"
# GetOneByKey's parameters, both guessed: `uniqueproperty` as PostOne takes it, the value
# to match as `key`.
LOOKUP_PROPERTY = "Email"
LOOKUP_KEY_PARAM = "key"


class TagRef(WireRequest):
    category_code: str = Field(serialization_alias="TagCategoryCode", min_length=1)
    label: str = Field(serialization_alias="Label")


class MoreField(WireRequest):
    field_id: str = Field(serialization_alias="FieldId", min_length=1)
    value: str = Field(serialization_alias="Value")


class Account(WireRequest):
    """Koban's account structure, as ``ncThird/PostOne`` takes it (prospects and CGPs).

    ``extcode`` is required: PostOne is always sent with ``uniqueproperty=Extcode``, so a
    resend updates the same third (`own_extcode` makes one when the caller has none)."""

    label: str = Field(serialization_alias="Label", min_length=1)
    first_name: str | None = Field(default=None, serialization_alias="FirstName")
    email: str | None = Field(default=None, serialization_alias="EMail")
    phone: str | None = Field(default=None, serialization_alias="Phone")
    cell: str | None = Field(default=None, serialization_alias="Cell")
    status: CodeRef = Field(serialization_alias="Status")
    type: CodeRef | None = Field(default=None, serialization_alias="Type")
    extcode: str = Field(serialization_alias="Extcode", min_length=1)
    origin: CodeRef | None = Field(default=None, serialization_alias="Origin")
    tags: list[TagRef] | None = Field(default=None, serialization_alias="Tags")
    more_fields: list[MoreField] | None = Field(default=None, serialization_alias="MoreFields")


def own_extcode(*parts: str | None) -> str:
    """A stable Extcode from what names the person (e.g. the e-mail): the same person sent
    twice gets the same third."""
    seed = "\x1f".join((p or "").strip().lower() for p in parts)
    return OWN_EXTCODE_PREFIX + hashlib.sha256(seed.encode()).hexdigest()[:20]


def account(
    label: str,
    first_name: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    kind: ThirdKind = "PROSPECT",
    *,
    cell: str | None = None,
    extcode: str | None = None,
    type_code: str | None = None,
    origin_code: str | None = None,
    tags: list[tuple[str, str]] | None = None,
    more_fields: list[tuple[str, str]] | None = None,
    status_code: str | None = None,
) -> Account:
    """An account to post: a prospect or (``kind="CGP"``) a CGP, told by its status code
    (`status_code`, or the kind's usual one)."""
    return Account(
        label=label,
        first_name=first_name,
        email=email,
        phone=phone,
        cell=cell,
        status=CodeRef(code=status_code or STATUS_CODE_OF_KIND[kind]),
        type=None if type_code is None else CodeRef(code=type_code),
        extcode=extcode or own_extcode(email or "", label, first_name),
        origin=None if origin_code is None else CodeRef(code=origin_code),
        tags=None if tags is None else [TagRef(category_code=c, label=v) for c, v in tags],
        more_fields=(
            None
            if more_fields is None
            else [MoreField(field_id=f, value=v) for f, v in more_fields]
        ),
    )


def third_params() -> dict[str, str]:
    return {"uniqueproperty": UNIQUE_PROPERTY}


def third_lookup_params(email: str) -> dict[str, str]:
    """GetOneByKey's query: the third whose e-mail is `email`."""
    return {"uniqueproperty": LOOKUP_PROPERTY, LOOKUP_KEY_PARAM: email}


def found_third_guid(payload: Any) -> str | None:
    """GetOneByKey's answer → the account's ``Guid`` (keys in any case), read from
    ``Result``; None when the envelope says ``success: false`` (Koban names no third).
    ValueError when there is no account with a Guid to read."""
    if not isinstance(payload, Mapping):
        raise ValueError("GetOneByKey: expected an object")
    folded = fold_keys(payload)
    if "success" in folded and not as_bool(folded["success"]):
        return None
    result = folded.get("result")
    if not isinstance(result, Mapping):
        raise ValueError("GetOneByKey: no account in Result")
    guid = fold_keys(result).get("guid")
    if isinstance(guid, bool) or not isinstance(guid, str | int) or not str(guid).strip():
        raise ValueError("GetOneByKey: the account has no Guid")
    return str(guid).strip()
