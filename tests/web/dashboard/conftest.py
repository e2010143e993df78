"""Dashboard + API on a real loopback socket over the real SqliteStore (the browser fixture is tests/fixtures/browser.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.web.api.conftest import seed
from tests.web.api.control import LocalControl, probe
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.daemon.web.api import api_routes
from tracecanary.daemon.web.dashboard.views import dashboard_routes


@dataclass
class Site:
    base: str
    control: LocalControl


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    store = SqliteStore(f"sqlite:///{tmp_path / 'dash.db'}")
    await store.open()
    await seed(store)
    control = LocalControl(store=store, probe_specs=[probe("shop-slack"), probe("shop-webhook")],
                           span_delay_s=0.15, alerts=AlertManager(store, AlertsSettings()))
    app = web.Application()
    app.add_routes(api_routes(control, api_token=None))
    app.add_routes(dashboard_routes(control, live_poll_s=0.05, live_max_s=20))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield Site(str(server.make_url("")).rstrip("/"), control)
    for t in list(control.tasks):
        t.cancel()
    await server.close()
    await store.aclose()
