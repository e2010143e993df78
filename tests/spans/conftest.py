"""Fixtures for span intake tests: a live OTLP/HTTP receiver on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest

from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.receiver import Ingest, OtlpSettings, serve_otlp_http


@dataclass
class LiveReceiver:
    url: str
    buffer: TraceBuffer
    ingest: Ingest
    settings: OtlpSettings


async def start_receiver(tg: anyio.abc.TaskGroup, **settings: object) -> LiveReceiver:
    cfg = OtlpSettings.model_validate({"http": "127.0.0.1:0", "grpc": None, **settings})
    buffer = TraceBuffer()
    ingest = Ingest(buffer, cfg)
    port = await tg.start(lambda task_status: serve_otlp_http(buffer, cfg, ingest=ingest, task_status=task_status))
    return LiveReceiver(f"http://127.0.0.1:{port}/v1/traces", buffer, ingest, cfg)


@pytest.fixture
async def receiver() -> AsyncIterator[LiveReceiver]:
    async with anyio.create_task_group() as tg:
        yield await start_receiver(tg)
        tg.cancel_scope.cancel()
