"""The daemon as a real subprocess: runs recorded, SIGHUP reload, SIGTERM drain, kill -9 + restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.daemon.harness import DaemonProcess as Daemon
from tests.daemon.harness import Target, eventually

pytestmark = pytest.mark.anyio


def suite(target: Target, *, extra_probe: bool = False, grace: str = "5s") -> str:
    base = f"http://127.0.0.1:{target.port}"
    text = f"""
daemon:
  shutdown_grace: {grace}
probes:
  - id: fast
    kind: http
    every: 1s
    jitter: 0%
    timeout: 5s
    request: {{url: "{base}/ok?p=fast"}}
  - id: slow
    kind: http
    every: 1s
    jitter: 0%
    timeout: 60s
    request: {{url: "{base}/slow"}}
"""
    if extra_probe:
        text += f"""
  - id: fresh
    kind: http
    every: 1s
    jitter: 0%
    request: {{url: "{base}/ok?p=fresh"}}
"""
    return text


def on_grid(times: list[float], interval_s: float = 1.0, tolerance_s: float = 0.35) -> bool:
    return all(abs(t - round(t / interval_s) * interval_s) < tolerance_s for t in times)


async def test_reload_drain_and_crash_recovery(tmp_path: Path, target: Target) -> None:
    config = tmp_path / "suite.yaml"
    config.write_text(suite(target))
    d = Daemon(config, tmp_path / "tc.db")
    d.start()
    try:
        await d.ready()
        # runs are recorded, on the schedule's grid
        await eventually(lambda: sum(r["status"] == "finished" for r in d.runs("fast")) >= 2, what="fast runs")
        assert all(r["verdict"] == "pass" for r in d.runs("fast") if r["status"] == "finished")
        assert on_grid(target.times("fast")), target.times("fast")

        # SIGHUP with a changed suite: a new probe appears; unchanged ones keep phase and in-flight runs
        await eventually(lambda: target.slow_waiting == 1, what="slow run in flight")
        in_flight = [r for r in d.runs("slow") if r["status"] == "running"]
        assert len(in_flight) == 1
        config.write_text(suite(target, extra_probe=True))
        d.signal(signal.SIGHUP)
        await eventually(lambda: any(r["status"] == "finished" for r in d.runs("fresh")), what="new probe ran")
        before = len(target.times("fast"))
        await eventually(lambda: len(target.times("fast")) >= before + 2, what="fast after reload")
        assert on_grid(target.times("fast")), target.times("fast")
        target.release.set()
        await eventually(lambda: d.runs("slow")[0]["status"] == "finished", what="in-flight run finished")
        row = d.runs("slow")[0]
        assert row["run_id"] == in_flight[0]["run_id"] and row["verdict"] == "pass"
        target.release = asyncio.Event()

        # a broken suite on SIGHUP is rejected and the old one kept
        config.write_text("probes:\n  - id: Bad_Id\n    kind: http\n")
        d.signal(signal.SIGHUP)
        await eventually(lambda: "reload rejected" in d.log.read_text(), what="reload rejected")
        assert "probes[Bad_Id].id: invalid probe id" in d.log.read_text()
        n = len(target.times("fresh"))
        await eventually(lambda: len(target.times("fresh")) > n, what="old config still runs")
        config.write_text(suite(target))

        # SIGTERM mid-run: firing stops, the in-flight run drains and finishes, exit 0
        await eventually(lambda: target.slow_waiting == 1, what="slow run in flight")
        d.signal(signal.SIGTERM)
        await eventually(lambda: "shutdown signal=SIGTERM" in d.log.read_text(), what="drain started")
        target.release.set()
        assert await d.wait_exit() == 0
        assert not [r for r in d.runs() if r["status"] == "running"]
        assert d.runs("slow")[-1]["status"] == "finished"
        target.release = asyncio.Event()
    finally:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()


async def test_drain_past_grace_aborts_and_kill9_restart_aborts(tmp_path: Path, target: Target) -> None:
    config = tmp_path / "suite.yaml"
    config.write_text(suite(target, grace="300ms"))
    d = Daemon(config, tmp_path / "tc.db")
    d.start()
    try:
        await d.ready()
        await eventually(lambda: target.slow_waiting == 1, what="slow run in flight")
        d.signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
        slow = d.runs("slow")[-1]
        assert slow["status"] == "aborted" and slow["abort_reason"] == "shutdown" and slow["verdict"] is None

        # kill -9 mid-run; the restarted daemon records the lost run as aborted, not lost
        d.start()
        await d.ready()
        await eventually(lambda: target.slow_waiting >= 1 and
                         any(r["status"] == "running" for r in d.runs("slow")), what="slow in flight")
        running = [r["run_id"] for r in d.runs("slow") if r["status"] == "running"]
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGKILL)
        await d.wait_exit()
        d.start()
        await d.ready()
        rows = {r["run_id"]: r for r in d.runs("slow")}
        for rid in running:
            assert rows[rid]["status"] == "aborted" and rows[rid]["abort_reason"] == "daemon restart"
        target.release.set()
        d.signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
    finally:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()


async def test_sigterm_right_after_the_servers_bind_drains_and_exits_0(tmp_path: Path, target: Target) -> None:
    """Signal handling is in place before anything listens: an early SIGTERM is a clean stop, not a kill."""
    config = tmp_path / "suite.yaml"
    config.write_text(suite(target))
    d = Daemon(config, tmp_path / "tc.db")
    d.start()
    try:
        await d.ready("/healthz")
        d.signal(signal.SIGTERM)
        target.release.set()
        assert await d.wait_exit() == 0, d.log.read_text()[-2000:]
    finally:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
