"""Alert delivery in a real `tracecanary run` subprocess: kill -9 with notifications in the outbox then
restart (each delivered once), an incident resolved while the daemon was down (closed with one
recovery on start), and SIGHUP changing a policy's channels and threshold (the next incident follows
the new policy; the API token and retention follow too; a restart-only setting is named in the log)."""

from __future__ import annotations

import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.alerts.helpers import FlakyHook
from tests.daemon.support import DaemonProcess, Target, eventually
from tests.probes.helpers import serve
from tracecanary.demo.emulators.slack import SlackEmulator

pytestmark = pytest.mark.anyio


@pytest.fixture
async def target() -> AsyncIterator[tuple[Target, str]]:
    t = Target()
    async with serve(t.app()) as base:
        yield t, base


def suite(target: str, hook: str, *, policy: str, probes: tuple[str, ...] = ("orders", "billing"),
          daemon: str = "", slack: str = "") -> str:
    """Probes without a schedule (they run when the test asks, through the API)."""
    text = f"""
daemon:
  shutdown_grace: 2s
{daemon}
alerts:
  channels:
    hook: {{type: webhook, url: "{hook}/hook"}}
{slack}
  policies:
    default: {policy}
  retry_delays: [50ms, 200ms]
probes:
"""
    for pid in probes:
        text += f"""
  - id: {pid}
    kind: http
    timeout: 5s
    request: {{url: "{target}/check?p={pid}"}}
"""
    return text


async def finished_runs(d: DaemonProcess, probe_id: str) -> int:
    status, body = await d.get(f"/api/probes/{probe_id}/runs")
    assert status == 200, body
    return sum(1 for r in body["runs"] if r["status"] == "finished")


async def run_and_wait(d: DaemonProcess, probe_id: str) -> None:
    before = await finished_runs(d, probe_id)
    await d.run_now(probe_id)
    await eventually(lambda: _more(d, probe_id, before), what=f"a finished run of {probe_id}")


async def _more(d: DaemonProcess, probe_id: str, before: int) -> bool:
    return await finished_runs(d, probe_id) > before


async def test_kill9_with_the_outbox_full_then_restart_delivers_each_once(
        tmp_path: Path, target: tuple[Target, str]) -> None:
    t, base = target
    hook = FlakyHook()  # 503 forever, until the test brings it back
    async with serve(hook.app()) as hook_url:
        config = tmp_path / "suite.yaml"
        config.write_text(suite(base, hook_url, policy="{channels: [hook], failure_threshold: 1}"))
        d = DaemonProcess(config, tmp_path / "tc.db")
        d.start()
        try:
            await d.ready()
            t.healthy = False
            await run_and_wait(d, "orders")
            await run_and_wait(d, "billing")
            t.healthy = True
            await run_and_wait(d, "orders")  # orders recovers: its recovery queues behind its failing
            await eventually(lambda: _announced(d, 3), what="three notifications announced")
            await eventually(lambda: hook.attempts >= 2, what="the dead webhook retried")
            assert hook.accepted == []
            await d.kill9()  # the three wait in the outbox

            hook.down = False
            d.start()
            await d.ready()
            await eventually(lambda: len(hook.accepted) >= 3, what="the outbox delivered after the restart")
            await eventually(lambda: _queue_empty(d), what="the outbox drained")
            assert len(await d.notifications()) == 3  # nothing announced a second time
            d.signal(signal.SIGTERM)
            assert await d.wait_exit() == 0
        finally:
            d.stop()
    assert _keys_by_event(hook) == Counter({("orders", "failing"): 1, ("billing", "failing"): 1,
                                            ("orders", "recovered"): 1})
    assert len(set(hook.keys())) == 3  # three distinct idempotency keys
    orders = [b["event"] for b in hook.accepted if b["probe"]["id"] == "orders"]
    assert orders == ["failing", "recovered"]  # in order: the recovery never overtakes its firing


def _keys_by_event(hook: FlakyHook) -> Counter[tuple[str, str]]:
    return Counter((b["probe"]["id"], b["event"]) for b in hook.accepted)


async def _announced(d: DaemonProcess, n: int) -> bool:
    return len(await d.notifications()) >= n


async def _queue_empty(d: DaemonProcess) -> bool:
    status, body = await d.get("/api/alerts")
    return status == 200 and body["queue"]["pending"] == 0


async def test_incident_resolved_while_down_is_closed_on_start(tmp_path: Path, target: tuple[Target, str]) -> None:
    t, base = target
    hook = FlakyHook(down=False)
    async with serve(hook.app()) as hook_url:
        config = tmp_path / "suite.yaml"
        config.write_text(suite(base, hook_url, policy="{channels: [hook], failure_threshold: 1}"))
        d = DaemonProcess(config, tmp_path / "tc.db")
        d.start()
        try:
            await d.ready()
            t.healthy = False
            await run_and_wait(d, "orders")
            await run_and_wait(d, "billing")
            await eventually(lambda: len(hook.accepted) == 2, what="both failing alerts")
            d.signal(signal.SIGTERM)
            assert await d.wait_exit() == 0

            # while the daemon is down, orders passes (a `check` pass records into the same store) and
            # billing is removed from the configuration
            t.healthy = True
            with anyio.fail_after(120):  # the target answers from this event loop: run it async
                proc = await anyio.run_process(
                    [sys.executable, "-m", "tracecanary.daemon.cli.main", "check", str(config), "--probe", "orders",
                     "--store", f"sqlite:///{d.db}", "--otlp-http", "none", "--otlp-grpc", "none"], check=False)
            assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
            config.write_text(suite(base, hook_url, policy="{channels: [hook], failure_threshold: 1}",
                                    probes=("orders",)))
            d.start()
            await d.ready()
            await eventually(lambda: len(hook.accepted) == 4, what="both recoveries")
            await eventually(lambda: _queue_empty(d), what="the outbox drained")
            status, body = await d.get("/api/alerts")
            assert status == 200 and body["alerts"] == []  # no open incident left
            d.signal(signal.SIGTERM)
            assert await d.wait_exit() == 0
        finally:
            d.stop()
    assert _keys_by_event(hook) == Counter({("orders", "failing"): 1, ("billing", "failing"): 1,
                                            ("orders", "recovered"): 1, ("billing", "recovered"): 1})
    [billing] = [b for b in hook.accepted if b["probe"]["id"] == "billing" and b["event"] == "recovered"]
    assert "removed from the configuration" in billing["detail"]


async def test_sighup_changes_policy_channels_threshold_token_and_retention(
        tmp_path: Path, target: tuple[Target, str]) -> None:
    t, base = target
    hook = FlakyHook(down=False)
    async with serve(hook.app()) as hook_url, SlackEmulator(channels=["C0OPS"], retry_after_s=0) as slack:
        slack_channel = f'    oncall: {{type: slack, channel: C0OPS, token: xoxb-bot, base_url: "{slack.base_url}"}}'
        config = tmp_path / "suite.yaml"
        config.write_text(suite(base, hook_url, policy="{channels: [hook], failure_threshold: 5}",
                                slack=slack_channel))
        d = DaemonProcess(config, tmp_path / "tc.db")
        d.start()
        try:
            await d.ready()
            status, _ = await d.post("/api/silences", {"probes": ["nothing-*"], "start": "2030-01-01T00:00:00Z",
                                                       "end": "2030-01-02T00:00:00Z"})
            assert status == 201  # no token configured yet

            config.write_text(suite(
                base, hook_url, policy="{channels: [oncall], failure_threshold: 2}", slack=slack_channel,
                daemon="  api_token: s3cret\n  retention: {max_age: 7d}\n  buffer: {max_spans: 5000}"))
            d.signal(signal.SIGHUP)
            await eventually(lambda: "config reloaded" in d.log_text(), what="the reload")
            log = d.log_text()
            assert "these changes need a restart to apply: daemon.buffer" in log
            assert "retention_max_age_s=604800" in log and "api_token=set" in log

            status, _ = await d.post("/api/silences", {"probes": ["nothing-*"], "start": "2030-01-01T00:00:00Z",
                                                       "end": "2030-01-02T00:00:00Z"})
            assert status == 401  # the reloaded token guards writes now
            t.healthy = False
            await run_and_wait_token(d, "orders", "s3cret")
            assert slack.messages("C0OPS") == []  # one failure: below the new threshold of 2
            await run_and_wait_token(d, "orders", "s3cret")
            await slack.wait_until(lambda: len(slack.messages("C0OPS")) == 1, timeout_s=30)
            d.signal(signal.SIGTERM)
            assert await d.wait_exit() == 0
        finally:
            d.stop()
        [msg] = slack.messages("C0OPS")
    assert msg["text"].startswith("orders is failing (FAIL)")
    assert {"type": "mrkdwn", "text": "*Consecutive failures*\n2"} in msg["blocks"][1]["fields"]
    assert hook.accepted == []  # the old policy's channel got nothing


async def run_and_wait_token(d: DaemonProcess, probe_id: str, token: str) -> None:
    before = await finished_runs(d, probe_id)
    await d.run_now(probe_id, token)
    await eventually(lambda: _more(d, probe_id, before), what=f"a finished run of {probe_id}")
