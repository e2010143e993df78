"""Helpers for probe tests: a real ProbeContext and real local aiohttp targets."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
from aiohttp import web

from tracecanary.integrations import Integrations
from tracecanary.probes.base import Inject, ProbeContext, ProbeResources, RunLog, TraceContext
from tracecanary.probes.templating import Templates


def make_ctx(
    session: aiohttp.ClientSession,
    *,
    probe_id: str = "probe-under-test",
    deadline_s: float = 10.0,
    integrations: Integrations | None = None,
    resources: ProbeResources | None = None,
) -> ProbeContext:
    """A ProbeContext built the way the runner builds one (fresh run id and trace id)."""
    run_id = str(uuid.uuid4())
    return ProbeContext(
        probe_id=probe_id, run_id=run_id, attempt=1, first_run_id=run_id,
        trace=TraceContext(trace_id=secrets.token_hex(16), span_id=secrets.token_hex(8)),
        session=session, templates=Templates(), integrations=integrations or Integrations(),
        inject=Inject(), log=RunLog(), trigger_ns=time.time_ns(),
        deadline_s=anyio.current_time() + deadline_s, resources=resources or ProbeResources(),
    )


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
