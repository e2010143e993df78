"""Retry chains always end, against a real ``tracecanary run`` process and the Slack emulator.

A failed attempt whose retry is pending is stored ``final=0`` with ``retry_at_ns``. kill -9 during
the delay, then a restart: the chain resumes at its due time (or, restarted too late, ends with the
reason); kill -9 during the retry attempt: the chain ends; SIGTERM during the delay: the chain ends
with "shutdown during retry delay" — unless the retry can finish within the grace, then it runs.
Either way the failure reaches the alert policy and the alert is on Slack.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon.harness import DaemonProcess, Target, eventually
from tracecanary.demo.emulators.slack import SlackEmulator

pytestmark = pytest.mark.anyio
PENDING_SQL = ("SELECT run_id FROM runs r WHERE final = 0 AND NOT EXISTS (SELECT 1 FROM runs n "
               "WHERE n.first_run_id = r.first_run_id AND n.attempt > r.attempt AND n.status != 'aborted')")


def write_suite(path: Path, target: Target, slack: SlackEmulator, *, delay: str, timeout: str = "2s",
                grace: str = "3s", route: str = "fail?p=flaky") -> Path:
    """One paused probe (it runs when asked) that always fails, with one retry; alerts at the first failure."""
    path.write_text(yaml.safe_dump({
        "daemon": {"shutdown_grace": grace},
        "integrations": {"slack": {"bot_token": "xoxb-bot", "base_url": slack.base_url}},
        "alerts": {"channels": {"ops": {"type": "slack", "channel": "C0OPS"}},
                   "policies": {"default": {"channels": ["ops"], "failure_threshold": 1}}},
        "probes": [{"id": "flaky", "kind": "http", "every": "1h", "pause": True, "timeout": timeout,
                    "retries": {"count": 1, "delay": delay}, "request": {"url": f"{target.url}/{route}"}}],
    }))
    return path


def row(d: DaemonProcess, run_id: str) -> sqlite3.Row | None:
    return next((r for r in d.runs("flaky") if r["run_id"] == run_id), None)


def chain(d: DaemonProcess, first_run_id: str) -> list[sqlite3.Row]:
    return sorted((r for r in d.runs("flaky") if r["first_run_id"] == first_run_id), key=lambda r: r["attempt"])


def pending(d: DaemonProcess) -> list[str]:
    with sqlite3.connect(d.db) as con:
        return [r[0] for r in con.execute(PENDING_SQL)]


def alerted(slack: SlackEmulator) -> bool:
    return any(m["text"].startswith("flaky is failing") for m in slack.messages("C0OPS"))


async def start_failing_chain(d: DaemonProcess) -> sqlite3.Row:
    """Run the probe now; wait until attempt 1 failed and its retry is pending; its row."""
    await d.ready()
    status, body = await d.post("/api/probes/flaky/run")
    assert status == 202, body
    run_id = body["run_id"]

    def waiting() -> bool:
        r = row(d, run_id)
        return r is not None and r["status"] == "finished" and r["final"] == 0

    await eventually(waiting, what="attempt 1 failed, retry pending")
    first = row(d, run_id)
    assert first is not None and first["verdict"] == "fail" and first["retry_at_ns"] is not None
    return first


def kill9(d: DaemonProcess) -> None:
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=10)


def findings(r: sqlite3.Row) -> list[dict[str, Any]]:
    return list(json.loads(r["findings"]))


async def test_kill9_during_the_retry_delay_then_restart_resumes_the_chain(
        tmp_path: Path, target: Target, slack: SlackEmulator) -> None:
    d = DaemonProcess(write_suite(tmp_path / "suite.yaml", target, slack, delay="4s"), tmp_path / "tc.db")
    d.start()
    try:
        first = await start_failing_chain(d)
        kill9(d)
        assert pending(d) == [first["run_id"]]  # recorded as pending, not lost
        d.start()
        await d.ready()
        await eventually(lambda: len(chain(d, first["run_id"])) == 2
                         and chain(d, first["run_id"])[1]["status"] == "finished", 30, "the resumed attempt 2 finished")
        a1, a2 = chain(d, first["run_id"])
        assert a2["attempt"] == 2 and a2["status"] == "finished" and a2["verdict"] == "fail"
        assert a2["started_ns"] >= a1["retry_at_ns"] - 50_000_000  # at its due time, not before
        assert "resuming retry chain probe=flaky" in d.log_text()
        await eventually(lambda: alerted(slack), 30, "the failure alerted on Slack")
        d.signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
        assert pending(d) == []
    finally:
        d.stop_now()


async def test_kill9_then_a_late_restart_ends_the_chain_with_its_reason_and_alerts(
        tmp_path: Path, target: Target, slack: SlackEmulator) -> None:
    d = DaemonProcess(write_suite(tmp_path / "suite.yaml", target, slack, delay="4s", timeout="1s"),
                      tmp_path / "tc.db")
    d.start()
    try:
        first = await start_failing_chain(d)
        kill9(d)
        # Down for longer than the probe's period (paused: retry delay + timeout = 5s) past the due time.
        late_ns = first["retry_at_ns"] + 5_500_000_000
        await eventually(lambda: time.time_ns() > late_ns, 30, "the restart is late")
        d.start()
        await d.ready()
        await eventually(lambda: chain(d, first["run_id"])[0]["final"] == 1, 30, "attempt 1 final")
        [ended] = chain(d, first["run_id"])  # no attempt 2
        assert ended["verdict"] == "fail"
        assert ended["retry_aborted"].startswith("the daemon was not running when the retry was due")
        assert ended["retry_at_ns"] is None
        assert any(f["type"] == "retry.not_run" for f in findings(ended))
        await eventually(lambda: alerted(slack), 30, "the failure alerted on Slack")
        assert pending(d) == []
        d.signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
    finally:
        d.stop_now()


async def test_sigterm_during_a_long_retry_delay_ends_the_chain_and_alerts_before_exit(
        tmp_path: Path, target: Target, slack: SlackEmulator) -> None:
    d = DaemonProcess(write_suite(tmp_path / "suite.yaml", target, slack, delay="30s"), tmp_path / "tc.db")
    d.start()
    try:
        first = await start_failing_chain(d)
        d.signal(signal.SIGTERM)
        assert await d.wait_exit() == 0, d.log_text()[-3000:]
        [ended] = chain(d, first["run_id"])
        assert ended["final"] == 1 and ended["retry_aborted"] == "shutdown during retry delay"
        assert alerted(slack)  # delivered during the drain, before the process exited
        assert pending(d) == []
    finally:
        d.stop_now()


async def test_sigterm_when_the_retry_fits_in_the_grace_runs_it(
        tmp_path: Path, target: Target, slack: SlackEmulator) -> None:
    d = DaemonProcess(write_suite(tmp_path / "suite.yaml", target, slack, delay="1s", grace="15s"),
                      tmp_path / "tc.db")
    d.start()
    try:
        first = await start_failing_chain(d)
        d.signal(signal.SIGTERM)
        assert await d.wait_exit() == 0, d.log_text()[-3000:]
        a1, a2 = chain(d, first["run_id"])
        assert (a1["final"], a2["final"], a2["attempt"], a2["verdict"]) == (0, 1, 2, "fail")
        assert a2["retry_aborted"] is None
        assert alerted(slack)
        assert pending(d) == []
    finally:
        d.stop_now()


async def test_kill9_during_the_retry_attempt_then_restart_ends_the_chain_and_alerts(
        tmp_path: Path, target: Target, slack: SlackEmulator) -> None:
    d = DaemonProcess(write_suite(tmp_path / "suite.yaml", target, slack, delay="200ms", timeout="60s",
                                  route="fail-then-hold"), tmp_path / "tc.db")
    d.start()
    try:
        await d.ready()
        status, body = await d.post("/api/probes/flaky/run")
        assert status == 202, body
        run_id = body["run_id"]
        await eventually(lambda: target.slow_waiting == 1 and len(chain(d, run_id)) == 2, what="attempt 2 held")
        kill9(d)
        d.start()
        await d.ready()
        await eventually(lambda: chain(d, run_id)[0]["final"] == 1, 30, "attempt 1 final")
        a1, a2 = chain(d, run_id)
        assert (a2["status"], a2["abort_reason"]) == ("aborted", "daemon restart")
        assert a1["verdict"] == "fail" and a1["retry_aborted"] == "attempt 2 was aborted: daemon restart"
        await eventually(lambda: alerted(slack), 30, "the failure alerted on Slack")
        target.release.set()
        d.signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
        assert pending(d) == []
    finally:
        d.stop_now()
