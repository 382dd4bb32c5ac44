"""What handlers need from the app, under typed ``web.AppKey``s: the tenants, the tokens,
and the Koban clients / outbound flows (made per tenant in the app's ``cleanup_ctx``)."""

from __future__ import annotations

from aiohttp import web

from service.entrypoints.api.auth import Caller, Scope, TokenIndex
from service.entrypoints.api.errors import KOBAN_UNAVAILABLE, ApiError
from service.koban import KobanClient
from service.tenancy import Tenant, Tenants
from service.usecases.flows import OptionFlows

__all__ = [
    "FLOWS_KEY",
    "KOBAN_SETTINGS_KEY",
    "TENANTS_KEY",
    "TOKENS_KEY",
    "FlowSettings",
    "KobanPool",
    "authenticate",
    "flows_for",
]


class FlowSettings:
    """How the outbound flows wait for a predecessor placement, and for another Koban write
    on the same lot's options (tests shorten them)."""

    def __init__(
        self, predecessor_wait_s: float = 5.0, poll_s: float = 0.25, lot_write_wait_s: float = 5.0
    ) -> None:
        self.predecessor_wait_s = predecessor_wait_s
        self.poll_s = poll_s
        self.lot_write_wait_s = lot_write_wait_s


class KobanPool:
    """One Koban client and one `OptionFlows` per tenant that has Koban credentials."""

    def __init__(self) -> None:
        self.clients: dict[str, KobanClient] = {}
        self.flows: dict[str, OptionFlows] = {}

    def add(self, tenant: Tenant, client: KobanClient, settings: FlowSettings) -> None:
        self.clients[tenant.name] = client
        self.flows[tenant.name] = OptionFlows(
            tenant,
            client,
            predecessor_wait_s=settings.predecessor_wait_s,
            poll_s=settings.poll_s,
            lot_write_wait_s=settings.lot_write_wait_s,
        )


TENANTS_KEY = web.AppKey("api_tenants", Tenants)
TOKENS_KEY = web.AppKey("api_tokens", TokenIndex)
FLOWS_KEY = web.AppKey("api_koban_pool", KobanPool)
KOBAN_SETTINGS_KEY = web.AppKey("api_flow_settings", FlowSettings)


def authenticate(request: web.Request, scope: Scope) -> Caller:
    return request.app[TOKENS_KEY].authenticate(request, request.match_info["tenant"], scope)


def _pool(request: web.Request) -> KobanPool:
    pool = request.app.get(FLOWS_KEY)
    if pool is None:  # pragma: no cover - set by the cleanup_ctx before serving
        raise ApiError(503, KOBAN_UNAVAILABLE, "Koban clients are not ready.")
    return pool


def flows_for(request: web.Request, caller: Caller) -> OptionFlows:
    flows = _pool(request).flows.get(caller.tenant.name)
    if flows is None:
        raise ApiError(
            503,
            KOBAN_UNAVAILABLE,
            "This tenant has no Koban credentials configured; writes are unavailable.",
            headers={"Retry-After": "60"},
        )
    return flows


def koban_for(request: web.Request, caller: Caller) -> KobanClient:
    return flows_for(request, caller).koban
