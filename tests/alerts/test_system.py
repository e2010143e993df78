"""System incidents (alerts about tracecanary itself) through the manager, against a real Slack
emulator and a real webhook receiver; also with the results store closed under it."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from tests.alerts.helpers import Clock, WebhookReceiver, running
from tests.probes.helpers import serve
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.integrations import Integrations

pytestmark = pytest.mark.anyio
SECRET = "system-incidents"


def manager(store: SqliteStore, slack: SlackEmulator, hook: str, clock: Clock | None = None,
            **kwargs: Any) -> AlertManager:
    settings = AlertsSettings.model_validate({
        "channels": {"oncall": {"type": "slack", "channel": "C0OPS"},
                     "hook": {"type": "webhook", "url": f"{hook}/hook", "secret": SECRET}},
    })
    return AlertManager(store, settings, clock=clock or Clock(), retry_delays_s=(0.01,),
                        dashboard_url="http://canary.test",
                        integrations=Integrations.model_validate({"slack": {"bot_token": "xoxb-bot",
                                                                            "base_url": slack.base_url}}),
                        **kwargs)


async def until(predicate: Any, timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.01)


async def test_raise_once_update_detail_clear_once(store: SqliteStore, slack: SlackEmulator) -> None:
    rx = WebhookReceiver(SECRET)
    async with serve(rx.app()) as hook, running(manager(store, slack, hook)) as mgr:
        mgr.raise_system("store", "results store writes fail", "disk I/O error")
        mgr.raise_system("store", "results store writes fail", "database is locked")  # no re-announce
        [inc] = mgr.system_incidents()
        assert (inc.key, inc.summary, inc.detail) == ("store", "results store writes fail", "database is locked")
        await until(lambda: len(rx.accepted) == 1 and len(slack.messages("C0OPS")) == 1)
        mgr.clear_system("store", "writes succeed again")
        mgr.clear_system("store")  # not open any more: no-op
        assert mgr.system_incidents() == []
        await until(lambda: len(rx.accepted) == 2 and len(slack.messages("C0OPS")) == 2)
        await anyio.sleep(0.2)  # anything extra would have arrived by now
    assert [b["event"] for b in rx.accepted] == ["system_failing", "system_recovered"]
    failing, recovered = rx.accepted
    assert failing["title"] == "tracecanary: results store writes fail"
    assert failing["dashboard_url"] == "http://canary.test/incidents"
    assert failing["incident"]["id"] == recovered["incident"]["id"] == f"system:store:{inc.opened_ns}"
    assert [m["text"].splitlines()[0] for m in slack.messages("C0OPS")] == [
        "tracecanary: results store writes fail", "tracecanary recovered: results store writes fail"]


async def test_works_while_the_store_is_closed(store: SqliteStore, slack: SlackEmulator) -> None:
    rx = WebhookReceiver(SECRET)
    async with serve(rx.app()) as hook, running(manager(store, slack, hook)) as mgr:
        await store.aclose()  # every store call now raises
        mgr.raise_system("store", "results store is closed", "ProgrammingError")
        await until(lambda: len(rx.accepted) == 1 and len(slack.messages("C0OPS")) == 1)
        mgr.clear_system("store")
        await until(lambda: len(rx.accepted) == 2 and len(slack.messages("C0OPS")) == 2)
    assert [b["event"] for b in rx.accepted] == ["system_failing", "system_recovered"]
    assert json.dumps(rx.accepted[0]).count("results store is closed") >= 1


async def test_open_incident_survives_a_restart_and_is_not_announced_twice(
        store: SqliteStore, slack: SlackEmulator) -> None:
    rx = WebhookReceiver(SECRET)
    async with serve(rx.app()) as hook:
        async with running(manager(store, slack, hook)) as mgr:
            mgr.raise_system("telemetry", "no spans from the collector")
            await until(lambda: len(rx.accepted) == 1)
        # a new process: the incident is reloaded; raised again it is not re-announced
        async with running(manager(store, slack, hook, system_reconcile_s=60.0)) as mgr:
            assert [i.key for i in mgr.system_incidents()] == ["telemetry"]
            mgr.raise_system("telemetry", "no spans from the collector")
            mgr.clear_system("telemetry")
            await until(lambda: len(rx.accepted) == 2)
        # a reloaded incident nobody raises again is cleared with its recovery
        async with running(manager(store, slack, hook)) as mgr:
            assert mgr.system_incidents() == []
    assert [b["event"] for b in rx.accepted] == ["system_failing", "system_recovered"]
    assert len(slack.messages("C0OPS")) == 2


async def test_unraised_incident_is_reconciled_after_restart(store: SqliteStore, slack: SlackEmulator) -> None:
    rx = WebhookReceiver(SECRET)
    async with serve(rx.app()) as hook:
        async with running(manager(store, slack, hook)) as mgr:
            mgr.raise_system("telemetry", "no spans from the collector")
            await until(lambda: len(rx.accepted) == 1)
        async with running(manager(store, slack, hook, system_reconcile_s=0.05)) as mgr:
            await until(lambda: len(rx.accepted) == 2)
            assert mgr.system_incidents() == []
    assert [b["event"] for b in rx.accepted] == ["system_failing", "system_recovered"]
