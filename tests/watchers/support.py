"""Building a real ProbeContext / WatchContext for Slack and GitHub flows in tests."""

from __future__ import annotations

import secrets
import socket
import time
import uuid
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from tracecanary.integrations import Integrations
from tracecanary.probes.base import Inject, ProbeContext, RunLog, TraceContext
from tracecanary.probes.templating import Templates


def probe_context(session: aiohttp.ClientSession, integrations: dict[str, Any], *, timeout_s: float = 20.0,
                  probe_id: str = "bot-check") -> ProbeContext:
    run_id = uuid.uuid4().hex
    return ProbeContext(
        probe_id=probe_id, run_id=run_id, attempt=1, first_run_id=run_id,
        trace=TraceContext(trace_id=secrets.token_hex(16), span_id=secrets.token_hex(8)),
        session=session, templates=Templates(), integrations=Integrations.model_validate(integrations),
        inject=Inject(), log=RunLog(), trigger_ns=time.time_ns(), deadline_s=anyio.current_time() + timeout_s,
    )


class LoopbackApp:
    """Serve aiohttp routes on 127.0.0.1 (e.g. the daemon's /hooks/github) for one test."""

    def __init__(self, routes: list[web.RouteDef]) -> None:
        self.routes = routes
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> LoopbackApp:
        app = web.Application()
        app.add_routes(self.routes)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
