"""The dashboard and API of the real daemon on a loopback socket (the browser fixture is tests/fixtures/browser.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.web.daemon import RunningDaemon, running_daemon
from tracecanary.daemon.app import DaemonControl


@dataclass
class Site:
    base: str
    running: RunningDaemon

    @property
    def control(self) -> DaemonControl:
        return self.running.control


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with running_daemon(tmp_path, alert_channel=True) as running:
        yield Site(running.base, running)
