"""The Slack channel through the AlertManager against the Slack emulator (real slack-sdk client)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from tests.alerts.helpers import Clock, idle, probe, running, settled
from tests.alerts.helpers import run as run_of
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.store.base import RunRecord
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.integrations import Integrations

pytestmark = pytest.mark.anyio


def settings(**policy: Any) -> AlertsSettings:
    return AlertsSettings.model_validate({
        "channels": {"oncall": {"type": "slack", "channel": "C0ALERT", "mention": "<!here>"}},
        "policies": {"default": {"channels": ["oncall"], **policy}},
    })


def run(pid: str, i: int, verdict: str, *, final: bool = True) -> RunRecord:
    return run_of(pid, i, verdict, final=final, trace_link="https://acme.sentry.io/explore/traces/trace/{trace_id}")


def manager(store: SqliteStore, slack: SlackEmulator, s: AlertsSettings, clock: Clock) -> AlertManager:
    return AlertManager(
        store, s, clock=clock, retry_delays_s=(0.01, 0.02), dashboard_url="http://canary.test/",
        integrations=Integrations.model_validate({"slack": {"bot_token": "xoxb-bot", "base_url": slack.base_url}}),
    )


def text_of(msg: dict[str, Any]) -> str:
    return json.dumps(msg["blocks"])


async def test_firing_message_then_threaded_recovery(store: SqliteStore, slack: SlackEmulator) -> None:
    p = probe("orders-webhook")
    async with running(manager(store, slack, settings(), Clock())) as mgr:
        await mgr.on_run_finished(p, run(p.id, 1, "fail", final=False))  # a retry follows: not a verdict
        await mgr.on_run_finished(p, run(p.id, 2, "fail"))
        assert await idle(mgr) and slack.messages("C0ALERT") == []
        await mgr.on_run_finished(p, run(p.id, 3, "fail"))
        await slack.wait_until(lambda: len(slack.messages("C0ALERT")) == 1)
        await mgr.on_run_finished(p, run(p.id, 4, "pass"))
        await slack.wait_until(lambda: len(slack.messages("C0ALERT")) == 2)
        await settled(mgr)
        attempts = await store.list_events("alert.attempt")

    firing, recovery = slack.messages("C0ALERT")
    assert firing["text"].startswith("<!here> orders-webhook is failing (FAIL)")
    blocks = text_of(firing)
    for needle in ('span \\"fetch-gex-data\\": status ERROR, expected OK', "expected `200` \\u00b7 observed `502`",
                   "*Run duration*\\n1.84s", f"trace/{3:032x}|Trace in sentry>", "http://canary.test/runs/orders-webhook-r3",
                   "incident `orders-webhook:orders-webhook-r2`", "*Consecutive failures*\\n2"):
        assert needle in blocks, needle
    assert firing["metadata"]["event_payload"]["incident_id"] == "orders-webhook:orders-webhook-r2"
    assert recovery["thread_ts"] == firing["ts"] and "recovered" in recovery["text"]
    assert [(a["data"]["channel"], a["data"]["outcome"], a["data"]["event"]) for a in reversed(attempts)] == [
        ("oncall", "sent", "failing"), ("oncall", "sent", "recovered")]


async def test_restart_mid_incident_sends_no_duplicate_and_threads_recovery(
    db_url: str, slack: SlackEmulator
) -> None:
    p, clock = probe("orders"), Clock()
    first = SqliteStore(db_url)
    await first.open()
    async with running(manager(first, slack, settings(remind_every="10m"), clock)) as mgr:
        for i in (1, 2):
            await mgr.on_run_finished(p, run(p.id, i, "fail"))
        await slack.wait_until(lambda: len(slack.messages("C0ALERT")) == 1)
        await settled(mgr)
    await first.aclose()

    second = SqliteStore(db_url)  # a new process: nothing in memory, everything from the store
    await second.open()
    async with running(manager(second, slack, settings(remind_every="10m"), clock)) as mgr:
        await mgr.on_run_finished(p, run(p.id, 2, "fail"))  # the same run again (redelivered hook)
        clock.now_s += 300
        await mgr.on_run_finished(p, run(p.id, 3, "fail"))  # still failing, no reminder due yet
        clock.now_s += 400
        await mgr.on_run_finished(p, run(p.id, 4, "fail"))  # 11m 40s in: the first reminder
        await mgr.on_run_finished(p, run(p.id, 5, "pass"))
        await slack.wait_until(lambda: len(slack.messages("C0ALERT")) == 3)
        await settled(mgr)
        alerts = await mgr.list_alerts()
    await second.aclose()

    firing, reminder, recovery = slack.messages("C0ALERT")
    assert "orders is failing" in firing["text"] and "still failing" in reminder["text"]
    assert reminder["thread_ts"] == recovery["thread_ts"] == firing["ts"]
    assert [n.data["dedup_key"] for n in reversed(alerts.notifications)] == [
        "orders:orders-r1:failing", "orders:orders-r1:reminder:1", "orders:orders-r1:recovered"]
    assert alerts.incidents == []


async def test_two_replicas_announce_an_incident_once(db_url: str, slack: SlackEmulator) -> None:
    p = probe("orders")
    stores = [SqliteStore(db_url), SqliteStore(db_url)]  # two processes, one database
    for st in stores:
        await st.open()
    a, b = (manager(st, slack, settings(), Clock()) for st in stores)

    async def feed(mgr: AlertManager) -> None:
        for i in (1, 2):
            await mgr.on_run_finished(p, run(p.id, i, "fail"))

    async with running(a), running(b):
        async with anyio.create_task_group() as tg:  # both judge the same final runs (a rebalance)
            tg.start_soon(feed, a)
            tg.start_soon(feed, b)
        await settled(a)
        await settled(b)
    claims = await stores[0].kv_list("alerts.claims")
    for st in stores:
        await st.aclose()
    assert len(slack.messages("C0ALERT")) == 1 and list(claims) == ["orders:orders-r1:failing"]


async def test_rate_limited_post_is_retried_by_the_client(store: SqliteStore) -> None:
    async with SlackEmulator(channels=["C0ALERT"], retry_after_s=0, storms={"chat.postMessage": 1}) as slack:
        p = probe("orders")
        async with running(manager(store, slack, settings(failure_threshold=1), Clock())) as mgr:
            await mgr.on_run_finished(p, run(p.id, 1, "error"))
            await slack.wait_until(lambda: len(slack.messages("C0ALERT")) == 1)
            await settled(mgr)
        assert slack.state.rate_limited["chat.postMessage"] == 1
    outcomes = [e["data"]["outcome"] for e in await store.list_events("alert.attempt")]
    assert outcomes == ["sent"]


async def test_invalid_token_is_a_permanent_failure(store: SqliteStore, slack: SlackEmulator) -> None:
    s = AlertsSettings.model_validate({
        "channels": {"oncall": {"type": "slack", "channel": "C0ALERT", "token": "xoxb-revoked",
                                "base_url": slack.base_url}},
        "policies": {"default": {"channels": ["oncall"], "failure_threshold": 1}}})
    counted: list[tuple[str, str]] = []
    mgr = AlertManager(store, s, retry_delays_s=(0.01,), on_attempt=lambda c, o: counted.append((c, o)))
    async with running(mgr):
        await mgr.on_run_finished(probe("orders"), run("orders", 1, "fail"))
        await settled(mgr)
    [attempt] = await store.list_events("alert.attempt")
    assert attempt["data"]["outcome"] == "failed" and "invalid_auth" in attempt["data"]["error"]
    assert counted == [("oncall", "failed")]
    [health] = await mgr.channel_health()
    assert health.consecutive_failures == 1 and health.failing  # a permanent error: failing at once
