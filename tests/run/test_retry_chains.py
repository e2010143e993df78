"""Retry chains through the real Runner and SQLite store against a local failing target: a pending
retry is stored with its due time, the drain ends (or lets run) waiting chains, a cancelled wait ends
its chain, a chain left by a previous process resumes at its due time, and when a chain resumes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.probes.helpers import serve
from tracecanary.daemon.app import chain_end_reason
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.store.base import RunRecord
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.http import HttpProbe

pytestmark = pytest.mark.anyio


@dataclass
class Finished:
    """A run hook recording every finished run it is told about (as the alert manager is)."""

    seen: list[tuple[str, bool]] = field(default_factory=list)
    """(run id, final) as each call saw it."""

    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        return None

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        self.seen.append((run.run_id, run.final))


@dataclass
class Rig:
    runner: Runner
    store: SqliteStore
    hook: Finished
    url: str


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=503)

    app = web.Application()
    app.add_routes([web.get("/fail", fail)])
    store = SqliteStore(f"sqlite:///{tmp_path / 'runs.db'}")
    await store.open()
    hook = Finished()
    async with serve(app) as url, aiohttp.ClientSession() as session:
        yield Rig(Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session, hooks=[hook])), store, hook, url)
    await store.aclose()


def probe(url: str, **kw: Any) -> HttpProbe:
    return HttpProbe.model_validate({"id": "flaky", "kind": "http", "timeout": "2s",
                                     "retries": {"count": 1, "delay": "30s"}, "request": {"url": f"{url}/fail"},
                                     **kw})


async def until(cond: Any, timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not cond():
            await anyio.sleep(0.01)


async def test_pending_retry_is_stored_and_the_drain_ends_it(rig: Rig) -> None:
    p = probe(rig.url)
    result: list[list[RunRecord]] = []
    async with anyio.create_task_group() as tg:
        async def chain() -> None:
            result.append(await rig.runner.run_probe(p))

        tg.start_soon(chain)
        await until(lambda: rig.runner.waiting_retries == 1)
        [pending] = await rig.store.pending_retries()
        assert not pending.final and pending.retry_at_ns is not None and pending.finished_ns is not None
        assert pending.retry_at_ns - pending.finished_ns == 30 * 10**9
        assert rig.runner.end_retries(time.time() + 5) == 1  # due in 30 s: beyond a 5 s grace
        with anyio.fail_after(10):
            await rig.runner.wait_idle()
    [[ended]] = result
    assert ended.final and ended.retry_aborted == "shutdown during retry delay" and ended.retry_at_ns is None
    assert ended.findings[-1].type == "retry.not_run"
    assert rig.hook.seen == [(ended.run_id, False), (ended.run_id, True)]  # alerts see the final failure
    assert await rig.store.pending_retries() == []


async def test_a_retry_that_fits_the_grace_runs_during_the_drain(rig: Rig) -> None:
    p = probe(rig.url, retries={"count": 1, "delay": "200ms"})
    result: list[list[RunRecord]] = []
    async with anyio.create_task_group() as tg:
        async def chain() -> None:
            result.append(await rig.runner.run_probe(p))

        tg.start_soon(chain)
        await until(lambda: rig.runner.waiting_retries == 1)
        assert rig.runner.end_retries(time.time() + 10) == 0
        with anyio.fail_after(10):
            await rig.runner.wait_idle()
    [[a1, a2]] = result
    assert (a1.final, a2.final, a2.attempt, a2.retry_aborted) == (False, True, 2, None)


async def test_a_cancelled_wait_ends_its_chain_before_the_cancellation_goes_on(rig: Rig) -> None:
    p = probe(rig.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.runner.run_probe, p)
        await until(lambda: rig.runner.waiting_retries == 1)
        tg.cancel_scope.cancel()  # the drain's grace ran out
    [ended] = await rig.store.list_runs("flaky")
    assert ended.final and ended.retry_aborted == "shutdown during retry delay"
    assert rig.hook.seen[-1] == (ended.run_id, True)


async def test_a_chain_left_by_a_previous_process_resumes_at_its_due_time(rig: Rig) -> None:
    p = probe(rig.url, retries={"count": 1, "delay": "300ms"})
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.runner.run_probe, p)
        await until(lambda: rig.runner.waiting_retries == 1)
        tg.cancel_scope.cancel()
    # as if the process had been killed during the delay: make attempt 1 pending again
    [a1] = await rig.store.list_runs("flaky")
    a1.final, a1.retry_aborted, a1.retry_at_ns = False, None, time.time_ns() + 300_000_000
    a1.findings = a1.findings[:-1]
    await rig.store.finish_run(a1)
    [pending] = await rig.store.pending_retries()
    assert chain_end_reason(p, pending, time.time()) is None
    new = await rig.runner.resume_chain(p, pending)
    [a2] = new
    assert (a2.attempt, a2.first_run_id, a2.final, str(a2.verdict)) == (2, a1.run_id, True, "fail")
    assert a2.started_ns >= a1.retry_at_ns - 50_000_000
    assert await rig.store.pending_retries() == []


def test_when_a_pending_chain_resumes_or_ends() -> None:
    now_ns = 1_800_000_000 * 10**9
    pending = RunRecord(run_id="a1", probe_id="p", kind="http", attempt=1, first_run_id="a1", trace_id="t",
                        started_ns=now_ns - 10**9, finished_ns=now_ns, final=False, retry_at_ns=now_ns + 10 * 10**9)
    every = probe("http://x", every="60s")
    assert chain_end_reason(every, pending, now_ns / 1e9) is None  # not due yet
    assert chain_end_reason(every, pending, now_ns / 1e9 + 65) is None  # 55 s overdue < 60 s period
    late = chain_end_reason(every, pending, now_ns / 1e9 + 75)
    assert late is not None and late.startswith("the daemon was not running when the retry was due (65s ago")
    cron = probe("http://x", cron="0 * * * *")  # hourly: an hour's grace
    assert chain_end_reason(cron, pending, now_ns / 1e9 + 1800) is None
    assert chain_end_reason(cron, pending, now_ns / 1e9 + 7200) is not None
    paused = probe("http://x", every="60s", pause=True)  # runs only when asked: delay + timeout (32 s)
    assert chain_end_reason(paused, pending, now_ns / 1e9 + 40) is None
    assert chain_end_reason(paused, pending, now_ns / 1e9 + 45) is not None
    assert chain_end_reason(None, pending, now_ns / 1e9) == "the probe is no longer configured"
    interrupted = replace(pending, retry_aborted="attempt 2 was aborted: daemon restart")
    assert chain_end_reason(every, interrupted, now_ns / 1e9) == "attempt 2 was aborted: daemon restart"
    legacy = RunRecord(run_id="b1", probe_id="p", kind="http", attempt=1, first_run_id="b1", trace_id="t",
                       started_ns=now_ns - 10**9, finished_ns=now_ns, final=False)  # stored before retry_at_ns
    assert chain_end_reason(every, legacy, now_ns / 1e9 + 30 + 59) is None  # due = finished + 30 s delay
    assert chain_end_reason(every, legacy, now_ns / 1e9 + 30 + 61) is not None
