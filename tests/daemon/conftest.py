from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.daemon.harness import Target
from tracecanary.demo.emulators.slack import SlackEmulator


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """The system under test on 127.0.0.1: /ok, /slow (held until released), /fail (500)."""
    t = Target()
    runner = web.AppRunner(t.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    t.port = runner.addresses[0][1]
    yield t
    t.release.set()
    await runner.cleanup()


@pytest.fixture
async def slack() -> AsyncIterator[SlackEmulator]:
    """The Slack emulator the daemon's alert channel posts to (channel C0OPS)."""
    async with SlackEmulator(channels=["C0OPS"], retry_after_s=0) as em:
        yield em
