"""Subscription settings: defaults, the key from the environment only, bad keys named."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.bootstrap import secret_box
from service.config import ConfigError, load_settings
from service.outbound.signing import SecretBox

KEY = SecretBox.generate_key()


def test_tenant_defaults_and_the_key_from_the_environment() -> None:
    settings = load_settings(env={"KOBAN_OPTIONS_SUBSCRIPTION_KEY": KEY})
    tenant = next(iter(settings.tenants.values()))
    delays = [d.fixed_seconds() for d in tenant.delivery_retry_schedule]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert tenant.disable_after.fixed_seconds() == 5 * 86400
    assert tenant.delivery_timeout.fixed_seconds() == 10
    assert tenant.delivery_log_size == 1000
    assert not tenant.allow_private_targets and not tenant.allow_http_targets
    box = secret_box(settings)
    assert box is not None and box.open(SecretBox(KEY).seal("s")) == "s"
    assert secret_box(load_settings(env={})) is None


def test_a_bad_key_is_named_without_its_value() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env={"KOBAN_OPTIONS_SUBSCRIPTION_KEY": "hunter2-not-fernet"})
    assert "subscription_key" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_the_key_is_refused_in_a_toml_file(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "config"
    (tmp_path / "defaults.toml").write_text(
        f'subscription_key = "{KEY}"\n' + (config / "defaults.toml").read_text()
    )
    (tmp_path / "tenants.example.toml").write_text((config / "tenants.example.toml").read_text())
    with pytest.raises(ConfigError) as refused:
        load_settings(tmp_path, env={})
    assert "environment" in str(refused.value) and KEY not in str(refused.value)


def test_a_schedule_entry_must_be_elapsed_time() -> None:
    env = {"KOBAN_OPTIONS_TENANT_DEFAULTS__DISABLE_AFTER": "P1M"}
    with pytest.raises(ConfigError) as refused:
        load_settings(env=env)
    assert "disable_after" in str(refused.value)
