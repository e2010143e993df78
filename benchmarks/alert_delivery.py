"""Alert delivery beside a dead channel: how late is the healthy channel, and how soon is the failure heard.

    python benchmarks/alert_delivery.py [--quick]

A webhook answering 503 forever sits beside the Slack emulator (real slack-sdk client, real sockets).
N probes fail at once; figures: the delay from the failing run to each Slack alert (goal: not held
behind the webhook — well under 10 s), the time until ``channel_failing`` reaches Slack (goal ≤ 90 s
with the default ``channel_failing_after: 60s``; --quick scales it to 3 s), and, once the webhook
answers again, how many deliveries it got per idempotency key (goal: exactly 1).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.integrations import Integrations
from tracecanary.probes.base import ProbeSpec


class DeadHook:
    def __init__(self) -> None:
        self.down = True
        self.keys: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.down:
            return web.json_response({"error": "down"}, status=503)
        self.keys.append(request.headers.get("Idempotency-Key", ""))
        return web.json_response({"ok": True})


def failing_run(pid: str) -> RunRecord:
    now_ns = time.time_ns()
    return RunRecord(run_id=f"{pid}-r1", probe_id=pid, kind="http", attempt=1, first_run_id=f"{pid}-r1",
                     trace_id="0" * 32, started_ns=now_ns, status=RunStatus.FINISHED, finished_ns=now_ns,
                     verdict=Verdict.FAIL, final=True)


async def measure(n_probes: int, failing_after: str) -> dict[str, Any]:
    hook = DeadHook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        async with SlackEmulator(channels=["C0OPS"], retry_after_s=0) as slack:
            with tempfile.TemporaryDirectory() as tmp:
                store = SqliteStore(f"sqlite:///{Path(tmp) / 'bench.db'}")
                await store.open()
                settings = AlertsSettings.model_validate({
                    "channels": {"hook": {"type": "webhook", "url": url},
                                 "oncall": {"type": "slack", "channel": "C0OPS"}},
                    "policies": {"default": {"channels": ["hook", "oncall"], "failure_threshold": 1}},
                    "channel_failing_after": failing_after})
                mgr = AlertManager(store, settings, integrations=Integrations.model_validate(
                    {"slack": {"bot_token": "xoxb-bot", "base_url": slack.base_url}}))
                try:
                    return await _scenario(mgr, slack, hook, n_probes)
                finally:
                    await store.aclose()
    finally:
        await runner.cleanup()


async def _scenario(mgr: AlertManager, slack: SlackEmulator, hook: DeadHook, n: int) -> dict[str, Any]:
    arrived: dict[str, float] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(mgr.run)
        t0 = time.monotonic()
        for i in range(n):
            pid = f"p{i}"
            await mgr.on_run_finished(ProbeSpec.model_validate({"id": pid, "kind": "http"}), failing_run(pid))
        with anyio.fail_after(300):
            while len(arrived) < n + 1:
                for m in slack.messages("C0OPS"):
                    title = m["text"].splitlines()[0]
                    arrived.setdefault(title, time.monotonic() - t0)
                await anyio.sleep(0.01)
        hook.down = False
        with anyio.fail_after(300):
            await mgr.wait_idle()
        tg.cancel_scope.cancel()
    delays = sorted(v for k, v in arrived.items() if k.endswith("is failing (FAIL)"))
    return {"alert_p50_s": statistics.median(delays), "alert_max_s": delays[-1],
            "channel_failing_s": arrived["alert channel hook is failing"],
            "hook_per_key": Counter(Counter(hook.keys).values()), "hook_total": len(hook.keys)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 probes, channel_failing_after 3s")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the retries' log lines would bury the figures
    n, after = (20, "3s") if args.quick else (100, "60s")
    r = anyio.run(measure, n, after)
    print(f"{n} probes failing; webhook answering 503 forever beside Slack; channel_failing_after={after}")
    print(f"  slack alert delay        p50 {r['alert_p50_s'] * 1000:.0f} ms   max {r['alert_max_s'] * 1000:.0f} ms"
          "   (goal: not held behind the webhook; < 10 s)")
    print(f"  channel_failing on slack {r['channel_failing_s']:.1f} s   (goal: <= 90 s with 60s; "
          "<= threshold + 30 s)")
    print(f"  webhook after recovery   {r['hook_total']} deliveries, per idempotency key: {dict(r['hook_per_key'])}"
          "   (goal: every key exactly once)")


if __name__ == "__main__":
    main()
