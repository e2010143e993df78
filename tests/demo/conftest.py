"""The demo world for tests: one world per module, spans captured by a real OTLP/HTTP endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tracecanary.assertions.spans import Span
from tracecanary.daemon.spans.otlp import decode_protobuf
from tracecanary.demo.world import DemoWorld, start_world


@dataclass
class SpanSink:
    """Every span the shop exported, decoded by the daemon's own OTLP decoder."""

    spans: list[Span] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        batch = decode_protobuf(await request.read())
        self.spans.extend(batch.spans)
        self.changed.set()
        self.changed = anyio.Event()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait_for(self, pred: Callable[[list[Span]], list[Span]], timeout_s: float = 15.0) -> list[Span]:
        """Wait until ``pred`` returns a non-empty selection of the spans received so far."""
        with anyio.fail_after(timeout_s):
            while not (found := pred(self.spans)):
                await self.changed.wait()
        return found


@dataclass
class Demo:
    world: DemoWorld
    sink: SpanSink


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def demo() -> AsyncIterator[Demo]:
    sink = SpanSink()
    app = web.Application()
    app.router.add_post("/v1/traces", sink.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    world = await start_world(str(server.make_url("")).rstrip("/"))
    try:
        yield Demo(world, sink)
    finally:
        await world.aclose()
        await server.close()
