"""Configuration: `config/defaults.toml`, then the tenants file, then the environment
(`KOBAN_OPTIONS_<KEY>`, `…_TENANT_DEFAULTS__<KEY>`, `…_TENANTS__<NAME>__<KEY>`, plus an
untracked `.env`); later wins, and each tenant's table is laid over `[tenant_defaults]`.

Secrets come only from the environment: a TOML file holding one is refused. Every error is
a `ConfigError` naming the dotted key and where its value came from, never the value. The
layers are walked here rather than by a settings library so that `load_settings(env=...)`
never reads the process environment and errors keep their provenance; docs/configuration.md
has the layers, the variable names and the reasons. The models are `service.settings`.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from service.settings import TENANT_NAME_PATTERN, ApiToken, Settings, TenantSettings

__all__ = [
    "SECRET_KEYS",
    "TENANT_NAME_PATTERN",
    "ApiToken",
    "ConfigError",
    "Settings",
    "TenantSettings",
    "default_config_dir",
    "load_settings",
]

ENV_PREFIX = "KOBAN_OPTIONS_"
ENV_DELIMITER = "__"
TENANTS_FILE_VAR = f"{ENV_PREFIX}TENANTS_FILE"
CONFIG_DIR_VAR = f"{ENV_PREFIX}CONFIG_DIR"
DEFAULTS_FILE = "defaults.toml"
EXAMPLE_TENANTS_FILE = "tenants.example.toml"

# Keys that only the environment may set (tenant keys, and the subscription key).
SECRET_KEYS = frozenset(
    {"koban_api_key", "koban_user_key", "webhook_secret", "api_tokens", "subscription_key"}
)
_TENANT_NAME_RE = re.compile(TENANT_NAME_PATTERN)
# Env values decoded as JSON (lists); WEBHOOK_AUTH also takes "header,query".
_JSON_ENV_KEYS = frozenset({"api_tokens", "webhook_auth"})


class ConfigError(ValueError):
    """Invalid configuration; each line of the message starts with the dotted key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# --------------------------------------------------------------------------- loading

_Path = tuple[str, ...]


def default_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$KOBAN_OPTIONS_CONFIG_DIR`, else the source tree's `config/`, else `./config`."""
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_DIR_VAR):
        return Path(environ[CONFIG_DIR_VAR])
    in_tree = Path(__file__).resolve().parent.parent / "config"
    return in_tree if (in_tree / DEFAULTS_FILE).is_file() else Path.cwd() / "config"


def load_settings(
    config_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    tenants_file: Path | None = None,
    *,
    dotenv_path: Path | None = None,
) -> Settings:
    """Load and validate the configuration; raises `ConfigError` naming the bad key.

    `env` is the whole environment to use. When it is None, `os.environ` is used on top of
    `./.env` (if present). `dotenv_path` names a `.env` file to read under `env` (the
    given mapping wins over it), for tests and explicit set-ups.
    """
    environ = _environment(env, dotenv_path)
    config_dir = config_dir if config_dir is not None else default_config_dir(environ)
    if tenants_file is None:
        named = environ.get(TENANTS_FILE_VAR)
        tenants_file = Path(named) if named else config_dir / EXAMPLE_TENANTS_FILE

    sources: dict[_Path, str] = {}
    data: dict[str, Any] = {}
    for path in (config_dir / DEFAULTS_FILE, tenants_file):
        document = _read_toml(path)
        _refuse_secrets(document, path, ())
        _record_sources(document, str(path), (), sources)
        data = _deep_merge(data, document)
    overrides = _env_overrides(environ, sources)
    declared = _as_table(data.get("tenants", {}), "tenants")
    undeclared = [name for name in overrides.get("tenants", {}) if name not in declared]
    if undeclared:
        # Most likely a typo in a variable name: a secret would otherwise go nowhere.
        raise ConfigError(
            [
                f"tenants.{name}: set by the environment ({_env_name(('tenants', name))}__…) "
                f"but not declared in {tenants_file}"
                for name in undeclared
            ]
        )
    merged = _deep_merge(data, overrides)
    own_tables = _as_table(merged.get("tenants", {}), "tenants")
    problems: list[str] = []
    # [tenant_defaults] is checked on its own, so a bad default fails even when every
    # tenant overrides it, and is reported once rather than once per tenant.
    bad_defaults: set[str] = set()
    try:
        TenantSettings.model_validate(
            _as_table(merged.get("tenant_defaults", {}), "tenant_defaults")
        )
    except ValidationError as exc:
        for loc, text in _describe(exc, sources, ("tenant_defaults",)):
            if len(loc) > 1:
                bad_defaults.add(str(loc[1]))
            problems.append(text)
    try:
        settings = Settings.model_validate(_expand_tenants(merged))
    except ValidationError as exc:
        for loc, text in _describe(exc, sources):
            inherited = (
                len(loc) >= 3
                and loc[0] == "tenants"
                and loc[2] in bad_defaults
                and loc[2] not in own_tables.get(str(loc[1]), {})
            )
            if not inherited:
                problems.append(text)
    if problems:
        raise ConfigError(problems)
    return settings


def _environment(env: Mapping[str, str] | None, dotenv_path: Path | None) -> dict[str, str]:
    if dotenv_path is None and env is None:
        candidate = Path.cwd() / ".env"
        dotenv_path = candidate if candidate.is_file() else None
    merged: dict[str, str] = {}
    if dotenv_path is not None:
        if not dotenv_path.is_file():
            raise ConfigError([f"{dotenv_path}: no such .env file"])
        merged.update(
            {key: value for key, value in dotenv_values(dotenv_path).items() if value is not None}
        )
    merged.update(os.environ if env is None else env)
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: configuration file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None


def _refuse_secrets(table: Mapping[str, Any], path: Path, where: _Path) -> None:
    for key, value in table.items():
        here = (*where, key)
        if key in SECRET_KEYS:
            raise ConfigError(
                [
                    f"{'.'.join(here)}: secrets come only from the environment, not from "
                    f"{path} (set {_env_name(here)})"
                ]
            )
        if isinstance(value, Mapping):
            _refuse_secrets(value, path, here)


def _env_name(key: _Path) -> str:
    return ENV_PREFIX + ENV_DELIMITER.join(part.replace("-", "_").upper() for part in key)


def _record_sources(
    table: Mapping[str, Any], origin: str, where: _Path, sources: dict[_Path, str]
) -> None:
    for key, value in table.items():
        here = (*where, key)
        # Sections are containers; their leaves carry the provenance.
        section = here in (("tenants",), ("tenant_defaults",)) or (
            len(here) == 2 and here[0] == "tenants"
        )
        if section and isinstance(value, Mapping):
            _record_sources(value, origin, here, sources)
        else:
            sources[here] = origin


def _env_overrides(environ: Mapping[str, str], sources: dict[_Path, str]) -> dict[str, Any]:
    """The `KOBAN_OPTIONS_…` variables as a nested dict shaped like the TOML files."""
    overrides: dict[str, Any] = {}
    problems: list[str] = []
    settings_keys = set(Settings.model_fields) - {"tenants"}
    tenant_keys = set(TenantSettings.model_fields)
    for variable, raw in sorted(environ.items()):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        parts = variable[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
        if len(parts) == 1 and parts[0] in settings_keys:
            key: _Path = (parts[0],)
        elif len(parts) == 2 and parts[0] == "tenant_defaults":
            key = ("tenant_defaults", parts[1])
        elif len(parts) == 3 and parts[0] == "tenants":
            # "-" cannot appear in most shells' variable names, "_" in no tenant name.
            key = ("tenants", parts[1].replace("_", "-"), parts[2])
        elif parts[0] in ("tenants", "tenant_defaults"):
            problems.append(
                f"{variable}: expected {ENV_PREFIX}TENANTS__<NAME>__<KEY> or "
                f"{ENV_PREFIX}TENANT_DEFAULTS__<KEY>"
            )
            continue
        else:
            # Other KOBAN_OPTIONS_* variables (TENANTS_FILE, CONFIG_DIR, ...) are not keys.
            continue
        if len(key) > 1 and key[-1] not in tenant_keys:
            problems.append(f"{'.'.join(key)}: unknown key (from environment variable {variable})")
            continue
        try:
            value = _decode_env_value(key[-1], raw)
        except ValueError as exc:
            problems.append(f"{'.'.join(key)}: {exc} (from environment variable {variable})")
            continue
        target = overrides
        for part in key[:-1]:
            target = target.setdefault(part, {})
        target[key[-1]] = value
        sources[key] = f"environment variable {variable}"
    if problems:
        raise ConfigError(problems)
    return overrides


def _decode_env_value(key: str, raw: str) -> Any:
    if raw == "":
        return None  # unsets an optional key; a required one then fails validation
    if key in _JSON_ENV_KEYS:
        text = raw.strip()
        if key == "webhook_auth" and not text.startswith("["):
            return [item.strip() for item in text.split(",") if item.strip()]
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            # The value is not echoed: API_TOKENS holds secrets.
            raise ValueError("not valid JSON (expected a JSON list)") from None
    return raw


def _as_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError([f"{where}: expected a table"])
    return value


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _expand_tenants(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    defaults = _as_table(data.pop("tenant_defaults", {}), "tenant_defaults")
    tenants = _as_table(data.get("tenants", {}), "tenants")
    problems = [
        f"tenants.{name}: a tenant name is 1 to 32 characters among a-z, 0-9 and '-'"
        for name in tenants
        if not _TENANT_NAME_RE.fullmatch(name)
    ]
    if problems:
        raise ConfigError(problems)
    data["tenants"] = {
        name: _deep_merge(defaults, _as_table(table, f"tenants.{name}"))
        for name, table in tenants.items()
    }
    return data


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _origin(loc: tuple[int | str, ...], sources: Mapping[_Path, str]) -> str | None:
    names = tuple(str(part) for part in loc if isinstance(part, str))
    for length in range(len(names), 0, -1):
        if names[:length] in sources:
            return sources[names[:length]]
    if len(names) >= 3 and names[0] == "tenants":
        inherited = ("tenant_defaults", names[2])
        if inherited in sources:
            return f"[tenant_defaults] in {sources[inherited]}"
    return None


def _describe(
    exc: ValidationError, sources: Mapping[_Path, str], where: _Path = ()
) -> list[tuple[tuple[int | str, ...], str]]:
    """(location, "dotted.key: message (from origin)") per error; values never shown."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = (*where, *error["loc"])
        if error["type"] == "value_error" and "error" in error.get("ctx", {}):
            message = str(error["ctx"]["error"])
        elif error["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = error["msg"]
        origin = _origin(loc, sources)
        text = f"{_dotted(loc)}: {message}" + (f" (from {origin})" if origin else "")
        problems.append((loc, text))
    return problems
