"""The issue's scenario in process: a webhook answering 503 forever beside the Slack emulator.

Slack gets the alert while the webhook still fails (no head-of-line blocking); the webhook's failure
is heard on Slack as channel_failing; once the webhook answers again, the held ``failing`` and the
``recovered`` arrive there exactly once each, and Slack hears channel_recovered — counted at the
receivers (real sockets, the real slack-sdk client)."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from tests.alerts.helpers import FlakyHook, probe, run, running, settled
from tests.probes.helpers import serve
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.integrations import Integrations

pytestmark = pytest.mark.anyio


def titles(slack: SlackEmulator) -> list[str]:
    return [m["text"].splitlines()[0] for m in slack.messages("C0OPS")]


async def test_dead_webhook_delays_nothing_and_gets_everything_once(store: SqliteStore, slack: SlackEmulator) -> None:
    hook = FlakyHook(retry_after="0.05")
    async with serve(hook.app()) as base:
        settings = AlertsSettings.model_validate({
            "channels": {"hook": {"type": "webhook", "url": f"{base}/hook"},
                         "oncall": {"type": "slack", "channel": "C0OPS"}},
            "policies": {"default": {"channels": ["hook", "oncall"], "failure_threshold": 1}},
            "retry_delays": ["20ms", "50ms"], "channel_failing_after": "300ms"})
        mgr = AlertManager(store, settings, dashboard_url="http://canary.test", integrations=Integrations.model_validate(
            {"slack": {"bot_token": "xoxb-bot", "base_url": slack.base_url}}))
        p = probe("orders")
        async with running(mgr):
            await mgr.on_run_finished(p, run("orders", 1, "fail"))
            with anyio.fail_after(10):  # the bound: the Slack alert is not held behind the webhook
                await slack.wait_until(lambda: titles(slack)[:1] == ["orders is failing (FAIL)"], timeout_s=10)
            assert hook.accepted == [] and hook.down
            await slack.wait_until(lambda: "alert channel hook is failing" in titles(slack), timeout_s=10)
            await mgr.on_run_finished(p, run("orders", 2, "pass"))
            await slack.wait_until(lambda: "orders recovered" in titles(slack), timeout_s=10)
            [health] = [h for h in await mgr.channel_health() if h.channel == "hook"]
            assert health.failing and health.pending == 2  # the failing and the recovered, held
            attempts_while_down = hook.attempts
            assert attempts_while_down >= 2  # retried with backoff and Retry-After, not given up
            hook.down = False
            await slack.wait_until(lambda: "alert channel hook recovered" in titles(slack), timeout_s=10)
            await settled(mgr, 10)
    assert hook.keys() == ["orders:orders-r1:failing", "orders:orders-r1:recovered"]
    assert Counter(titles(slack)) == {"orders is failing (FAIL)": 1, "alert channel hook is failing": 1,
                                      "orders recovered": 1, "alert channel hook recovered": 1}
    failing_msg = next(m for m in slack.messages("C0OPS") if m["text"].startswith("alert channel hook is failing"))
    assert "http://canary.test/incidents" in str(failing_msg["blocks"])
    outcomes = Counter(e["data"]["outcome"] for e in await store.list_events("alert.attempt", limit=1000)
                       if e["data"]["channel"] == "hook")
    assert outcomes["sent"] == 2 and outcomes["retry"] == attempts_while_down and outcomes["failed"] == 0
