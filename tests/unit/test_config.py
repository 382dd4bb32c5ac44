"""Configuration loading (service.config): TOML layers, environment, secrets, errors.

Every test passes `env=` explicitly and never depends on the process environment.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from service.config import (
    ApiToken,
    ConfigError,
    Settings,
    TenantSettings,
    load_settings,
)
from statecharts.ticks import IsoDuration

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
PREFIX = "KOBAN_OPTIONS_"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def no_tenants(tmp_path: Path) -> Path:
    return write(tmp_path / "tenants.toml", "")


def load_with(tmp_path: Path, tenants_toml: str, env: dict[str, str] | None = None) -> Settings:
    tenants_file = write(tmp_path / "tenants.toml", tenants_toml)
    return load_settings(config_dir=CONFIG_DIR, env=env or {}, tenants_file=tenants_file)


def error_of(tmp_path: Path, tenants_toml: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_with(tmp_path, tenants_toml, env)
    return str(info.value)


# --------------------------------------------------------------------------- defaults


def test_defaults_load(no_tenants: Path) -> None:
    settings = load_settings(config_dir=CONFIG_DIR, env={}, tenants_file=no_tenants)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.api_port == 8080
    assert settings.log_format == "json"
    assert settings.history_cap == 500
    assert settings.sweep_batch == 500
    assert settings.tenants == {}


def test_python_defaults_mirror_defaults_toml() -> None:
    document = tomllib.loads((CONFIG_DIR / "defaults.toml").read_text())
    tenant_defaults = document.pop("tenant_defaults")
    assert TenantSettings.model_validate(tenant_defaults) == TenantSettings()
    assert Settings.model_validate(document) == Settings()


def test_tenant_defaults_values() -> None:
    tenant = TenantSettings()
    assert tenant.zone == ZoneInfo("Europe/Paris")
    assert tenant.option_lifetime == IsoDuration(days=2)
    assert tenant.max_options_per_prospect == 3
    assert tenant.max_options_per_user is None
    assert tenant.rank2_clock == "own"
    assert tenant.max_prolongation is None
    assert tenant.expiring_notice == IsoDuration(seconds=7200)
    assert tenant.event_retention == IsoDuration(days=7)
    assert tenant.tombstone_ttl == IsoDuration(days=7)
    assert tenant.intent_grace == IsoDuration(seconds=120)
    assert tenant.intent_ttl == IsoDuration(seconds=900)
    assert tenant.drift_tolerance == IsoDuration(seconds=300)
    assert tenant.sandbox is False
    assert tenant.koban_base_url == "https://app-koban.com/api/v1"
    assert tenant.webhook_auth == {"header", "query"}
    assert tenant.koban_rate_limit_per_s == 5
    assert tenant.api_tokens == []
    assert tenant.koban_api_key is None


def test_example_tenants_load() -> None:
    settings = load_settings(config_dir=CONFIG_DIR, env={})
    assert set(settings.tenants) == {"demo", "acme"}
    demo, acme = settings.tenants["demo"], settings.tenants["acme"]
    assert demo.sandbox is True
    assert demo.koban_base_url == "http://127.0.0.1:8081/api/v1"
    assert demo.zone == ZoneInfo("Europe/Paris")  # inherited from [tenant_defaults]
    assert demo.intent_ttl == IsoDuration(seconds=900)
    assert acme.sandbox is False
    assert acme.koban_base_url == "https://app-koban.com/api/v1"
    assert acme.rank2_clock == "restart"
    assert acme.webhook_auth == {"header"}
    for tenant in settings.tenants.values():
        assert tenant.koban_api_key is None
        assert tenant.koban_user_key is None
        assert tenant.webhook_secret is None
        assert tenant.api_tokens == []


def test_tenants_file_from_environment(tmp_path: Path) -> None:
    tenants = write(tmp_path / "mine.toml", '[tenants.solo]\noption_lifetime = "PT6H"\n')
    settings = load_settings(config_dir=CONFIG_DIR, env={f"{PREFIX}TENANTS_FILE": str(tenants)})
    assert set(settings.tenants) == {"solo"}
    assert settings.tenants["solo"].option_lifetime == IsoDuration(seconds=6 * 3600)


def test_config_dir_from_environment(tmp_path: Path, no_tenants: Path) -> None:
    write(tmp_path / "defaults.toml", "api_port = 9999\n")
    env = {f"{PREFIX}CONFIG_DIR": str(tmp_path), f"{PREFIX}TENANTS_FILE": str(no_tenants)}
    assert load_settings(env=env).api_port == 9999


def test_tenant_file_may_override_tenant_defaults(tmp_path: Path) -> None:
    settings = load_with(tmp_path, "[tenant_defaults]\nsandbox = true\n[tenants.a]\n[tenants.b]\n")
    assert settings.tenants["a"].sandbox and settings.tenants["b"].sandbox


# --------------------------------------------------------------------------- environment


def test_env_override_wins(tmp_path: Path) -> None:
    env = {
        f"{PREFIX}REDIS_URL": "redis://10.0.0.5:6380/2",
        f"{PREFIX}API_PORT": "9090",
        f"{PREFIX}TENANTS__DEMO__OPTION_LIFETIME": "PT4H",
        f"{PREFIX}TENANTS__DEMO__SANDBOX": "false",
        f"{PREFIX}TENANTS__DEMO__WEBHOOK_AUTH": "header",
        f"{PREFIX}TENANTS__DEMO__MAX_PROLONGATION": "",  # empty: unset
        f"{PREFIX}TENANT_DEFAULTS__MAX_OPTIONS_PER_PROSPECT": "4",
    }
    settings = load_with(
        tmp_path,
        '[tenants.demo]\nsandbox = true\noption_lifetime = "P3D"\nmax_prolongation = "P7D"\n',
        env,
    )
    demo = settings.tenants["demo"]
    assert settings.redis_url == "redis://10.0.0.5:6380/2"
    assert settings.api_port == 9090
    assert demo.option_lifetime == IsoDuration(seconds=4 * 3600)
    assert demo.sandbox is False
    assert demo.webhook_auth == {"header"}
    assert demo.max_prolongation is None
    assert demo.max_options_per_prospect == 4


def test_env_tenant_name_with_dash_is_written_with_underscore(tmp_path: Path) -> None:
    env = {f"{PREFIX}TENANTS__ACME_PROD__WEBHOOK_SECRET": "s3cr3t-value"}
    settings = load_with(tmp_path, "[tenants.acme-prod]\n", env)
    secret = settings.tenants["acme-prod"].webhook_secret
    assert secret is not None and secret.get_secret_value() == "s3cr3t-value"


def test_env_for_undeclared_tenant_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[tenants.demo]\n", {f"{PREFIX}TENANTS__DMEO__KOBAN_API_KEY": "k"})
    assert message.startswith("tenants.dmeo:")
    assert "not declared" in message


def test_unrelated_env_variables_are_ignored(tmp_path: Path) -> None:
    env = {"REDIS_URL": "redis://elsewhere:1/0", "HOME": "/root", f"{PREFIX}SOMETHING_ELSE": "x"}
    assert load_with(tmp_path, "", env).redis_url == "redis://127.0.0.1:6379/0"


def test_settings_never_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{PREFIX}REDIS_URL", "redis://from-process:1/0")
    assert Settings().redis_url == "redis://127.0.0.1:6379/0"
    settings = load_settings(config_dir=CONFIG_DIR, env={})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


def test_dotenv_file_is_read_under_the_environment(tmp_path: Path, no_tenants: Path) -> None:
    dotenv = write(
        tmp_path / ".env",
        f"{PREFIX}REDIS_URL=redis://from-dotenv:1/0\n{PREFIX}API_PORT=7000\n",
    )
    settings = load_settings(
        config_dir=CONFIG_DIR,
        env={f"{PREFIX}API_PORT": "7001"},
        tenants_file=no_tenants,
        dotenv_path=dotenv,
    )
    assert settings.redis_url == "redis://from-dotenv:1/0"
    assert settings.api_port == 7001  # the environment wins over .env


def test_dotenv_in_working_directory_when_env_not_given(
    tmp_path: Path, no_tenants: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    write(tmp_path / ".env", f"{PREFIX}API_PORT=7002\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(config_dir=CONFIG_DIR, tenants_file=no_tenants)
    assert settings.api_port == 7002


# --------------------------------------------------------------------------- secrets

SECRET_VALUES = {
    "KOBAN_API_KEY": "api-key-0b7e4f",
    "KOBAN_USER_KEY": "user-key-91c2aa",
    "WEBHOOK_SECRET": "webhook-secret-5d13",
}
TOKEN_VALUE = "bearer-token-77aa31"


def secret_env() -> dict[str, str]:
    env = {f"{PREFIX}TENANTS__DEMO__{key}": value for key, value in SECRET_VALUES.items()}
    env[f"{PREFIX}TENANTS__DEMO__API_TOKENS"] = json.dumps(
        [
            {"token": TOKEN_VALUE, "scopes": ["read", "write", "admin"]},
            {"token": "partner-token-3321", "scopes": ["read"], "partner_guid": "P-1"},
        ]
    )
    return env


def test_secrets_from_env_are_secret_str_and_never_shown() -> None:
    settings = load_settings(config_dir=CONFIG_DIR, env=secret_env())
    demo = settings.tenants["demo"]
    assert isinstance(demo.koban_api_key, SecretStr)
    assert demo.koban_api_key.get_secret_value() == SECRET_VALUES["KOBAN_API_KEY"]
    assert demo.koban_user_key is not None
    assert demo.koban_user_key.get_secret_value() == SECRET_VALUES["KOBAN_USER_KEY"]
    assert demo.webhook_secret is not None
    assert demo.webhook_secret.get_secret_value() == SECRET_VALUES["WEBHOOK_SECRET"]
    assert demo.api_tokens[0] == ApiToken(
        token=SecretStr(TOKEN_VALUE), scopes={"read", "write", "admin"}, partner_guid=None
    )
    assert demo.api_tokens[1].partner_guid == "P-1"
    shown = [repr(settings), str(settings), settings.model_dump_json(), repr(demo), str(demo)]
    for text in shown:
        for value in [*SECRET_VALUES.values(), TOKEN_VALUE, "partner-token-3321"]:
            assert value not in text


@pytest.mark.parametrize(
    "toml",
    [
        '[tenants.demo]\nkoban_api_key = "abc"\n',
        '[tenants.demo]\nwebhook_secret = "abc"\n',
        '[tenants.demo]\nkoban_user_key = "abc"\n',
        '[[tenants.demo.api_tokens]]\ntoken = "abc"\nscopes = ["read"]\n',
        '[tenant_defaults]\nkoban_api_key = "abc"\n',
    ],
)
def test_secret_in_toml_is_refused(tmp_path: Path, toml: str) -> None:
    message = error_of(tmp_path, toml)
    assert "secrets come only from the environment" in message
    assert "abc" not in message
    assert message.split(":")[0] in {
        "tenants.demo.koban_api_key",
        "tenants.demo.webhook_secret",
        "tenants.demo.koban_user_key",
        "tenants.demo.api_tokens",
        "tenant_defaults.koban_api_key",
    }


def test_bad_api_tokens_never_echo_the_secret(tmp_path: Path) -> None:
    not_json = {f"{PREFIX}TENANTS__DEMO__API_TOKENS": f"[{{token: {TOKEN_VALUE}"}
    message = error_of(tmp_path, "[tenants.demo]\n", not_json)
    assert message.startswith("tenants.demo.api_tokens: not valid JSON")
    assert TOKEN_VALUE not in message
    bad_scope = {
        f"{PREFIX}TENANTS__DEMO__API_TOKENS": json.dumps(
            [{"token": TOKEN_VALUE, "scopes": ["read", "root"]}]
        )
    }
    message = error_of(tmp_path, "[tenants.demo]\n", bad_scope)
    assert message.startswith("tenants.demo.api_tokens[0].scopes")
    assert TOKEN_VALUE not in message


# --------------------------------------------------------------------------- errors


def test_bad_zone_names_the_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[tenants.demo]\nzone = "Asia/Kathmandu"\n')
    assert message.startswith("tenants.demo.zone: offset +05:45 is not a multiple of 30 minutes")
    assert str(tmp_path / "tenants.toml") in message  # where the value came from
    assert error_of(tmp_path, '[tenants.demo]\nzone = "Mars/Olympus"\n').startswith(
        "tenants.demo.zone: unknown time zone 'Mars/Olympus'"
    )


def test_bad_zone_from_env_names_the_key_and_variable(tmp_path: Path) -> None:
    env = {f"{PREFIX}TENANTS__DEMO__ZONE": "Asia/Kathmandu"}
    message = error_of(tmp_path, "[tenants.demo]\n", env)
    assert message.startswith("tenants.demo.zone: offset +05:45")
    assert f"{PREFIX}TENANTS__DEMO__ZONE" in message


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[tenants.demo]\noption_lifetime = "2 days"\n', "tenants.demo.option_lifetime"),
        ('[tenants.demo]\noption_lifetime = "PT0S"\n', "tenants.demo.option_lifetime"),
        ('[tenants.demo]\nmax_prolongation = "P"\n', "tenants.demo.max_prolongation"),
        ('[tenants.demo]\nintent_ttl = "-PT5M"\n', "tenants.demo.intent_ttl"),
        ('[tenants.demo]\nevent_retention = "P1M"\n', "tenants.demo.event_retention"),
        ("[tenants.demo]\noption_lifetime = 3\n", "tenants.demo.option_lifetime"),
    ],
)
def test_bad_duration_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    assert error_of(tmp_path, toml).startswith(f"{key}: ")


def test_bad_rank2_clock_names_the_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[tenants.acme]\nrank2_clock = "fresh"\n')
    assert message.startswith("tenants.acme.rank2_clock: ")
    assert "'own' or 'restart'" in message


@pytest.mark.parametrize("name", ["Demo", "a_b", "x" * 33, "a.b", "é"])
def test_bad_tenant_name_is_refused(tmp_path: Path, name: str) -> None:
    message = error_of(tmp_path, f'[tenants."{name}"]\n')
    assert message.startswith(f"tenants.{name}: a tenant name is")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[tenants.demo]\nmax_options_per_prospect = 0\n", "tenants.demo.max_options_per_prospect"),
        ("[tenants.demo]\nhistory_cap = -1\n", "tenants.demo.history_cap"),
        ("[tenants.demo]\nwebhook_auth = []\n", "tenants.demo.webhook_auth"),
        ('[tenants.demo]\nwebhook_auth = ["cookie"]\n', "tenants.demo.webhook_auth[0]"),
        ('[tenants.demo]\nkoban_base_url = "ftp://x"\n', "tenants.demo.koban_base_url"),
        ('[tenants.demo]\nzonee = "Europe/Paris"\n', "tenants.demo.zonee"),
        ('redis_url = "http://x"\n', "redis_url"),
        ('log_format = "xml"\n', "log_format"),
        ("api_port = 70000\n", "api_port"),
        ('[tenants]\ndemo = "x"\n', "tenants.demo"),
    ],
)
def test_other_bad_values_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    assert error_of(tmp_path, toml).startswith(f"{key}: ")


def test_bad_tenant_default_is_reported_once(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[tenant_defaults]\nzone = "Asia/Kathmandu"\n[tenants.a]\n')
    assert message.startswith("tenant_defaults.zone: offset +05:45")
    assert "tenants.a.zone" not in message


def test_several_errors_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_with(tmp_path, '[tenants.demo]\nrank2_clock = "x"\nzone = "Mars/X"\n')
    assert {line.split(":")[0] for line in info.value.problems} == {
        "tenants.demo.rank2_clock",
        "tenants.demo.zone",
    }
    # No pydantic traceback chained to it.
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(config_dir=CONFIG_DIR, env={}, tenants_file=tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_with(tmp_path, "[tenants.demo\n")
    with pytest.raises(ConfigError, match=r"no such \.env file"):
        load_settings(config_dir=CONFIG_DIR, env={}, dotenv_path=tmp_path / ".env")


def test_settings_are_frozen() -> None:
    settings = load_settings(config_dir=CONFIG_DIR, env={})
    with pytest.raises(ValueError):
        settings.tenants["demo"].sandbox = False
    copy = settings.model_copy(update={"api_port": 1234})
    assert copy.api_port == 1234 and settings.api_port == 8080
