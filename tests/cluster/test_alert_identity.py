"""Alert identity is the incident: any number of replicas on one store announce it once.

Several alert managers (one per replica, each with its own store connection) see the same failing final
run at the same moment, then the same passing one: the Slack emulator gets one ``failing`` message and
one ``recovered`` reply threaded under it — on SQLite and on PostgreSQL. The claim is the store's unique
key ``(alerts.claims, <probe>:<first failing run id>:<event>)``: the incident's start identifies it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from tests.alerts.helpers import Clock, probe, run, running, settled
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.store.base import Store
from tracecanary.daemon.store.urls import open_store
from tracecanary.demo.emulators.slack import SlackEmulator

pytestmark = pytest.mark.anyio
REPLICAS = 3
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": lambda request, tmp: f"sqlite:///{tmp / 'tc.db'}",
    "postgresql": lambda request, tmp: str(request.getfixturevalue("postgres_url")),
}


@pytest.fixture(params=sorted(BACKENDS))
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Store]]:
    url = BACKENDS[request.param](request, tmp_path)
    opened: list[Store] = []
    try:
        for _ in range(REPLICAS):
            s = open_store(url)
            await s.open()
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            await s.aclose()


async def test_replicas_announce_an_incident_and_its_recovery_once(stores: list[Store]) -> None:
    async with SlackEmulator(channels=["C0OPS"], retry_after_s=0) as slack, AsyncExitStack() as stack:
        settings = AlertsSettings.model_validate({
            "channels": {"oncall": {"type": "slack", "channel": "C0OPS", "token": "xoxb-bot",
                                    "base_url": slack.base_url}},
            "policies": {"default": {"channels": ["oncall"], "failure_threshold": 1}}})
        managers = [await stack.enter_async_context(running(AlertManager(s, settings, clock=Clock())))
                    for s in stores]
        p = probe()
        for verdict, i in (("fail", 1), ("fail", 2), ("pass", 3)):
            async with anyio.create_task_group() as tg:  # every replica sees the run at once
                for mgr in managers:
                    tg.start_soon(mgr.on_run_finished, p, run("orders", i, verdict))
            for mgr in managers:
                await settled(mgr)
        messages = slack.messages("C0OPS")
    failing, recovered = messages
    assert failing["text"].startswith("orders is failing")
    assert recovered["thread_ts"] == failing["ts"] and "recovered" in recovered["text"]
