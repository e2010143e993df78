"""Fixtures for the Sentry area: the emulator and the sentry-sdk-only demo service (a subprocess)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import anyio
import anyio.abc
import pytest

from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.probes.integrations import SentryIntegration

SERVICE = Path(__file__).with_name("sentry_service.py")


def integration_for(emulator: SentryEmulator) -> SentryIntegration:
    return SentryIntegration(org=emulator.org, token=emulator.token, api_url=emulator.base_url, dsn=emulator.dsn())


@dataclass
class Service:
    """The running sentry-sdk-only service: its base URL and process."""

    url: str
    process: anyio.abc.Process


async def start_service(dsn: str) -> Service:
    """Start sentry_service.py with ``dsn`` and wait (bounded) for its READY line."""
    process = await anyio.open_process([sys.executable, str(SERVICE), dsn], stdin=PIPE, stdout=PIPE)
    assert process.stdout is not None
    line = b""
    with anyio.fail_after(20):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive(1)
            line += chunk
    assert line.startswith(b"READY "), line
    return Service(url=f"http://127.0.0.1:{int(line.split()[1])}", process=process)


async def stop_service(service: Service) -> None:
    """Close stdin (the service flushes sentry-sdk and exits); kill it if it lingers."""
    assert service.process.stdin is not None
    await service.process.stdin.aclose()
    with anyio.move_on_after(5):
        await service.process.wait()
        return
    service.process.kill()
    await service.process.wait()


@pytest.fixture
async def sentry_service(sentry_emulator: SentryEmulator) -> AsyncIterator[Service]:
    service = await start_service(sentry_emulator.dsn())
    yield service
    await stop_service(service)


def make_probe_context(session: object, integrations: object | None = None, probe_id: str = "checkout") -> object:
    """A ProbeContext like the runner builds (fresh trace id and root span id)."""
    import secrets
    import time

    from tracecanary.probes.base import Inject, ProbeContext, RunLog, TraceContext
    from tracecanary.probes.integrations import Integrations
    from tracecanary.probes.templating import Templates

    return ProbeContext(
        probe_id=probe_id,
        run_id=secrets.token_hex(8),
        attempt=1,
        first_run_id="",
        trace=TraceContext(trace_id=secrets.token_hex(16), span_id=secrets.token_hex(8)),
        session=session,  # type: ignore[arg-type]
        templates=Templates(),
        integrations=integrations or Integrations(),  # type: ignore[arg-type]
        inject=Inject(),
        log=RunLog(),
        trigger_ns=time.time_ns(),
        deadline_s=anyio.current_time() + 30,
    )
