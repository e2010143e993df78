"""With read_token_required the dashboard asks for the token once (cookie); API writes still need the bearer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.web.dashboard.conftest import Site
from tracecanary.daemon.web.api import api_routes
from tracecanary.daemon.web.dashboard.views import dashboard_routes

pytestmark = pytest.mark.anyio
TOKEN = "read-and-write-token"


@pytest.fixture
async def locked(site: Site) -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes(api_routes(site.control, api_token=TOKEN, read_token_required=True))
    app.add_routes(dashboard_routes(site.control, api_token=TOKEN, read_token_required=True))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_pages_need_login_and_cookie_opens_reads_only(locked: str) -> None:
    # unsafe=True: aiohttp's jar otherwise ignores cookies from IP hosts (browsers keep them)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(f"{locked}/probes/shop-webhook", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login?next=/probes/shop-webhook"
        async with s.get(f"{locked}/static/style.css") as r:
            assert r.status == 200
        async with s.post(f"{locked}/login", data={"token": "nope", "next": "/"}) as r:
            assert r.status == 401 and "wrong token" in await r.text()
            assert TOKEN not in await r.text()
        async with s.post(f"{locked}/login", data={"token": TOKEN, "next": "//evil.example/x"},
                          allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            cookie = r.cookies["tracecanary_token"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with s.get(f"{locked}/probes/shop-webhook") as r:
            assert r.status == 200 and "duration-chart" in await r.text()
        async with s.get(f"{locked}/api/probes") as r:
            assert r.status == 200
        async with s.post(f"{locked}/api/probes/shop-slack/run", json={}) as r:
            assert r.status == 401  # a cookie never authorizes a write
        async with s.post(f"{locked}/api/probes/shop-slack/run", json={},
                          headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 202
