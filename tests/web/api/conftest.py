"""The real daemon (Daemon from daemon/app.py: engine, scheduler, DaemonControl) on a loopback socket,
with the seeded history in its store; a bearer token configured for writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from tests.web.daemon import RunningDaemon, running_daemon
from tracecanary.daemon.app import DaemonControl
from tracecanary.daemon.web.schema import openapi_document

TOKEN = "t0ken-s3cret-value"


@dataclass
class ApiEnv:
    base: str
    running: RunningDaemon
    session: aiohttp.ClientSession

    @property
    def control(self) -> DaemonControl:
        return self.running.control

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def validate(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """Validate a response body against the schema the OpenAPI document declares for it."""
    op = doc["paths"][path][method]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)


@pytest.fixture
async def api_env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    async with running_daemon(tmp_path, api_token=TOKEN, extra_probe=True) as running, \
            aiohttp.ClientSession() as session:
        yield ApiEnv(running.base, running, session)


@pytest.fixture(scope="session")
def openapi() -> dict[str, Any]:
    return openapi_document()
