"""The dashboard and API of the real daemon on a loopback socket (the browser fixture is tests/fixtures/browser.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.web.daemon import RunningDaemon, running_daemon
from tracecanary.daemon.app import DaemonControl
from tracecanary.demo.emulators.slack import SlackEmulator


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


@dataclass
class AlertingSite(Site):
    slack: SlackEmulator

    def alerts(self) -> list[dict[str, Any]]:
        """The alert messages in the on-call channel (threads included), oldest first."""
        return self.slack.messages("C0ONCALL")


@pytest.fixture
async def alerting(tmp_path: Path) -> AsyncIterator[AlertingSite]:
    """The daemon with shop-slack alerting on the Slack emulator (threshold 1, reminders every 100ms)."""
    async with SlackEmulator(channels=["C0ONCALL"], retry_after_s=0) as slack, \
            running_daemon(tmp_path, slack_url=slack.base_url, extra_probe=True) as running:
        yield AlertingSite(running.base, running, slack)
