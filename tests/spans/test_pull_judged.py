"""``expect.trace.source: jaeger | tempo`` through the real Runner: an HTTP probe hits a system under test
that exports its spans (OTLP/HTTP protobuf) to the backend emulator, and the run's trace is pulled back
and judged: a pass, a missing span named at the deadline, a late trace found by polling, 429 ridden out,
and an unconfigured source reported as an error."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.probes.helpers import serve
from tests.spans.pull_support import FLAVOURS, Flavour, backend, sample_trace
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp_encode import encode_request
from tracecanary.daemon.store.base import RunRecord
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.demo.emulators.trace_backend import TraceBackendEmulator
from tracecanary.probes.http import HttpProbe
from tracecanary.probes.steps import StepsProbe

pytestmark = pytest.mark.anyio
JUDGED = [FLAVOURS[0], FLAVOURS[1], FLAVOURS[3], FLAVOURS[4], FLAVOURS[7]]

TREE = [{"span": "POST /checkout", "service": "shop", "kind": "server", "children": [
    {"span": "charge-card", "service": "payments", "kind": "client"},
    {"span": "orders publish", "kind": "producer"},
]}]


cleaned: list[str] = []


@asynccontextmanager
async def shop(emulator: TraceBackendEmulator, tenant: str) -> AsyncIterator[str]:
    """The system under test: answers, then exports a checkout trace under the caller's traceparent."""

    async def checkout(request: web.Request) -> web.Response:
        _, trace_id, parent, _ = request.headers["traceparent"].split("-")
        spans = sample_trace(trace_id)
        spans[0] = dataclasses.replace(spans[0], parent_span_id=parent)
        headers = {"Content-Type": "application/x-protobuf", **({"X-Scope-OrgID": tenant} if tenant else {})}
        async with aiohttp.ClientSession() as session, session.post(
                emulator.base_url + "/v1/traces", data=encode_request(spans).SerializeToString(),
                headers=headers) as resp:
            assert resp.status == 200
        return web.json_response({"ok": True})

    async def cleanup(request: web.Request) -> web.Response:
        cleaned.append(request.query.get("card", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/checkout", checkout)
    app.router.add_delete("/cards", cleanup)
    async with serve(app) as base:
        yield base


async def run_once(tmp_path: Path, flavour: Flavour, emulator: TraceBackendEmulator | None, target: str,
                   probe_timeout: str = "5s", forbid: list[dict[str, Any]] | None = None) -> RunRecord:
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    try:
        async with aiohttp.ClientSession() as session:
            sources = {} if emulator is None else {flavour.backend: flavour.source(session, emulator.base_url)}
            runner = Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session, pull_sources=sources))
            probe = HttpProbe.model_validate({
                "id": "checkout", "kind": "http", "timeout": probe_timeout,
                "request": {"method": "POST", "url": target + "/checkout"},
                "expect": {"response": {"status": 200},
                           "trace": {"source": flavour.backend, "tree": TREE, "forbid": forbid or []}},
            })
            [run] = await runner.run_probe(probe)
            return run
    finally:
        await store.aclose()


@pytest.mark.parametrize("flavour", JUDGED, ids=[f.name for f in JUDGED])
async def test_pass(tmp_path: Path, flavour: Flavour) -> None:
    async with backend(flavour) as emulator, shop(emulator, flavour.tenant()) as target:
        run = await run_once(tmp_path, flavour, emulator, target)
    assert run.verdict is Verdict.PASS, [str(f) for f in run.findings]
    assert run.span_count >= 3


@pytest.mark.parametrize("flavour", [FLAVOURS[0], FLAVOURS[3]], ids=["jaeger", "tempo"])
async def test_missing_span_fails_naming_it(tmp_path: Path, flavour: Flavour) -> None:
    async with backend(flavour) as emulator, shop(emulator, flavour.tenant()) as target:
        emulator.hide("charge-card")
        run = await run_once(tmp_path, flavour, emulator, target, probe_timeout="1500ms")
    assert run.verdict is Verdict.FAIL, [str(f) for f in run.findings]
    assert "charge-card" in "\n".join(str(f) for f in run.findings)


@pytest.mark.parametrize("flavour", [FLAVOURS[2], FLAVOURS[5]], ids=["jaeger-v1", "tempo-1x"])
async def test_late_trace_is_found_by_polling(tmp_path: Path, flavour: Flavour) -> None:
    async with backend(flavour, ingest_delay_s=0.4) as emulator, shop(emulator, flavour.tenant()) as target:
        run = await run_once(tmp_path, flavour, emulator, target)
    assert run.verdict is Verdict.PASS, [str(f) for f in run.findings]
    assert len(emulator.requests) >= 4  # v3/v2 and v1 answered 404 at least once before the trace showed


@pytest.mark.parametrize("flavour", [FLAVOURS[1], FLAVOURS[4]], ids=["jaeger", "tempo"])
async def test_429_then_pass_and_forbid_fails(tmp_path: Path, flavour: Flavour) -> None:
    async with backend(flavour) as emulator, shop(emulator, flavour.tenant()) as target:
        emulator.throttle(3, retry_after_s=0.05)
        run = await run_once(tmp_path, flavour, emulator, target)
        assert run.verdict is Verdict.PASS, [str(f) for f in run.findings]
        failed = await run_once(tmp_path, flavour, emulator, target, forbid=[{"span": "orders publish"}])
    assert failed.verdict is Verdict.FAIL
    assert "orders publish" in "\n".join(str(f) for f in failed.findings)


async def test_unconfigured_source_is_an_error(tmp_path: Path) -> None:
    flavour = FLAVOURS[3]
    async with backend(flavour) as emulator, shop(emulator, "") as target:
        run = await run_once(tmp_path, flavour, None, target)
    assert run.verdict is Verdict.ERROR
    assert "expect.trace.source is tempo but integrations.tempo (url) is not configured" in run.findings[0].message


async def test_outputs_are_recorded_and_rendered_in_teardown(tmp_path: Path) -> None:
    flavour = FLAVOURS[3]
    cleaned.clear()
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    async with backend(flavour) as emulator, shop(emulator, "") as target, aiohttp.ClientSession() as session:
        runner = Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session,
                                   pull_sources={"tempo": flavour.source(session, emulator.base_url)}))
        probe = StepsProbe.model_validate({
            "id": "checkout", "kind": "steps", "timeout": "5s",
            "steps": [{"http": {"method": "POST", "url": target + "/checkout"}}],
            "teardown": [{"http": {"method": "DELETE", "url": target + "/cards", "query": {"card": "{{ outputs.CARD }}"}}}],
            "expect": {"trace": {"source": "tempo", "tree": TREE, "outputs": [
                {"name": "CARD", "selector": 'span[name="charge-card"]', "value": "attr:card.last4"},
                {"name": "AMOUNT", "selector": "span[service.name=\"payments\"]", "value": "attr:amount_cents"},
                {"name": "NOPE", "selector": 'span[name="absent"]', "value": "attr:x"}]}},
        })
        [run] = await runner.run_probe(probe)
    await store.aclose()
    assert run.verdict is Verdict.PASS, [str(f) for f in run.findings]
    assert run.outputs["trace"] == {"CARD": "4242", "AMOUNT": 1999}
    assert cleaned == ["4242"]


@pytest.mark.parametrize("flavour", [FLAVOURS[0], FLAVOURS[3]], ids=["jaeger", "tempo"])
async def test_backend_down_and_nothing_sent_is_unknown(tmp_path: Path, flavour: Flavour) -> None:
    async def quiet(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/checkout", quiet)
    async with backend(flavour) as emulator, serve(app) as target:
        await emulator.stop()  # its port now refuses connections
        run = await run_once(tmp_path, flavour, emulator, target, probe_timeout="600ms")
    assert run.verdict is Verdict.UNKNOWN, [str(f) for f in run.findings]
    message = run.findings[0].message
    assert f"{flavour.backend} failed: GET /api/" in message, message
