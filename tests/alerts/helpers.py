"""Builders and local receivers for the alert tests (real sockets on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiohttp import web

from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.probes.base import ProbeSpec

T0_NS = 1_790_000_000 * 10**9


def probe(pid: str = "orders", *, tags: tuple[str, ...] = (), policy: str = "default") -> ProbeSpec:
    return ProbeSpec.model_validate({"id": pid, "kind": "http", "tags": list(tags), "alert": {"policy": policy}})


def run(pid: str, i: int, verdict: str, *, final: bool = True, trace_link: str | None = None) -> RunRecord:
    """Run ``i`` of a probe; ``trace_link`` (e.g. ``https://…/trace/{trace_id}``) becomes its Sentry link,
    as the runner renders the config's ``links:`` once per run."""
    v = Verdict(verdict)
    findings = [] if v is Verdict.PASS else [
        Finding(type="trace.missing", path="expect.trace.tree[0].children[1]", severity=v,
                message='span "fetch-gex-data": status ERROR, expected OK', expected="OK", observed="ERROR"),
        Finding(type="response", path="expect.response.status", severity=v,
                message="status 502, expected 200", expected=200, observed=502),
    ]
    return RunRecord(
        run_id=f"{pid}-r{i}", probe_id=pid, kind="http", attempt=1, first_run_id=f"{pid}-r{i}",
        trace_id=f"{i:032x}", started_ns=T0_NS + i * 60 * 10**9, status=RunStatus.FINISHED,
        finished_ns=T0_NS + i * 60 * 10**9 + 1_840_000_000, verdict=v, findings=findings, final=final,
        links={"sentry": trace_link.format(trace_id=f"{i:032x}")} if trace_link else {})


class Clock:
    """An injectable wall clock (epoch seconds) the test moves by hand."""

    def __init__(self, now_s: float = T0_NS / 1e9) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


async def settled(mgr: AlertManager, timeout_s: float = 20.0) -> None:
    """Bounded wait until the manager has nothing queued or in flight."""
    with anyio.fail_after(timeout_s):
        await mgr.wait_idle()


@asynccontextmanager
async def running(mgr: AlertManager) -> AsyncIterator[AlertManager]:
    async with anyio.create_task_group() as tg:
        await tg.start(mgr.run)
        try:
            yield mgr
        finally:
            tg.cancel_scope.cancel()
    await mgr.aclose()


async def idle(mgr: AlertManager) -> bool:
    """True when nothing is queued or in flight (the outbox is empty)."""
    return not await mgr.store.kv_list("alerts.outbox")


@dataclass
class WebhookReceiver:
    """Verifies ``X-Tracecanary-Signature`` independently of the code under test; replies with the
    scripted statuses first (``(status, headers)``), then 200."""

    secret: str
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    accepted: list[Any] = field(default_factory=list)
    bad_signatures: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        return app

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("X-Tracecanary-Signature", "")):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if self.script:
            status, headers = self.script.pop(0)
            return web.json_response({"error": "scripted"}, status=status, headers=headers)
        self.accepted.append(json.loads(body) if request.content_type == "application/json" else body.decode())
        return web.json_response({"ok": True})


@dataclass
class FlakyHook:
    """A webhook receiver that answers ``down_status`` (503 by default, with ``Retry-After`` when set)
    to every delivery while ``down``, and 200 once the test flips it; counts what it accepted per
    ``X-Tracecanary-Delivery`` (the idempotency key)."""

    down: bool = True
    down_status: int = 503
    retry_after: str | None = None
    attempts: int = 0
    accepted: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        return app

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.attempts += 1
        if self.down:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response({"error": "down"}, status=self.down_status, headers=headers)
        self.accepted.append(body | {"_key": request.headers.get("X-Tracecanary-Delivery", "")})
        return web.json_response({"ok": True})

    def keys(self) -> list[str]:
        """The idempotency keys accepted, in order."""
        return [str(b["_key"]) for b in self.accepted]
