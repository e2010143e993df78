"""A loopback HTTP receiver for webhook/Events API deliveries, with scripted response statuses."""

from __future__ import annotations

import socket
from typing import Any

import anyio
from aiohttp import web


class HookReceiver:
    """Records every POST (headers + raw body); answers with ``statuses`` in order, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._changed = anyio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        self._changed.set()
        self._changed = anyio.Event()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[tuple[dict[str, str], bytes]]:
        with anyio.fail_after(timeout_s):
            while len(self.received) < count:
                await self._changed.wait()
        return self.received

    async def __aenter__(self) -> HookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
