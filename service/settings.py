"""The configuration's shapes: the service's `Settings`, each tenant's `TenantSettings`, the
API tokens, and the field types they share (ISO-8601 durations, IANA zones, URLs).

Validation only: where values come from (TOML layers, environment, secrets) is
`service.config.load_settings`, the one way to build a `Settings` from the outside.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from service.outbound.signing import SecretBox, SecretBoxError
from service.storage.events import DEFAULT_PUBLIC_BASE_URL
from service.storage.redis_client import CLUSTER_SCHEMES
from statecharts.ticks import IsoDuration, check_zone, parse_duration

__all__ = [
    "TENANT_NAME_PATTERN",
    "ApiToken",
    "Settings",
    "TenantSettings",
]

TENANT_NAME_PATTERN = r"^[a-z0-9-]{1,32}$"


def _to_duration(value: object) -> IsoDuration:
    if isinstance(value, IsoDuration):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an ISO-8601 duration string such as 'P2D' or 'PT30M'")
    return parse_duration(value)


def _to_positive_duration(value: object) -> IsoDuration:
    duration = _to_duration(value)
    if duration.is_zero:
        raise ValueError(f"must be longer than zero, got {duration}")
    return duration


def _to_elapsed_duration(value: object) -> IsoDuration:
    # Used as TTLs and delays: a day is 24 h; months and years have no fixed length.
    duration = _to_duration(value)
    if duration.years or duration.months:
        raise ValueError(f"years and months are not allowed here (elapsed time), got {duration}")
    return duration


def _to_positive_elapsed_duration(value: object) -> IsoDuration:
    return _to_positive_duration(_to_elapsed_duration(value))


def _to_zone(value: object) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        zone = value
    elif isinstance(value, str):
        try:
            zone = ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
    else:
        raise ValueError("expected an IANA time zone name such as 'Europe/Paris'")
    check_zone(zone)
    return zone


_DURATION_JSON = WithJsonSchema({"type": "string", "format": "duration"})
_DURATION_TEXT = PlainSerializer(str, return_type=str)
CalendarDuration: TypeAlias = Annotated[
    IsoDuration, PlainValidator(_to_positive_duration), _DURATION_TEXT, _DURATION_JSON
]
ElapsedDuration: TypeAlias = Annotated[
    IsoDuration, PlainValidator(_to_elapsed_duration), _DURATION_TEXT, _DURATION_JSON
]
PositiveElapsedDuration: TypeAlias = Annotated[
    IsoDuration, PlainValidator(_to_positive_elapsed_duration), _DURATION_TEXT, _DURATION_JSON
]
Zone: TypeAlias = Annotated[
    ZoneInfo,
    PlainValidator(_to_zone),
    PlainSerializer(lambda zone: zone.key, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["Europe/Paris"]}),
]
TenantName: TypeAlias = Annotated[str, StringConstraints(pattern=TENANT_NAME_PATTERN)]
Scope: TypeAlias = Literal["read", "write", "admin"]
WebhookAuth: TypeAlias = Literal["header", "query"]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return value.rstrip("/")


# --------------------------------------------------------------------------- models


class ApiToken(BaseModel):
    """A bearer token of the internal API; a partner token acts only as its partner."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr
    scopes: set[Scope] = Field(min_length=1)
    partner_guid: str | None = Field(default=None, min_length=1)
    # The CGP a partner's dénonciations are made `By` (Koban's third guid of that CGP).
    cgp_guid: str | None = Field(default=None, min_length=1)

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


class TenantSettings(BaseModel):
    """One tenant. Python defaults mirror `[tenant_defaults]` (a test keeps them equal)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zone: Zone = ZoneInfo("Europe/Paris")
    option_lifetime: CalendarDuration = IsoDuration(days=2)
    max_options_per_prospect: PositiveInt = 3
    max_options_per_user: PositiveInt | None = None
    rank2_clock: Literal["own", "restart"] = "own"
    max_prolongation: CalendarDuration | None = None
    expiring_notice: ElapsedDuration = IsoDuration(seconds=2 * 3600)
    event_retention: PositiveElapsedDuration = IsoDuration(days=7)
    history_cap: PositiveInt = 500
    tombstone_ttl: PositiveElapsedDuration = IsoDuration(days=7)
    intent_grace: ElapsedDuration = IsoDuration(seconds=120)
    intent_ttl: PositiveElapsedDuration = IsoDuration(seconds=900)
    drift_tolerance: ElapsedDuration = IsoDuration(seconds=300)
    sandbox: bool = False
    sandbox_profile: Literal["doc", "generic"] = "doc"
    sandbox_prg_date: Literal["deadline", "moment"] = "deadline"
    programmes: list[str] | None = Field(default=None, min_length=1)
    koban_base_url: str = "https://app-koban.com/api/v1"
    webhook_auth: set[WebhookAuth] = Field(default={"header", "query"}, min_length=1)
    koban_rate_limit_per_s: PositiveFloat = 5
    # Webhook subscriptions (service.usecases.delivery).
    allow_private_targets: bool = False
    allow_http_targets: bool = False
    delivery_retry_schedule: list[PositiveElapsedDuration] = Field(
        default_factory=lambda: [
            IsoDuration(seconds=s) for s in (5, 300, 1800, 7200, 18000, 36000, 36000)
        ],
        max_length=20,
    )
    disable_after: PositiveElapsedDuration = IsoDuration(days=5)
    delivery_timeout: PositiveElapsedDuration = IsoDuration(seconds=10)
    delivery_log_size: PositiveInt = 1000
    # Per API token, shared by every worker and replica (a Redis bucket); unset: no limit.
    api_rate_per_s: PositiveFloat | None = None
    api_burst: PositiveInt | None = None  # requests admitted at once; unset: the rate, ≥ 1
    lead_dedup: PositiveElapsedDuration = IsoDuration(days=1)
    lead_retention: PositiveElapsedDuration = IsoDuration(days=30)
    assigned_to_guid: str | None = Field(default=None, min_length=1)
    # The account status code (`Status{Code}`) Koban knows CGPs by in this tenant.
    cgp_status_code: str = Field(default="CGP", min_length=1, max_length=50)
    # How a dénonciation names a prospect Koban says exists: by its e-mail through the
    # guessed ncThird/GetOneByKey, or not at all (thirdGuid stays null).
    prospect_lookup: Literal["email", "off"] = "email"

    # Secrets: environment only.
    koban_api_key: SecretStr | None = None
    koban_user_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    api_tokens: list[ApiToken] = Field(default_factory=list)

    @field_validator("koban_base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("api_tokens")
    @classmethod
    def _tokens_unique(cls, tokens: list[ApiToken]) -> list[ApiToken]:
        values = [token.token.get_secret_value() for token in tokens]
        if len(set(values)) != len(values):
            raise ValueError("two API tokens have the same value")
        return tokens


class Settings(BaseModel):
    """The whole service configuration. Build it with `load_settings()`.

    Direct construction (`Settings(...)`) validates only what it is given: the TOML and
    environment layers are applied by `load_settings`, never implicitly.
    """

    # Defaults are validated too, as they would be if they came from a file.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    sandbox_host: str = "127.0.0.1"
    sandbox_port: int = Field(default=8081, ge=1, le=65535)
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    history_cap: PositiveInt = 500
    sweep_batch: PositiveInt = 500
    tracing: bool = False  # OpenTelemetry traces (the `otel` extra), exported over OTLP
    # Where clients reach this API: events' `dataschema` URIs are built under it.
    public_base_url: str = DEFAULT_PUBLIC_BASE_URL
    tenants: dict[TenantName, TenantSettings] = Field(default_factory=dict)
    # Fernet key(s) sealing webhook subscription secrets (environment only).
    subscription_key: SecretStr | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
            raise ValueError(
                "expected a redis://, rediss://, unix:// or (Redis Cluster) "
                "redis+cluster:// / rediss+cluster:// URL"
            )
        if parts.scheme in CLUSTER_SCHEMES and parts.path not in ("", "/", "/0"):
            raise ValueError("a Redis Cluster has only database 0")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("subscription_key")
    @classmethod
    def _subscription_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                SecretBox(value.get_secret_value())
            except SecretBoxError as exc:
                raise ValueError(str(exc)) from None
        return value
