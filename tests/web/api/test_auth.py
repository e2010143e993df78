"""Read auth when configured, and an open API when no token is set."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.web.api.conftest import TOKEN, ApiEnv
from tracecanary.daemon.web.api import api_routes

pytestmark = pytest.mark.anyio


async def _serve(env: ApiEnv, **kw: object) -> TestServer:
    app = web.Application()
    app.add_routes(api_routes(env.control, **kw))  # type: ignore[arg-type]
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


async def test_reads_need_token_when_configured(api_env: ApiEnv) -> None:
    server = await _serve(api_env, api_token=TOKEN, read_token_required=True)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(server.make_url("/api/probes")) as r:
                assert r.status == 401
            async with s.get(server.make_url("/api/probes"), headers={"Authorization": f"bearer {TOKEN}"}) as r:
                assert r.status == 200
            async with s.get(server.make_url("/api/openapi.json")) as r:
                assert r.status == 200  # the description itself is public
    finally:
        await server.close()


async def test_no_token_means_open_but_json_only(api_env: ApiEnv) -> None:
    server = await _serve(api_env, api_token=None)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/api/probes/shop-slack/run"), json={}) as r:
                assert r.status == 202
            form = {"a": "b"}  # what a cross-site form could send without a CORS preflight
            async with s.post(server.make_url("/api/probes/shop-slack/run"), data=form) as r:
                assert r.status == 415
    finally:
        await server.close()
