"""Async client for Koban's API: one per tenant, with retries and a rate limit.

What a caller may conclude: a ``KobanAnswer`` with ``success=False`` is a refusal (nothing
changed; map it with `koban_refusal`); ``KobanOutcomeUnknown`` (writes only) may have
reached Koban and is never resent, so the caller keeps its intent pending;
``KobanUnavailable`` means nothing was sent, or a read kept failing after its retries, or
Koban answered 429; ``KobanError`` is an answer retrying will not fix. Reads retry with
full-jitter backoff; writes only when nothing was sent. Every attempt takes a slot from the
tenant's leaky-bucket limiter (`transport.py`; the outcomes are `errors.py`). The contract in
full: docs/koban-wire.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from service.koban import add_valid, wire
from service.koban import denonciation as denonc
from service.koban.denonciation import Contact, DenonciationCheck
from service.koban.errors import (
    REFUSAL_FALLBACK,
    KobanError,
    KobanMethod,
    KobanOutcomeUnknown,
    KobanUnavailable,
    is_unknown_prospect,
    koban_refusal,
)
from service.koban.transport import KobanTransport
from service.koban.wire import (
    Account,
    DealPage,
    Endpoint,
    KobanAnswer,
    LotStatus,
    Program,
    ThirdKind,
)

__all__ = [
    "REFUSAL_FALLBACK",
    "KobanClient",
    "KobanError",
    "KobanMethod",
    "KobanOutcomeUnknown",
    "KobanUnavailable",
    "is_unknown_prospect",
    "koban_refusal",
]


class KobanClient(KobanTransport):
    """One tenant's Koban client: Koban's methods over the transport (`KobanTransport`:
    retries, limiter, ``calls`` counts). The ``session`` belongs to the caller."""

    # ---------------------------------------------------------------- reads

    async def read_raw(self, endpoint: Endpoint, params: Mapping[str, str] | None = None) -> Any:
        """A read's decoded JSON, unparsed (for `koban check`, which judges the shapes)."""
        payload = await self._read(endpoint, params)
        self.calls[(endpoint.name, "ok")] += 1
        return payload

    async def get_lot_status(self, extcode: str) -> LotStatus:
        endpoint = wire.GET_LOT_STATUS
        payload = await self._read(endpoint, wire.lot_status_params(extcode))
        return self._parse_read(endpoint, LotStatus.model_validate, payload)

    async def get_updated(
        self, updated: int, page_size: int = 200, process_code: str | None = None
    ) -> AsyncIterator[DealPage]:
        """Lots updated since ``updated`` (UNIX s), page by page until ``s >= Length``.

        With ``process_code``, GetUpdatedProcess for that programme. Stops early on an empty
        page (a shrinking ``Length`` must not loop forever)."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        endpoint = wire.DEAL_GET_UPDATED if process_code is None else wire.DEAL_GET_UPDATED_PROCESS
        start = 0
        while True:
            params = wire.updated_params(updated, start, page_size, process_code)
            payload = await self._read(endpoint, params)
            page = self._parse_read(endpoint, DealPage.model_validate, payload)
            yield page
            # Skipped deals count: they took their places on the page.
            start += page.raw_count
            if start >= page.length or not page.raw_count:
                return

    async def get_programs(self) -> list[Program]:
        endpoint = wire.DEAL_PROCESS_GET_ALL
        payload = await self._read(endpoint)
        return self._parse_read(endpoint, wire.parse_programs, payload)

    # ---------------------------------------------------------------- writes

    async def add_option(
        self,
        extcode: str,
        third_guid: str,
        rank: int,
        date_option: int,
        partner_guid: str | None = None,
    ) -> KobanAnswer:
        body = wire.add_body(extcode, third_guid, rank, date_option, partner_guid)
        return await self._write(wire.OPTION_ADD, body)

    async def prolong_option(self, extcode: str, rank: int, until: int) -> KobanAnswer:
        return await self._write(wire.OPTION_PROLONG, wire.prolong_body(extcode, rank, until))

    async def undo_option(self, extcode: str, rank: int) -> KobanAnswer:
        return await self._write(wire.OPTION_UNDO, wire.undo_body(extcode, rank))

    async def add_prereservation(
        self,
        extcode: str,
        third_guid: str,
        price_cents: int,
        deposit_cents: int,
        partner_guid: str | None = None,
    ) -> KobanAnswer:
        body = wire.preresv_add_body(extcode, third_guid, price_cents, deposit_cents, partner_guid)
        return await self._write(wire.PRERESV_ADD, body)

    async def desist(self, extcode: str, third_guid: str) -> KobanAnswer:
        return await self._write(wire.PRERESV_DESIST, wire.desist_body(extcode, third_guid))

    async def post_account(self, account: Account) -> str:
        """``ncThird/PostOne?uniqueproperty=Extcode`` with Koban's account structure → the
        third's Guid, read from ``Result``. The same ``Extcode`` twice updates one third.

        A refusal raises ``KobanError`` (no code table for PostOne); a success without a
        Guid raises ``KobanOutcomeUnknown`` (the third exists but we cannot name it)."""
        endpoint = wire.THIRD_POST_ONE
        answer = await self._write(endpoint, account.wire(), wire.third_params())
        if not answer.success:
            raise KobanError(
                f"Koban {endpoint.name}: refused {answer.error_code}: {answer.message}",
                envelope=True,
            )
        guid = answer.new_guid
        if guid is None:
            raise self._unknown(endpoint, "success without a Guid in Result")
        return guid

    async def post_third(
        self,
        label: str,
        first_name: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        kind: ThirdKind = "PROSPECT",
        *,
        cell: str | None = None,
        extcode: str | None = None,
    ) -> str:
        """A prospect or CGP from its coordinates (`wire.account`) → its Guid."""
        return await self.post_account(
            wire.account(label, first_name, email, phone, kind, cell=cell, extcode=extcode)
        )

    async def find_third_by_email(self, email: str) -> str | None:
        """``ncThird/GetOneByKey?uniqueproperty=Email&key=<email>`` → the account's Guid,
        read from ``Result``; None when Koban answers it has none (``success: false``).

        Koban documents no such method (a guess, docs/koban-wire.md); failures raise as
        any read's. An exception's message may quote Koban's answer, which may quote the
        e-mail: callers log the failure's kind, never the message."""
        endpoint = wire.THIRD_GET_ONE_BY_KEY
        payload = await self._find(endpoint, wire.third_lookup_params(email))
        if payload is None:
            return None
        return self._parse_read(endpoint, wire.found_third_guid, payload)

    # ---------------------------------------------------------------- dénonciations

    async def check_denonciation(self, programme: str, contact: Contact) -> DenonciationCheck:
        """ncDenonc/CheckDenonc. It changes nothing in Koban, so a lost answer is only
        ``KobanUnavailable`` (asking again is harmless), never an unknown outcome."""
        payload = await self._check_denonc(programme, contact)
        return self._parse_read(denonc.CHECK_DENONC, denonc.parse_check, payload)

    async def check_denonciation_raw(self, programme: str, contact: Contact) -> Any:
        """CheckDenonc's decoded JSON, unparsed (for `koban check`, which judges the shape)."""
        payload = await self._check_denonc(programme, contact)
        self.calls[(denonc.CHECK_DENONC.name, "ok")] += 1
        return payload

    async def _check_denonc(self, programme: str, contact: Contact) -> Any:
        endpoint = denonc.CHECK_DENONC
        try:
            status, raw = await self._exchange(
                endpoint, body=denonc.denonciation_body(programme, contact)
            )
        except KobanOutcomeUnknown as exc:
            raise KobanUnavailable(str(exc), status=exc.status, transient=True) from exc
        return self._json_answer(endpoint, status, raw)

    async def create_denonciation(
        self, programme: str, contact: Contact, by: str | None = None
    ) -> KobanAnswer:
        """ncDenonc/Create; `by` is the CGP's guid. A refusal is an answer, not raised."""
        body = denonc.denonciation_body(programme, contact, by)
        return await self._write(denonc.CREATE_DENONC, body)

    # ---------------------------------------------------------------- validated préréservation

    async def add_valid_prereservation(
        self, extcode: str, values: Mapping[str, Any]
    ) -> KobanAnswer:
        """ncPreresv/AddValid; `values` keyed as `add_valid.FIELDS` names them."""
        body = add_valid.add_valid_body(extcode, values)
        return await self._write(add_valid.ADD_VALID, body)
