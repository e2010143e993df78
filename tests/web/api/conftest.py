"""An API server on a real loopback socket over the real SqliteStore, with a test Control."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.web.api.control import LocalControl, make_run, probe
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.daemon.web.api import api_routes
from tracecanary.daemon.web.schema import openapi_document

TOKEN = "t0ken-s3cret-value"


@dataclass
class ApiEnv:
    base: str
    control: LocalControl
    session: aiohttp.ClientSession

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def validate(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """Validate a response body against the schema the OpenAPI document declares for it."""
    op = doc["paths"][path][method]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)


async def seed(store: SqliteStore) -> None:
    """Two probes with history: shop-webhook failing last (missing node), shop-slack passing."""
    now = time.time_ns()
    for i in range(12):
        failing = i < 2
        run = make_run("shop-webhook", now - (i + 1) * 60 * 10**9, missing_gex=failing,
                       verdict=Verdict.FAIL if failing else Verdict.PASS, duration_ms=100 + i * 10)
        await store.finish_run(run)
        await store.finish_run(make_run("shop-slack", now - (i + 1) * 61 * 10**9, duration_ms=200 + i))


@pytest.fixture
async def api_env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    store = SqliteStore(f"sqlite:///{tmp_path / 'api.db'}")
    await store.open()
    await seed(store)
    control = LocalControl(store=store, probe_specs=[probe("shop-slack"), probe("shop-webhook"),
                                                     probe("never-run", tags=["tier-2"])],
                           span_delay_s=0.01, alerts=AlertManager(store, AlertsSettings()))
    app = web.Application()
    app.add_routes(api_routes(control, api_token=TOKEN))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield ApiEnv(str(server.make_url("")).rstrip("/"), control, session)
    await server.close()
    for t in list(control.tasks):
        t.cancel()
    await store.aclose()


@pytest.fixture(scope="session")
def openapi() -> dict[str, Any]:
    return openapi_document()
