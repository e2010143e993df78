"""Serving an emulator's aiohttp app on loopback: start, stop, ``async with`` (shared by every emulator)."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from aiohttp import web

log = logging.getLogger("tracecanary.demo.emulators")


class Served:
    """Start/stop an emulator's :meth:`app`; ``base_url`` is set once it listens."""

    label = "emulator"
    base_url = ""
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The emulator's routes."""
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the base URL."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        self.base_url = f"http://{host}:{runner.addresses[0][1]}"
        log.info("%s emulator listening url=%s", self.label, self.base_url)
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
