"""Webhook and Sentry channels, retries, the outbox, the bounded queue, escalation and silences."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan

from tests.alerts.helpers import Clock, WebhookReceiver, probe, run, running, settled
from tests.probes.helpers import serve
from tracecanary.daemon.alerts.base import Notification
from tracecanary.daemon.alerts.delivery import QueueStats
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.alerts.sentry import event_id
from tracecanary.daemon.alerts.silences import SilenceSettings
from tracecanary.daemon.alerts.webhook import WebhookChannelConfig, render_body, verify
from tracecanary.daemon.observe.telemetry import add_span_sink, setup_telemetry
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.integrations import Integrations

pytestmark = pytest.mark.anyio
SECRET = "It's a Secret to Everybody"


def webhook_settings(url: str, **extra: Any) -> AlertsSettings:
    return AlertsSettings.model_validate({
        "channels": {"hook": {"type": "webhook", "url": url, "secret": SECRET, **extra}},
        "policies": {"default": {"channels": ["hook"], "failure_threshold": 1}},
    })


def test_signature_matches_the_github_test_vector() -> None:
    body = b"Hello, World!"
    assert verify(SECRET, body, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    assert not verify(SECRET, body + b" ", "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


async def test_signed_webhook_retries_5xx_and_429_then_delivers(store: SqliteStore) -> None:
    rx = WebhookReceiver(SECRET, script=[(503, {}), (429, {"Retry-After": "0"})])
    async with serve(rx.app()) as base:
        provider = setup_telemetry(None, own_receiver_addrs=[])
        spans: list[ReadableSpan] = []
        add_span_sink(provider, spans.append)
        mgr = AlertManager(store, webhook_settings(f"{base}/hook"), retry_delays_s=(0.01, 0.01, 0.01),
                           dashboard_url="http://canary.test", tracer=provider.get_tracer("tracecanary.alerts"))
        async with running(mgr):
            await mgr.on_run_finished(probe("orders", tags=("payments",)), run("orders", 1, "fail"))
            await settled(mgr)
    assert rx.bad_signatures == 0 and len(rx.received) == 3
    [body] = rx.accepted
    assert body["event"] == "failing" and body["version"] == 1
    assert body["dedup_key"] == "orders:orders-r1:failing"
    assert body["probe"] == {"id": "orders", "kind": "http", "tags": ["payments"]}
    assert body["run"]["trace_id"] == f"{1:032x}" and body["run"]["duration_s"] == pytest.approx(1.84)
    assert body["findings"][1] == {"type": "response", "path": "expect.response.status",
                                   "message": "status 502, expected 200", "expected": 200, "observed": 502}
    assert body["dashboard_url"] == "http://canary.test/runs/orders-r1"
    headers = rx.received[-1][0]
    assert headers["X-Tracecanary-Delivery"] == "orders:orders-r1:failing" and headers["X-Tracecanary-Event"] == "failing"
    outcomes = [e["data"]["outcome"] for e in reversed(await store.list_events("alert.attempt"))]
    assert outcomes == ["retry", "retry", "sent"]
    assert [(sp.name, sp.status.status_code.name, sp.attributes["tracecanary.alert.attempt"]) for sp in spans] == [
        ("alert.deliver hook", "ERROR", 1), ("alert.deliver hook", "ERROR", 2), ("alert.deliver hook", "UNSET", 3)]


async def test_4xx_is_not_retried(store: SqliteStore) -> None:
    rx = WebhookReceiver(SECRET, script=[(404, {})])
    async with serve(rx.app()) as base:
        mgr = AlertManager(store, webhook_settings(f"{base}/hook"), retry_delays_s=(0.01, 0.01))
        async with running(mgr):
            await mgr.on_run_finished(probe("orders"), run("orders", 1, "fail"))
            await settled(mgr)
    assert len(rx.received) == 1
    [attempt] = await store.list_events("alert.attempt")
    assert attempt["data"]["outcome"] == "failed" and attempt["data"]["error"].startswith("webhook 404")


async def test_body_template_is_sandboxed_jinja(store: SqliteStore) -> None:
    rx = WebhookReceiver(SECRET)
    template = '{"text": {{ (n.title ~ " " ~ body.links.sentry) | tojson }}, "n": {{ body.findings | length }}}'
    async with serve(rx.app()) as base:
        mgr = AlertManager(store, webhook_settings(f"{base}/hook", body_template=template))
        async with running(mgr):
            await mgr.on_run_finished(probe("orders"), run("orders", 1, "fail", trace_link="https://s.example/{trace_id}"))
            await settled(mgr)
    assert rx.accepted == [{"text": f"orders is failing (FAIL) https://s.example/{1:032x}", "n": 2}]
    evil = WebhookChannelConfig(url="http://x", body_template="{{ n.__class__.__mro__ }}")
    note = Notification(event="failing", dedup_key="k", incident_id="i", probe_id="p")
    with pytest.raises(Exception, match=r"unsafe|undefined|access"):
        render_body(evil, note)


async def test_outbox_survives_a_crash_before_delivery(db_url: str) -> None:
    rx = WebhookReceiver(SECRET)
    async with serve(rx.app()) as base:
        first = SqliteStore(db_url)
        await first.open()
        crashed = AlertManager(first, webhook_settings(f"{base}/hook"))  # its worker never ran
        await crashed.on_run_finished(probe("orders"), run("orders", 1, "fail"))
        await first.aclose()
        second = SqliteStore(db_url)
        await second.open()
        mgr = AlertManager(second, webhook_settings(f"{base}/hook"))
        async with running(mgr):
            await mgr.on_run_finished(probe("orders"), run("orders", 2, "fail"))  # no new incident
            await settled(mgr)
        await second.aclose()
    assert [b["dedup_key"] for b in rx.accepted] == ["orders:orders-r1:failing"]


async def test_full_queue_drops_the_oldest_and_counts_it(store: SqliteStore) -> None:
    s = webhook_settings("http://127.0.0.1:9/hook").model_copy(update={"queue_size": 2})
    counted: list[tuple[str, str]] = []
    mgr = AlertManager(store, s, on_attempt=lambda c, o: counted.append((c, o)))
    for pid in ("a", "b", "c"):  # no worker: the queue fills up
        await mgr.on_run_finished(probe(pid), run(pid, 1, "fail"))
    assert mgr.outbox.stats() == QueueStats(pending=2, dropped=1) and counted == [("hook", "dropped")]
    assert sorted(await store.kv_list("alerts.outbox")) == ["b:b-r1:failing|hook", "c:c-r1:failing|hook"]
    [dropped] = await store.list_events("alert.dropped")
    assert dropped["data"]["dedup_key"] == "a:a-r1:failing"


async def test_sentry_event_per_incident(store: SqliteStore, sentry: SentryEmulator) -> None:
    s = AlertsSettings.model_validate({
        "channels": {"sentry": {"type": "sentry", "environment": "prod"}},
        "policies": {"default": {"channels": ["sentry"], "failure_threshold": 1}}})
    mgr = AlertManager(store, s, integrations=Integrations.model_validate({"sentry": {"dsn": sentry.dsn()}}))
    link = f"{sentry.base_url}/organizations/acme/explore/traces/trace/{{trace_id}}"
    async with running(mgr):
        for i, verdict in enumerate(["fail", "pass", "error"], start=1):
            await mgr.on_run_finished(probe("orders"), run("orders", i, verdict, trace_link=link))
        await settled(mgr)
    errors = sentry.store.errors
    assert len(errors) == 2  # one per incident; recoveries are not sent to Sentry
    first = errors[0].payload
    assert first["fingerprint"] == ["orders"] and first["level"] == "error" and first["environment"] == "prod"
    assert first["tags"] == {"probe": "orders", "kind": "http", "verdict": "fail", "incident": "orders:orders-r1"}
    assert first["contexts"]["trace"]["trace_id"] == f"{1:032x}" == errors[0].trace_id
    assert first["contexts"]["tracecanary"]["links"]["sentry"].endswith(f"/trace/{1:032x}")
    assert 'span "fetch-gex-data": status ERROR' in first["logentry"]["formatted"]
    assert errors[1].payload["tags"]["verdict"] == "error"
    assert first["event_id"] == event_id("orders:orders-r1:failing")  # Sentry keeps one event per id: idempotent
    sent = [e["data"]["outcome"] for e in await store.list_events("alert.attempt")]
    assert sent == ["sent", "sent"]


async def test_failing_channel_raises_its_own_alert_elsewhere(
    store: SqliteStore, slack: SlackEmulator, sentry: SentryEmulator
) -> None:
    s = AlertsSettings.model_validate({
        "channels": {"oncall": {"type": "slack", "channel": "C0OPS"},
                     "sentry": {"type": "sentry", "dsn": sentry.dsn().replace(sentry.public_key, "revoked")}},
        "policies": {"default": {"channels": ["sentry"], "failure_threshold": 1}}})
    mgr = AlertManager(store, s, retry_delays_s=(0.01,), integrations=Integrations.model_validate(
        {"slack": {"bot_token": "xoxb-bot", "base_url": slack.base_url}}))
    async with running(mgr):
        for pid in ("a", "b", "c"):
            await mgr.on_run_finished(probe(pid), run(pid, 1, "fail"))
        await slack.wait_until(lambda: len(slack.messages("C0OPS")) == 1)
        await settled(mgr)
        health = {h.channel: h for h in await mgr.channel_health()}
    [msg] = slack.messages("C0OPS")
    assert msg["text"].startswith("alert channel sentry is failing")
    assert "delivery failed with a permanent error: sentry 401" in json.dumps(msg["blocks"])  # a 4xx: at once
    assert "http://canary.test/incidents" not in json.dumps(msg["blocks"])  # no dashboard_url configured
    assert health["sentry"].failing and health["sentry"].consecutive_failures == 3
    assert health["oncall"].consecutive_failures == 0 and sentry.store.errors == []


async def test_api_silence_records_instead_of_sending(store: SqliteStore) -> None:
    rx = WebhookReceiver(SECRET)
    clock = Clock(datetime(2026, 3, 9, 13, 30, tzinfo=UTC).timestamp())  # 09:30 New York (EDT)
    async with serve(rx.app()) as base:
        mgr = AlertManager(store, webhook_settings(f"{base}/hook"), clock=clock)
        window = SilenceSettings(tags=["payments"], cron="0 9 * * 1-5", duration="1h",
                                 timezone="America/New_York", comment="deploy window")
        silence = await mgr.add_silence(window, created_by="alice")
        async with running(mgr):
            p = probe("orders", tags=("payments",))
            await mgr.on_run_finished(p, run("orders", 1, "fail"))
            [listed] = await mgr.list_silences()
            assert listed.id == silence.id and listed.active and listed.created_by == "alice"
            clock.now_s += 3600  # 10:30: the window is over and the probe still fails
            await mgr.on_run_finished(p, run("orders", 2, "fail"))
            await settled(mgr)
            assert await mgr.remove_silence(silence.id) and not await mgr.remove_silence(silence.id)
            assert await mgr.list_silences() == []
    [held] = await store.list_events("alert.silenced")
    assert held["data"]["silence_id"] == silence.id and held["data"]["event"] == "failing"
    assert [b["dedup_key"] for b in rx.accepted] == ["orders:orders-r1:failing"]


async def test_retry_after_is_honoured(store: SqliteStore) -> None:
    rx = WebhookReceiver(SECRET, script=[(429, {"Retry-After": "1"})])
    async with serve(rx.app()) as base:
        mgr = AlertManager(store, webhook_settings(f"{base}/hook"), retry_delays_s=(0.01,))
        async with running(mgr):
            started = anyio.current_time()
            await mgr.on_run_finished(probe("orders"), run("orders", 1, "fail"))
            await settled(mgr)
            elapsed = anyio.current_time() - started
    assert len(rx.accepted) == 1 and elapsed >= 0.95  # the server's 1 s, not our 10 ms backoff


async def test_channel_recovery_is_announced_in_the_failure_thread(store: SqliteStore, slack: SlackEmulator) -> None:
    """5xx for longer than channel_failing_after: failing on the other channel (dashboard link to
    /incidents); the held notification is delivered once the channel answers, then the recovery."""
    rx = WebhookReceiver(SECRET, script=[(500, {}), (500, {}), (500, {})])
    async with serve(rx.app()) as base:
        s = AlertsSettings.model_validate({
            "channels": {"hook": {"type": "webhook", "url": f"{base}/hook", "secret": SECRET},
                         "oncall": {"type": "slack", "channel": "C0OPS"}},
            "policies": {"default": {"channels": ["hook"], "failure_threshold": 1}},
            "retry_delays": ["100ms"], "channel_failing_after": "150ms"})
        mgr = AlertManager(store, s, dashboard_url="http://canary.test", integrations=Integrations.model_validate(
            {"slack": {"bot_token": "xoxb-bot", "base_url": slack.base_url}}))
        async with running(mgr):
            for pid in ("a", "b", "c"):
                await mgr.on_run_finished(probe(pid), run(pid, 1, "fail"))
            await settled(mgr)
            health = {h.channel: h for h in await mgr.channel_health()}
    failing, recovered = slack.messages("C0OPS")
    assert failing["text"].startswith("alert channel hook is failing")
    assert "http://canary.test/incidents" in json.dumps(failing["blocks"])
    assert "deliveries failing for 0.15s" in json.dumps(failing["blocks"])
    assert recovered["text"].startswith("alert channel hook recovered") and recovered["thread_ts"] == failing["ts"]
    assert [b["probe"]["id"] for b in rx.accepted] == ["a", "b", "c"]  # held, in order, once each
    assert not health["hook"].failing and health["hook"].consecutive_failures == 0
