"""The lag monitor times the loop's own iterations: nothing wakes an idle loop, stalls are still named.

The signal sampler needs ``SIGALRM``, which pytest-timeout holds inside a test: those cases run in a child
process (as the daemon does), whose result comes back as JSON on stdout. A child stopped with SIGSTOP
across its timer is the real thing the monitor calls a process that woke late.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import anyio
import anyio.lowlevel
import pytest

from tracecanary.daemon.observe.lag import IDLE, LagMonitor, SignalSampler, Stall

pytestmark = pytest.mark.anyio

CHILD = r"""
import json, signal, sys, time
import anyio
from tracecanary.daemon.observe.lag import LagMonitor, SignalSampler

def block_the_loop(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

async def main(what):
    stalls = []
    got = anyio.Event()
    def on_stall(stall):
        stalls.append(stall)
        got.set()
    available = SignalSampler.available()
    monitor = LagMonitor(interval_s=0.005, threshold_s=0.05, on_stall=on_stall)
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        if what == "block":
            block_the_loop(0.3)
        else:
            print("ready", flush=True)
            await anyio.sleep(1.0)  # the parent stops this process across the timer's due time
        with anyio.fail_after(10):
            await got.wait()
        tg.cancel_scope.cancel()
    stall = max(stalls, key=lambda s: s.lag_s)
    print(json.dumps({"available": available, "mode": monitor.mode, "lag_s": stall.lag_s, "cause": stall.cause(),
                      "handler_restored": signal.getsignal(signal.SIGALRM) == signal.SIG_DFL,
                      "timer": signal.getitimer(signal.ITIMER_REAL)}), flush=True)

anyio.run(main, sys.argv[1])
"""


def _child(what: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, what], stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_on_the_main_thread_a_timer_signal_names_the_blocking_step_and_is_given_back() -> None:
    got = _result(_child("block"))
    assert got["available"] is True and got["mode"] == "selector"
    assert float(got["lag_s"]) >= 0.25  # type: ignore[arg-type]
    assert "block_the_loop" in str(got["cause"]), got["cause"]
    assert got["handler_restored"] is True and got["timer"] == [0.0, 0.0]


def test_a_process_that_woke_late_is_a_stall_named_as_contention() -> None:
    proc = _child("stop")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGSTOP)  # the fault: the host does not run the process across its timer
    try:
        time.sleep(2.0)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    got = _result(proc)
    assert got["cause"] == IDLE and float(got["lag_s"]) >= 0.5, got  # type: ignore[arg-type]


async def test_an_idle_loop_is_not_woken_yet_every_period_is_recorded() -> None:
    lags: list[float] = []
    monitor = LagMonitor(interval_s=0.005, threshold_s=0.05, observe=lags.append)
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        assert monitor.mode == "selector"
        await anyio.lowlevel.checkpoint()
        iterations, before = monitor.iterations, time.perf_counter()
        await anyio.sleep(0.3)  # nothing else runs on this loop: one wake-up, for this timer
        waited = time.perf_counter() - before
        await anyio.lowlevel.checkpoint()  # one more iteration ends: the ticks of the wait are recorded
        woke = monitor.iterations - iterations
        tg.cancel_scope.cancel()
    assert woke <= 4, f"the monitor woke the idle loop: {woke} iterations in {waited:.2f}s"
    assert len(lags) >= int(0.3 / 0.005) - 2  # derived ticks: one per period of the wait


async def test_stall_callbacks_run_on_the_loop_without_waiting_for_the_next_wake_up() -> None:
    stalled = anyio.Event()
    stalls: list[Stall] = []

    def on_stall(stall: Stall) -> None:
        stalls.append(stall)
        stalled.set()  # an asyncio future callback: the loop must not block in select before running it

    monitor = LagMonitor(interval_s=0.005, threshold_s=0.05, on_stall=on_stall, sample=False)
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
        with anyio.fail_after(5):
            await stalled.wait()
        tg.cancel_scope.cancel()
    assert stalls[0].lag_s >= 0.15 and stalls[0].where is None and monitor.stalls == 1


def test_signal_sampler_is_not_taken_while_someone_else_holds_sigalrm() -> None:
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        assert not SignalSampler.available()
    finally:
        signal.signal(signal.SIGALRM, previous)
