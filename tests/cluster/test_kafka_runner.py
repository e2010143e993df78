"""The runner's kafka-mode seams: minted trace ids (with and without a tracer) and aborting moved runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from tests.probes.helpers import serve
from tracecanary.daemon.cluster.partitioner import TraceIdMinter, sarama_compat_partition, trace_key
from tracecanary.daemon.run.ids import MintingIdGenerator
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.store.base import RunStatus
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.probes.http import HttpProbe

pytestmark = pytest.mark.anyio
OWNED, PARTITIONS = {3}, 8


class SlowTarget:
    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def slow(self, request: web.Request) -> web.Response:
        self.entered.set()
        with anyio.move_on_after(30):
            await self.release.wait()
        return web.json_response({})

    async def fast(self, request: web.Request) -> web.Response:
        return web.json_response({})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, aiohttp.ClientSession, SlowTarget, str]]:
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    target = SlowTarget()
    app = web.Application()
    app.router.add_get("/slow", target.slow)
    app.router.add_get("/fast", target.fast)
    async with aiohttp.ClientSession() as session, serve(app) as base:
        yield store, session, target, base
        target.release.set()  # the aborted request's handler ends; the server can close
    await store.aclose()


def _probe(pid: str, url: str) -> HttpProbe:
    return HttpProbe.model_validate({"id": pid, "kind": "http", "timeout": "40s", "request": {"url": url}})


@pytest.mark.parametrize("with_tracer", [False, True])
async def test_runs_get_minted_trace_ids(world, with_tracer: bool) -> None:  # type: ignore[no-untyped-def]
    store, session, _, base = world
    minter = TraceIdMinter("sarama_compat")
    tracer = TracerProvider(id_generator=MintingIdGenerator()).get_tracer("t") if with_tracer else None
    runner = Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session, tracer=tracer,
                               mint_trace_id=lambda: minter.mint(OWNED, PARTITIONS)))
    runs = [(await runner.run_probe(_probe("fast", base + "/fast")))[-1] for _ in range(5)]
    assert all(sarama_compat_partition(trace_key(r.trace_id), PARTITIONS) in OWNED for r in runs)
    assert minter.stats.minted == 5


async def test_abort_ends_only_the_moved_probes_runs_as_rebalance(world) -> None:  # type: ignore[no-untyped-def]
    store, session, target, base = world
    runner = Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session))
    results = {}

    async def run(pid: str, path: str) -> None:
        results[pid] = (await runner.run_probe(_probe(pid, base + path)))[-1]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "moved", "/slow")
        with anyio.fail_after(20):
            await target.entered.wait()
        assert runner.abort({"other"}, "rebalance") == 0
        assert runner.abort({"moved"}, "rebalance") == 1
    run_ = results["moved"]
    assert (run_.status, run_.abort_reason, run_.verdict, run_.final) == (RunStatus.ABORTED, "rebalance", None, True)
    stored = await store.get_run(run_.run_id)
    assert stored is not None and stored.status is RunStatus.ABORTED and stored.abort_reason == "rebalance"
