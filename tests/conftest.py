"""Fixtures every layer may use; nothing here touches Redis or the network (the Redis
fixtures live in tests/integration/conftest.py, so unit tests cannot reach them)."""

from __future__ import annotations

import os

import pytest

from statecharts.model import Rules
from tests.support.rules import make_rules

# Fails a test whose output holds a name, an e-mail or a phone (docs/personal-data.md).
pytest_plugins = ["tests.support.personal_data_guard"]


@pytest.fixture
def rules() -> Rules:
    return make_rules()


def pytest_report_header(config: pytest.Config) -> str | None:
    if os.environ.get("KOBAN_TESTS_NO_CLUSTER") == "1":
        return "KOBAN_TESTS_NO_CLUSTER=1: the [cluster] runs of cluster-marked tests are left out"
    return None
