"""``requires:`` checked against real things: the environment given, files, and loopback sockets — refused
(bound, not listening), silent (listening, never answering HTTP), answering (any status counts)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.probes.helpers import serve
from tracecanary.probes.requires import Requires, unmet

pytestmark = pytest.mark.anyio


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Listening, so a TCP connection succeeds, but nothing ever reads or answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.fixture
def refused_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


async def test_each_unmet_precondition_is_a_reason(tmp_path: Path, silent_port: int, refused_port: int) -> None:
    present = tmp_path / "ca.pem"
    present.write_text("x")
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/down", down)
    async with serve(app) as base, aiohttp.ClientSession() as session:
        requires = Requires(
            env=["SET_ONE", "EMPTY_ONE", "MISSING_ONE"], files=[str(present), str(tmp_path / "key.pem")],
            reachable=[f"{base}/down", f"tcp://127.0.0.1:{silent_port}", f"http://127.0.0.1:{silent_port}/",
                       f"127.0.0.1:{refused_port}"],
            reachable_timeout=0.5,
        )
        reasons = await unmet(requires, session, {"SET_ONE": "x", "EMPTY_ONE": ""})
    assert reasons == [
        "EMPTY_ONE is empty", "MISSING_ONE is not set", f"{tmp_path}/key.pem does not exist",
        f"http://127.0.0.1:{silent_port}/ is not reachable: no answer within 0.5s",
        f"127.0.0.1:{refused_port} is not reachable: connection refused",
    ]
    assert Requires().is_empty()


@pytest.mark.parametrize("target", ["ftp://host:21", "http://", "tcp://host", "host:notaport"])
def test_bad_reachable_targets_fail_at_load(target: str) -> None:
    with pytest.raises(ValueError, match="reachable"):
        Requires(reachable=[target])
