"""A `tracecanary run` subprocess and a switchable system under test, for the alert-delivery daemon tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from tracecanary.demo.broker import free_port


async def eventually(cond: Callable[[], bool | Awaitable[bool]], timeout_s: float = 30.0, what: str = "") -> None:
    """Bounded wait on a real condition, checked every 50 ms."""
    try:
        with anyio.fail_after(timeout_s):
            while True:
                result = cond()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await anyio.sleep(0.05)
    except TimeoutError as e:
        raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}") from e


@dataclass
class Target:
    """The system under test: GET /check answers 200 while ``healthy``, 500 otherwise."""

    healthy: bool = True
    hits: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/check", self._check)
        return app

    async def _check(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"ok": self.healthy}, status=200 if self.healthy else 500)


class DaemonProcess:
    """``tracecanary run CONFIG`` as a child process with its own port, store and log file."""

    def __init__(self, config: Path, db: Path | str, *, name: str = "daemon",
                 env: dict[str, str] | None = None) -> None:
        """``db``: a SQLite file, or a store URL (``postgresql://…``); ``env`` is added to the environment."""
        self.config, self.db = config, db
        self.store = db if isinstance(db, str) else f"sqlite:///{db}"
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / f"{name}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracecanary.daemon.cli.main", "run", str(self.config),
             "--listen", f"127.0.0.1:{self.port}", "--otlp-http", "none", "--otlp-grpc", "none",
             "--store", self.store],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.env,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, path: str = "/readyz", timeout_s: float = 60) -> None:
        """Until ``path`` answers 200 (``/healthz``: up, whatever its role)."""
        async def check() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log_text()[-4000:]
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{self.base}{path}") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(check, timeout_s, f"daemon {path}")

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as s, s.get(f"{self.base}{path}", headers=headers) as r:
            return r.status, await r.json()

    async def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as s, s.post(f"{self.base}{path}", json=body, headers=headers) as r:
            return r.status, await r.json()

    async def run_now(self, probe_id: str, token: str | None = None) -> None:
        status, body = await self.post(f"/api/probes/{probe_id}/run", {}, token)
        assert status == 202, body

    async def notifications(self) -> list[dict[str, Any]]:
        """The daemon's announced notifications (``alert.notification``), oldest first."""
        status, body = await self.get("/api/alerts?limit=200")
        assert status == 200, body
        return list(reversed(body["notifications"]))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await self.wait_exit()

    async def wait_exit(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        proc = self.proc
        return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=timeout_s))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def problem_lines(stderr: str) -> list[str]:
    """stderr of a `tracecanary run` that failed to start, without its start and exit lines (the exit
    line must say code=2)."""
    lines = stderr.strip().splitlines()
    assert " tracecanary starting " in lines[0] and " tracecanary exiting code=2 " in lines[-1], stderr
    return lines[1:-1]
