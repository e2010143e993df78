"""The daemon in-process: "run now" over the API obeys the overlap policy; a reload keeps its environ."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.probes.helpers import serve
from tracecanary.daemon.app import Daemon
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.engine import Overrides
from tracecanary.probes.http import HttpProbe

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}


@dataclass
class Target:
    """/slow holds each request until released; ``changed`` fires on every arrival and departure."""

    waiting: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def slow(self, request: web.Request) -> web.Response:
        self.waiting += 1
        self._notify()
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
            self._notify()
        return web.json_response({"ok": True})

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
        with anyio.fail_after(timeout_s):
            while not cond():
                await self.changed.wait()


def suite(*probe_ids: str) -> str:
    """Paused probes (no scheduled tick): they run only when asked; their URL comes from ${TC_TEST_TARGET}."""
    return "probes:\n" + "".join(
        f"  - id: {pid}\n    kind: http\n    every: 1h\n    pause: true\n    overlap: skip\n    timeout: 10s\n"
        f"    request: {{url: '${{TC_TEST_TARGET}}/slow'}}\n" for pid in probe_ids)


@pytest.fixture
async def target() -> AsyncIterator[tuple[Target, str]]:
    t = Target()
    app = web.Application()
    app.add_routes([web.get("/slow", t.slow)])
    async with serve(app) as url:
        yield t, url
        t.release.set()


async def _post(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    with anyio.fail_after(10):
        async with session.post(url, json={}, headers=JSON) as resp:
            return resp.status, await resp.json()


async def test_run_now_answers_409_while_a_run_is_in_flight_and_reload_uses_the_environ(
    tmp_path: Path, target: tuple[Target, str]
) -> None:
    tgt, url = target
    assert "TC_TEST_TARGET" not in os.environ  # only the daemon's environ knows it
    environ = {"TC_TEST_TARGET": url}
    path = tmp_path / "suite.yaml"
    path.write_text(suite("held"))
    overrides = Overrides(listen="127.0.0.1:0", otlp_http="none", otlp_grpc="none",
                          store=f"sqlite:///{tmp_path / 'tc.db'}")
    ready = anyio.Event()
    daemon = Daemon(path, load_config(path, environ), overrides, on_ready=lambda d: ready.set(), environ=environ)
    async with anyio.create_task_group() as tg, aiohttp.ClientSession() as session:
        tg.start_soon(daemon.run)
        with anyio.fail_after(20):
            await ready.wait()
        api = f"http://{daemon.engine.addresses['api']}/api"
        status, body = await _post(session, f"{api}/probes/held/run")
        assert status == 202 and body["probe_id"] == "held"
        run_id = body["run_id"]
        await tgt.until(lambda: tgt.waiting == 1)
        status, body = await _post(session, f"{api}/probes/held/run")
        assert status == 409
        assert body["error"] == "probe 'held' has a run in flight; its overlap policy is skip"
        status, body = await _post(session, f"{api}/probes/nope/run")
        assert status == 404

        path.write_text(suite("held", "added"))
        assert await daemon.reload()  # resolves ${TC_TEST_TARGET} from the same environ
        added = daemon.engine.config.probe("added")
        assert isinstance(added, HttpProbe) and added.request.url == f"{url}/slow"

        tgt.release.set()
        with anyio.fail_after(10):
            await daemon.engine.runner.wait_idle()
        run = await daemon.engine.store.get_run(run_id)
        assert run is not None and run.verdict is not None and run.verdict.ok
        tg.cancel_scope.cancel()
