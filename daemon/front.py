"""The engine's HTTP front: its listeners (api, OTLP HTTP and gRPC receivers), the Kafka span source,
the routes every engine serves (/healthz, /readyz, /metrics, /hooks/github) and the counters the intake
feeds into /metrics. ``Engine`` builds one :class:`HttpFront` over itself when it starts.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import web

from tracecanary.daemon.observe.logs import AccessLog
from tracecanary.errors import StartupError

if TYPE_CHECKING:
    from tracecanary.daemon.engine import Engine
    from tracecanary.daemon.spans.kafka import KafkaSourceStats

log = logging.getLogger("tracecanary.engine")

METRICS_REFRESH_TIMEOUT_S = 5.0
"""How long a scrape waits for the alert states before it answers with the last ones."""
COUNTER_SYNC_S = 5.0
"""How often the buffer's eviction count and the Kafka source's span count are folded into /metrics."""


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        return host, int(port)
    except ValueError as e:
        raise StartupError(f"invalid address {addr!r}: expected host:port") from e


async def start_site(runner: web.AppRunner, addr: str, what: str) -> web.TCPSite:
    """Bind a site; a port already in use is a startup error (exit 2), never a silent fallback."""
    host, port = split_addr(addr)
    # SO_REUSEADDR: a port left in TIME_WAIT is free; a port with a live listener still fails (Linux).
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise StartupError(f"{what}: address {addr} is already in use") from e
        raise StartupError(f"{what}: cannot listen on {addr}: {e.strerror}") from e
    return site


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner's site listens on (the real one when the address asked for port 0)."""
    for address in runner.addresses:  # getsockname() of every listening socket
        if isinstance(address, tuple):  # (host, port) for IPv4, (host, port, flow, scope) for IPv6
            return int(address[1])
    raise RuntimeError("runner has no bound TCP socket")


class HttpFront:
    """Serves a started engine over HTTP (and gRPC for OTLP); reads the engine, changes only its
    ``app`` and ``addresses``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def serve(self, tg: anyio.abc.TaskGroup) -> None:
        """Mount the routes and start the listeners (api, OTLP HTTP/gRPC) and the Kafka span source."""
        engine = self.engine
        from tracecanary.daemon.spans.receiver import Ingest, otlp_routes

        otlp = engine.otlp_settings
        engine.app = web.Application(client_max_size=otlp.max_body + 1)
        engine.app.add_routes([web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)])
        engine.app.add_routes(self._common_routes())
        for make in engine.routes:
            engine.app.add_routes(make(engine))
        shared = otlp.http is not None and otlp.http == engine.listen
        self_tracer = engine.own_tracer("tracecanary.receiver")
        http_ingest = Ingest(engine.buffer, otlp, on_spans=self._counter("otlp_http"), tracer=self_tracer,
                             on_refused=self._refused)
        if shared:
            engine.app.add_routes(otlp_routes(engine.buffer, otlp, http_ingest))
        if engine.serve_api or shared:
            app_runner = await self._start_app(tg, engine.app, engine.listen, "api", serves_otlp=shared)
            engine.addresses["api"] = f"{split_addr(engine.listen)[0]}:{bound_port(app_runner)}"
        if otlp.http is not None and not shared:
            otlp_app = web.Application(client_max_size=otlp.max_body + 1)
            otlp_app.add_routes(otlp_routes(engine.buffer, otlp, http_ingest))
            app_runner = await self._start_app(tg, otlp_app, otlp.http, "otlp http receiver", serves_otlp=True)
            engine.addresses["otlp_http"] = f"{split_addr(otlp.http)[0]}:{bound_port(app_runner)}"
        elif shared:
            engine.addresses["otlp_http"] = engine.addresses["api"]
        if otlp.grpc is not None:
            from tracecanary.daemon.spans.grpc import serve_otlp_grpc

            grpc_ingest = Ingest(engine.buffer, otlp, on_spans=self._counter("otlp_grpc"), tracer=self_tracer,
                                 on_refused=self._refused)
            port = await tg.start(partial(serve_otlp_grpc, ingest=grpc_ingest), engine.buffer, otlp)
            engine.addresses["otlp_grpc"] = f"{split_addr(otlp.grpc)[0]}:{port or split_addr(otlp.grpc)[1]}"
        kafka_stats = None
        if engine.config.daemon.kafka is not None:
            from tracecanary.daemon.spans.kafka import KafkaSourceStats, run_kafka_source

            kafka_stats = KafkaSourceStats()
            await tg.start(partial(run_kafka_source, stats=kafka_stats), engine.buffer, engine.config.daemon.kafka)
        tg.start_soon(self._sync_counters, kafka_stats)

    async def _sync_counters(self, kafka_stats: KafkaSourceStats | None) -> None:
        """Fold the buffer's eviction count and the Kafka source's span count into /metrics."""
        evicted = kafka_spans = 0
        while True:
            await anyio.sleep(COUNTER_SYNC_S)
            stats = self.engine.buffer.stats()
            if stats.evicted_spans > evicted:
                self.engine.metrics.spans_dropped("evicted", stats.evicted_spans - evicted)
                evicted = stats.evicted_spans
            if kafka_stats is not None and kafka_stats.spans > kafka_spans:
                self.engine.metrics.spans_received("kafka", kafka_stats.spans - kafka_spans)
                kafka_spans = kafka_stats.spans

    def _counter(self, source: str) -> Callable[[int, int], None]:
        metrics = self.engine.metrics

        def count(accepted: int, rejected: int) -> None:
            metrics.spans_received(source, accepted)
            if rejected:
                metrics.spans_dropped("invalid", rejected)

        return count

    def _refused(self, reason: str) -> None:
        """A refused OTLP export: its spans were never read, so it counts once under its reason."""
        self.engine.metrics.spans_dropped(reason, 1)

    async def _start_app(self, tg: anyio.abc.TaskGroup, app: web.Application, addr: str, what: str,
                         *, serves_otlp: bool = False) -> web.AppRunner:
        """Serve ``app`` on ``addr`` until the task group ends; returns its runner (one site: see bound_port)."""
        # The OTLP handler decompresses itself under its size cap; aiohttp's own inflater would keep
        # inflating the rest of a gzip bomb after the 413.
        access: dict[str, Any] = {"access_log": None}
        if what == "api":  # the OTLP-only receiver keeps none: its failures are counted and logged already
            access = {"access_log": logging.getLogger("tracecanary.access"), "access_log_class": AccessLog}
        runner = web.AppRunner(app, handle_signals=False, auto_decompress=not serves_otlp, **access)
        await runner.setup()
        try:
            await start_site(runner, addr, what)
        except BaseException:
            await runner.cleanup()
            raise

        async def keep(task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await runner.cleanup()

        await tg.start(keep)
        return runner

    def _common_routes(self) -> list[web.RouteDef]:
        """/metrics and /hooks/github: served by `run`, and by `check` and `demo --once` when listening."""
        from tracecanary.daemon.observe.metrics import metrics_routes
        from tracecanary.daemon.web.github_hook import github_hook_routes

        hub = self.engine.services.github_events
        assert hub is not None
        github = self.engine.config.integrations.github
        return [*metrics_routes(self.engine.metrics, self._refresh_metrics),
                *github_hook_routes(hub, github.webhook_secret, allow_unsigned=github.allow_unsigned_webhooks,
                                    announce=self.engine.config.uses_github_webhooks())]

    async def _refresh_metrics(self) -> None:
        """At each scrape: the alert state of every probe (silences start and end on the clock). A store
        that fails keeps the last values (the store's own metrics and /readyz say why)."""
        if self.engine.alerts is None:
            return
        try:
            with anyio.fail_after(METRICS_REFRESH_TIMEOUT_S):
                states = await self.engine.alerts.alert_states(self.engine.config.probes)
        except Exception as e:
            log.debug("metrics.alert_state_unread error=%r", e)
            return
        self.engine.metrics.set_alert_states(states)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.engine.ready or (self.engine.ready_gate is not None and not self.engine.ready_gate()):
            return web.json_response({"status": "starting"}, status=503)
        body: dict[str, Any] = {"status": "ready", "in_flight": len(self.engine.runner.in_flight)}
        if self.engine.unready:
            body = {"status": "unready", "reasons": [{"name": name, "reason": reason}
                                                     for name, reason in sorted(self.engine.unready.items())]}
        if detail := [line for source in self.engine.readiness_details for line in source()]:
            body["detail"] = detail
        return web.json_response(body, status=503 if self.engine.unready else 200)


__all__ = ["COUNTER_SYNC_S", "METRICS_REFRESH_TIMEOUT_S", "HttpFront", "bound_port", "split_addr", "start_site"]
