from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.demo.emulators.slack import SlackEmulator


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/alerts.db"


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_url)
    await s.open()
    yield s
    await s.aclose()


@pytest.fixture
async def slack() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(channels=["C0ALERT", "C0OPS"], retry_after_s=0) as em:
        yield em


@pytest.fixture
async def sentry() -> AsyncIterator[SentryEmulator]:
    async with SentryEmulator() as em:
        yield em
