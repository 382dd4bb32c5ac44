"""Request models shared by the prospect and dénonciation routes: a prospect's contact.

Names, e-mails and phones are personal data: they are validated here, sent to Koban and
never logged or put in an event (docs/personal-data.md).
"""

from __future__ import annotations

from typing import Annotated, TypeAlias

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from service.koban.denonciation import Contact

__all__ = ["CamelOut", "Code", "ContactIn", "Email", "Name", "Phone", "contact_of"]

Name: TypeAlias = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)
]
# Checked loosely on purpose: Koban stores what it is given, and a stricter rule here
# would refuse addresses Koban takes.
Email: TypeAlias = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$"
    ),
]
Phone: TypeAlias = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=32, pattern=r"^\+?[0-9 .()-]+$"
    ),
]
# Koban codes and extcodes: what the lot extcodes allow.
Code: TypeAlias = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._~:@+=-]+$")
]


class CamelOut(BaseModel):
    """An answer: Python names inside, camelCase on the wire and in the schema."""

    model_config = ConfigDict(alias_generator=AliasGenerator(serialization_alias=to_camel))


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    last_name: Name = Field(alias="lastName")
    first_name: Name | None = Field(default=None, alias="firstName")
    email: Email | None = None
    phone: Phone | None = None
    mobile: Phone | None = None


def contact_of(body: ContactIn) -> Contact:
    return Contact(
        last_name=body.last_name,
        first_name=body.first_name,
        email=body.email,
        phone=body.phone,
        mobile=body.mobile,
    )
