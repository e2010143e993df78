"""Shared fixtures. Area fixtures live in tests/fixtures/ and are registered here."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.kafka", "tests.fixtures.sentry", "tests.fixtures.sentry_service", "tests.fixtures.browser",
    "tests.fixtures.postgres",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
