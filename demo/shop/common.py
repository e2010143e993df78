"""What every demo shop service shares: OTel setup, the chaos admin endpoint, and the process entry point.

Each service runs in its own process (the OTel tracer provider is process-global), binds port 0 on
loopback and prints ``READY <name> http://127.0.0.1:<port>`` once it serves, so the launcher
(``demo/world.py``) never guesses ports; a service serving more (gRPC) adds ``key=address`` to that line. Configuration comes from one JSON argument.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger("tracecanary.demo.shop")

FAULTS = ("drop-span", "slow-dependency", "break-propagation", "silent-bot")
"""Faults the shop can inject at runtime (``POST /admin/faults``)."""


@dataclass
class Faults:
    """The active fault (at most one) and its knobs."""

    active: str | None = None
    slow_s: float = 1.5

    def on(self, name: str) -> bool:
        return self.active == name


def setup_tracing(service: str, otlp_endpoint: str | None, *, export_delay_ms: int = 100) -> trace.Tracer:
    """A process-wide tracer provider exporting OTLP/HTTP protobuf to ``{endpoint}/v1/traces``."""
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "demo"}))
    if otlp_endpoint:
        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces", timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=export_delay_ms))
    trace.set_tracer_provider(provider)
    return trace.get_tracer(f"tracecanary.demo.{service}")


def setup_sentry(dsn: str | None, service: str) -> None:
    """sentry-sdk with tracing: the aiohttp integration continues ``sentry-trace``/``baggage`` from the
    probe, so the service's transactions share the probe's trace id in Sentry (or the emulator)."""
    if not dsn:
        return
    import sentry_sdk

    sentry_sdk.init(dsn=dsn, traces_sample_rate=1.0, environment="demo", server_name=service,
                    release="tracecanary-demo-shop@1", shutdown_timeout=2)


def extract(headers: Mapping[str, str]) -> Context:
    """W3C trace context (traceparent, tracestate, baggage) from incoming headers."""
    return propagate.extract(dict(headers))


def inject(ctx: Context | None = None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def admin_routes(faults: Faults) -> list[web.RouteDef]:
    """``GET/POST /admin/faults``: read or switch the active fault (``{"fault": name | null}``)."""

    async def get(request: web.Request) -> web.Response:
        return web.json_response({"fault": faults.active, "available": list(FAULTS)})

    async def post(request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("fault")
        if name is not None and name not in FAULTS:
            return web.json_response({"error": f"unknown fault {name!r}", "available": list(FAULTS)}, status=400)
        faults.active = name
        if "slow_s" in body:
            faults.slow_s = float(body["slow_s"])
        log.info("fault set fault=%s", name)
        return web.json_response({"fault": faults.active})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    return [web.get("/admin/faults", get), web.post("/admin/faults", post), web.get("/healthz", health)]


@dataclass
class Service:
    """A shop service: its aiohttp app plus background tasks started after the server binds."""

    name: str
    app: web.Application
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    announce: dict[str, str] = field(default_factory=dict)
    """More addresses for the READY line (``grpc=127.0.0.1:PORT``)."""


async def serve(service: Service, host: str = "127.0.0.1") -> None:
    """Bind port 0, announce READY on stdout, run until SIGTERM/SIGINT, then clean up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    runner = web.AppRunner(service.app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(job()) for job in service.background]
    extra = "".join(f" {k}={v}" for k, v in service.announce.items())
    print(f"READY {service.name} http://{host}:{sock.getsockname()[1]}{extra}", flush=True)
    try:
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not waiter and t.exception() is not None:
                log.error("background task failed service=%s error=%r", service.name, t.exception())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fn in service.cleanup:
            await fn()
        await runner.cleanup()
        trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]


def main(build: Callable[[dict[str, Any]], Awaitable[Service]]) -> None:
    """Entry point: ``python -m tracecanary.demo.shop.<service> '<json config>'``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}

    async def run() -> None:
        await serve(await build(config))

    asyncio.run(run())
