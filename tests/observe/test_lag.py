"""The event-loop lag monitor: a blocking step is measured, named and warned about; GC pauses are attributed.

Steps here block the loop on purpose (a busy loop of 300 ms: the thing under test), far above the
thresholds, so a loaded machine only makes them longer.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import aiohttp
import anyio
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.engine import Engine, Overrides
from tracecanary.daemon.observe.lag import GcPauses, LagMonitor, Stall

pytestmark = pytest.mark.anyio
LOGGER = "tracecanary.observe.lag"


def _block_the_loop(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_a_blocking_step_is_measured_named_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    lags: list[float] = []
    stalls: list[Stall] = []
    stalled = anyio.Event()

    def on_stall(stall: Stall) -> None:
        stalls.append(stall)
        stalled.set()

    monitor = LagMonitor(interval_s=0.005, threshold_s=0.05, observe=lags.append, on_stall=on_stall)
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        _block_the_loop(0.3)
        with anyio.fail_after(10):
            await stalled.wait()
        tg.cancel_scope.cancel()
    stall = max(stalls, key=lambda s: s.lag_s)
    assert stall.lag_s >= 0.25 and max(lags) == monitor.max_lag_s >= 0.25
    assert stall.where is not None and "test_lag._block_the_loop" in stall.where, stall.where
    assert "_block_the_loop" in stall.cause()
    [record] = [r for r in caplog.records if r.name == LOGGER][:1]
    assert record.levelno == logging.WARNING and "event loop stalled" in record.getMessage()
    assert "_block_the_loop" in record.getMessage() and "threshold_ms=50" in record.getMessage()


async def test_warnings_are_rate_limited_and_say_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    send, receive = anyio.create_memory_object_stream[Stall](100)
    monitor = LagMonitor(interval_s=0.005, threshold_s=0.05, warn_interval_s=3600, on_stall=send.send_nowait,
                         sample=False)
    stalls: list[Stall] = []
    async with anyio.create_task_group() as tg, send, receive:
        await tg.start(monitor.run)
        for _ in range(2):
            _block_the_loop(0.2)
            with anyio.fail_after(10):
                stalls.append(await receive.receive())
        tg.cancel_scope.cancel()
    assert all(s.lag_s >= 0.15 and s.where is None for s in stalls)  # sampling off
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1  # the second stall came within warn_interval_s


def test_gc_pauses_are_recorded_by_generation_and_named_as_the_cause() -> None:
    with GcPauses() as pauses:
        gc.collect(0)
        gc.collect(2)
        got = pauses.take()
    assert [p.generation for p in got][-2:] == [0, 2] and pauses.total_s >= sum(p.duration_s for p in got)
    assert pauses.take() == []
    assert Stall(lag_s=0.1, gc_s=0.08, gc_generation=2, where="x.y:1").cause() == "gc gen2"
    assert Stall(lag_s=0.1, gc_s=0.01, gc_generation=0, where="x.y:1").cause() == "x.y:1"
    assert Stall(lag_s=0.1, gc_s=0.0, gc_generation=None, where=None).cause() == "unknown (not sampled)"


async def test_the_engine_exports_the_lag_histogram_and_warns(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"probes": [{"id": "p", "kind": "http", "request": {"url": "http://127.0.0.1:9/"}}]}))
    engine = Engine(load_config(path), Overrides(listen="127.0.0.1:0", otlp_http="127.0.0.1:0", otlp_grpc="none"),
                    gc_tuning=False, lag_threshold_s=0.05, lag_interval_s=0.005)
    async with engine.started(temporary_store=True):
        stalled = anyio.Event()
        engine.lag_monitor.on_stall = lambda stall: stalled.set()
        _block_the_loop(0.3)
        with anyio.fail_after(10):
            await stalled.wait()
        async with aiohttp.ClientSession() as session, session.get(f"http://{engine.addresses['api']}/metrics") as r:
            text = await r.text()
    samples = {(s.name, s.labels.get("le")): s.value for fam in text_string_to_metric_families(text)
               for s in fam.samples if s.name.startswith("tracecanary_event_loop_lag_seconds")}
    assert samples[("tracecanary_event_loop_lag_seconds_count", None)] >= 1
    assert samples[("tracecanary_event_loop_lag_seconds_bucket", "0.25")] < samples[
        ("tracecanary_event_loop_lag_seconds_bucket", "+Inf")]  # the 300 ms stall
    assert any("_block_the_loop" in r.getMessage() for r in caplog.records if r.name == LOGGER)
