"""The http side-effect watcher polling a real aiohttp endpoint, and judge_http."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.probes.helpers import make_ctx, serve
from tracecanary.assertions.side_effects import HttpEffect, judge_http
from tracecanary.daemon.watchers.base import Services, WatchContext
from tracecanary.daemon.watchers.registry import WATCHERS
from tracecanary.probes.templating import render_spec


class Orders:
    """An order that ships after ``ship_after`` polls; records what each poll carried."""

    def __init__(self, ship_after: int) -> None:
        self.ship_after = ship_after
        self.polls: list[dict[str, str]] = []
        self.polls_paths: list[str] = []

    async def get(self, request: web.Request) -> web.Response:
        self.polls.append(dict(request.headers))
        self.polls_paths.append(request.path)
        state = "shipped" if len(self.polls) > self.ship_after else "pending"
        return web.json_response({"id": request.match_info["id"], "state": state, "items": [{"qty": 2}]})


@pytest.fixture
async def orders() -> AsyncIterator[tuple[Orders, str, aiohttp.ClientSession]]:
    state = Orders(ship_after=3)
    app = web.Application()
    app.router.add_get("/orders/{id}", state.get)
    async with serve(app) as url, aiohttp.ClientSession() as session:
        yield state, url, session


def _effect(url: str, **kw: Any) -> HttpEffect:
    return HttpEffect.model_validate({
        "request": {"url": url + "/orders/{{ run_id }}", "headers": {"Authorization": "Bearer t"}},
        "until": {"status": 200, "json": {"state": "shipped", "$.items[0].qty": {"gte": 1}}},
        "every": "20ms", **kw,
    })


@pytest.mark.anyio
async def test_polls_until_the_state_is_reached(orders: tuple[Orders, str, aiohttp.ClientSession]) -> None:
    state, url, session = orders
    ctx = make_ctx(session)
    with anyio.fail_after(5):
        eff = render_spec(_effect(url, within="3s"), ctx.render)  # as the runner does, once per run
        assert await WATCHERS["http"](eff, WatchContext(probe=ctx, services=Services())) == []
    assert state.polls_paths[0] == f"/orders/{ctx.run_id}"
    assert len(state.polls) == 4
    assert state.polls[0]["Authorization"] == "Bearer t" and "traceparent" not in state.polls[0]


@pytest.mark.anyio
async def test_window_closes_before_the_state(orders: tuple[Orders, str, aiohttp.ClientSession]) -> None:
    state, url, session = orders
    state.ship_after = 10_000
    ctx = make_ctx(session)
    with anyio.fail_after(5):
        eff = render_spec(_effect(url, within="150ms"), ctx.render)
        [finding] = await WATCHERS["http"](eff, WatchContext(probe=ctx, services=Services()))
    assert finding.type == "side_effect" and finding.details["kind"] == "http"
    assert "last: state: expected 'shipped', got 'pending'" in finding.message
    assert finding.observed["json"]["state"] == "pending"
    assert 3 <= len(state.polls) <= 9


@pytest.mark.anyio
async def test_absent_state_is_judged_when_the_window_closes(orders: tuple[Orders, str, aiohttp.ClientSession]) -> None:
    state, url, session = orders
    ctx = make_ctx(session)
    effect = _effect(url, within="150ms", absent=True, until={"json": {"state": "cancelled"}})
    with anyio.fail_after(5):
        assert await WATCHERS["http"](render_spec(effect, ctx.render), WatchContext(probe=ctx, services=Services())) == []
    assert len(state.polls) >= 3
    reached = _effect(url, within="2s", absent=True)
    with anyio.fail_after(5):
        ctx2 = make_ctx(session)
        eff = render_spec(reached, ctx2.render)
        [finding] = await WATCHERS["http"](eff, WatchContext(probe=ctx2, services=Services()))
    assert "forbidden state" in finding.message


def test_judge_http_reports_request_errors() -> None:
    effect = HttpEffect.model_validate({"request": {"url": "http://127.0.0.1:1/x"}, "until": {}, "within": "1s"})
    [finding] = judge_http(effect, [{"status": None, "json": None, "error": "ClientConnectorError: refused"}])
    assert "last: request failed: ClientConnectorError: refused" in finding.message
    assert judge_http(effect, [{"status": 204, "json": None, "error": None}]) == []
    [never] = judge_http(effect, [])
    assert "never polled" in never.message
