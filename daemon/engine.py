"""The engine both `run` and `check` use: store, trace buffer, span intake, runner, HTTP servers.

``async with Engine(config, overrides).started() as engine:`` opens everything inside one task group
(components start with ``tg.start()`` and report ready) and closes it all on exit. ``check`` is not
a second implementation: it starts the same engine without the scheduler.
"""

from __future__ import annotations

import errno
import gc
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.cluster.membership import Membership, Role, SingleMembership
from tracecanary.daemon.cluster.modes import membership_for
from tracecanary.daemon.cluster.timing import StandbyTiming
from tracecanary.daemon.config.links import host_of, render_links
from tracecanary.daemon.config.load import Config
from tracecanary.daemon.config.reload import needs_restart
from tracecanary.daemon.config.secrets import install_log_masking
from tracecanary.daemon.observe.lag import LAG_INTERVAL_S, LAG_THRESHOLD_S, LagMonitor
from tracecanary.daemon.observe.logs import AccessLog
from tracecanary.daemon.observe.metrics import Metrics
from tracecanary.daemon.observe.store_faults import StoreFaultReporter
from tracecanary.daemon.observe.telemetry import (
    add_span_sink,
    is_own_endpoint,
    otel_span_to_span,
    setup_telemetry,
)
from tracecanary.daemon.run.hooks import RunHook
from tracecanary.daemon.run.passive import PassiveJudge
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.receiver import OtlpSettings
from tracecanary.daemon.store.guard import GuardedStore, open_guarded
from tracecanary.daemon.watchers.base import EventHub, Services
from tracecanary.errors import StartupError
from tracecanary.probes.base import ProbeResources
from tracecanary.probes.kafka import KafkaProducers
from tracecanary.probes.passive import PassiveWindows

if TYPE_CHECKING:
    from tracecanary.daemon.spans.kafka import KafkaSourceStats
    from tracecanary.daemon.spans.pull import PullSource
    from tracecanary.daemon.spans.sentry import SentryTraceSource

log = logging.getLogger("tracecanary.engine")

RouteFactory = Callable[["Engine"], Sequence[web.AbstractRouteDef]]
"""Builds routes over a started engine (the daemon's API and dashboard)."""

RUNNER_SCOPE = "tracecanary.runner"
GC_GEN0_THRESHOLD = 10_000
"""Young-generation collection threshold once the engine runs (CPython's default: 700)."""
METRICS_REFRESH_TIMEOUT_S = 5.0
"""How long a scrape waits for the alert states before it answers with the last ones."""
COUNTER_SYNC_S = 5.0
"""How often the buffer's eviction count and the Kafka source's span count are folded into /metrics."""


def tune_gc() -> None:
    """Make the cyclic GC cheap for a long-running engine (idempotent, process-wide).

    Startup objects (modules, configs, compiled expectations) live forever: ``gc.freeze()`` moves
    them out of every later collection, whose cost (and pause on the event loop) scales with what it
    scans. A run allocates thousands of short-lived containers that refcounting frees; collecting the
    young generation every 700 allocations instead of every 10 000 costs ~10 % of the CPU and tail
    latency (measured with benchmarks/e2e.py).
    """
    gc.freeze()
    threshold = gc.get_threshold()
    if threshold[0] and threshold[0] < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, *threshold[1:])


@dataclass
class Overrides:
    """CLI flags that override addresses for `run` and `check` alike."""

    listen: str | None = None
    otlp_http: str | None = None
    otlp_grpc: str | None = None
    """``none`` disables the gRPC receiver."""
    store: str | None = None


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


@dataclass
class Engine:
    """The constructor arguments, then what ``started()`` builds: callers read it and change it only
    through methods (``apply_config`` on reload)."""

    config: Config
    """Replaced only through :meth:`apply_config` (the daemon's reload)."""
    overrides: Overrides = field(default_factory=Overrides)
    serve_api: bool = True
    daemon_mode: bool = False
    """The daemon alerts and sends Sentry check-ins; a `check` pass reports through its exit code."""
    defer_alerting: bool = False
    """The daemon starts alerting itself when its role acts (:meth:`start_alerting`); otherwise the
    engine does at start (daemon_mode)."""
    standby_timing: StandbyTiming = field(default_factory=StandbyTiming)
    """The election's durations in ``daemon.cluster.mode: standby`` (tests shorten them)."""
    routes: Sequence[RouteFactory] = ()
    """Routes beyond the engine's own (/healthz, /readyz, /metrics, /hooks/github): the daemon's API and
    dashboard. Each factory is called once the components exist."""
    ready_gate: Callable[[], bool] | None = None
    """A condition /readyz waits for besides the engine's start (the daemon's: its scheduler runs)."""
    gc_tuning: bool = True
    """Tune the process's cyclic GC once started (see :func:`tune_gc`)."""
    lag_threshold_s: float = LAG_THRESHOLD_S
    """Event-loop stalls longer than this are logged as warnings naming where the loop was (observe/lag.py);
    every lag feeds ``tracecanary_event_loop_lag_seconds``."""
    lag_interval_s: float = LAG_INTERVAL_S
    """Period of the lag monitor's ticker."""
    lag_monitor: LagMonitor = field(init=False)
    store: GuardedStore = field(init=False)
    """The results store behind its guard (faults counted, reported, refused runs kept for retry)."""
    buffer: TraceBuffer = field(init=False)
    passive: PassiveJudge = field(init=False)
    """Judges real traffic for ``kind: passive`` probes (a tap on the buffer while any is configured)."""
    runner: Runner = field(init=False)
    services: Services = field(init=False)
    session: aiohttp.ClientSession = field(init=False)
    app: web.Application = field(init=False)
    provider: TracerProvider = field(init=False)
    kafka_producers: KafkaProducers = field(init=False)
    addresses: dict[str, str] = field(init=False, default_factory=dict)
    """Bound addresses by role (``api``, ``otlp_http``, ``otlp_grpc``): the real port when 0 was asked."""
    ready: bool = field(init=False, default=False)
    unready: dict[str, str] = field(init=False, default_factory=dict)
    """Named reasons /readyz answers 503 for while the engine runs (``store``: the results store fails)."""
    readiness_details: list[Callable[[], list[str]]] = field(init=False, default_factory=list)
    """Sources of /readyz ``detail`` lines (e.g. an alert channel failing with no other channel to say so);
    they inform, they do not make the daemon unready."""
    hooks: list[RunHook] = field(init=False, default_factory=list)
    metrics: Metrics = field(init=False)
    alerts: AlertManager | None = field(init=False, default=None)
    membership: Membership = field(init=False, default_factory=SingleMembership)
    """This replica's role in its cluster (``daemon.cluster``); single for `check`."""
    sentry_source: SentryTraceSource | None = field(init=False, default=None)
    pull_sources: dict[str, PullSource] = field(init=False, default_factory=dict)
    """Jaeger and Tempo, each when its integration has a url (Sentry is ``sentry_source``)."""
    _exports_telemetry: bool = field(init=False, default=False)

    @property
    def otlp_settings(self) -> OtlpSettings:
        otlp = self.config.daemon.otlp
        update: dict[str, Any] = {}
        if self.overrides.otlp_http is not None:
            update["http"] = None if self.overrides.otlp_http == "none" else self.overrides.otlp_http
        if self.overrides.otlp_grpc is not None:
            update["grpc"] = None if self.overrides.otlp_grpc == "none" else self.overrides.otlp_grpc
        return otlp.model_copy(update=update) if update else otlp

    @property
    def listen(self) -> str:
        return self.overrides.listen or self.config.daemon.listen

    def store_url(self, tmpdir: str | None) -> str:
        if self.overrides.store:
            return self.overrides.store
        if tmpdir is not None:
            return f"sqlite:///{Path(tmpdir) / 'check.db'}"
        return self.config.daemon.store

    @asynccontextmanager
    async def started(self, *, temporary_store: bool = False) -> AsyncIterator[Engine]:
        install_log_masking(self.config.secrets())  # the process's log lines: masked from here on
        with tempfile.TemporaryDirectory(prefix="tracecanary-") as tmp:
            self.metrics = Metrics()
            reporter = StoreFaultReporter(self.metrics, self.set_unready, lambda: self.alerts)
            url = self.store_url(tmp if temporary_store else None)
            if self.daemon_mode:
                self.membership, url = membership_for(self.config.daemon.cluster, url, timing=self.standby_timing,
                                                      on_deposed=lambda _: self.metrics.cluster_depositions.inc())
            self.store = await open_guarded(url, reporter, self.config.daemon.store_health)
            self.store.on_fenced = self.metrics.write_fenced
            try:
                async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
                    self.session = session
                    await tg.start(self.store.run)
                    await tg.start(self.membership.run)
                    tg.start_soon(self._follow_role)
                    await self._build(tg)
                    self.lag_monitor = LagMonitor(interval_s=self.lag_interval_s, threshold_s=self.lag_threshold_s,
                                                  observe=self.metrics.loop_lag)
                    await tg.start(self.lag_monitor.run)
                    if self.gc_tuning:
                        tune_gc()
                    self.ready = True
                    try:
                        yield self
                    finally:
                        self.ready = False
                        tg.cancel_scope.cancel()
                        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                            await self.kafka_producers.aclose()
                        # Shielded: in the cancelled task group the final flush of own spans would be skipped.
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(self.provider.shutdown)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.store.aclose()

    async def _build(self, tg: anyio.abc.TaskGroup) -> None:
        d = self.config.daemon
        self.buffer = TraceBuffer(
            max_spans=d.buffer.max_spans, max_bytes=d.buffer.max_bytes, retention_s=d.buffer.retention,
            correlation_attributes=_correlation_attributes(self.config),
        )
        self.services = Services(github_events=self._event_hub("github"), slack_events=None)
        self.kafka_producers = KafkaProducers()
        self.metrics.set_buffer_gauge(lambda: float(self.buffer.stats().spans))
        self.metrics.register(self.config.probes)
        otlp = self.otlp_settings
        sources = [name for name, on in (("otlp_http", otlp.http), ("otlp_grpc", otlp.grpc), ("kafka", d.kafka)) if on]
        self.metrics.register_intake(sources, self.config.extra.alerts.channels if self.daemon_mode else ())
        self.passive = PassiveJudge(d.buffer.max_spans, on_judged=self.metrics.passive_trace)
        self._follow_passive(self.config)
        tg.start_soon(self.passive.run)
        self.hooks.append(self.metrics)
        mint, windows = self._attach_kafka_member()
        self.provider = self._telemetry()
        await self._start_components(tg)
        self.runner = Runner(RunnerDeps(
            store=self.store, buffer=self.buffer, session=self.session, integrations=self.config.integrations,
            hooks=self.hooks, services=self.services, max_concurrent_runs=d.max_concurrent_runs,
            poll_interval_s=d.poll_interval, tracer=self.provider.get_tracer(RUNNER_SCOPE),
            self_tracer=self.provider.get_tracer("tracecanary.daemon") if self._exports_telemetry else None,
            links=self.links_for, sentry_source=self.sentry_source, pull_sources=self.pull_sources,
            resources=ProbeResources(kafka_producers=self.kafka_producers, passive=windows or self.passive),
            secrets=self.config.secrets(), mint_trace_id=mint, announce_correlation=self._announce_correlation(),
        ))
        await self._serve_http(tg)
        # what the GitHub watcher's `watch: auto` needs to know whether GitHub can deliver to /hooks/github
        self.services.hook_address, self.services.public_url = self.addresses.get("api"), d.public_url
        self.membership.address = self.addresses.get("api")

    def _event_hub(self, kind: str) -> EventHub:
        """Where received side-effect events go: this process's watchers, or in mode kafka every member's
        (the member whose run watches for the event may not be the one Slack or GitHub reached)."""
        if self.membership.mode != "kafka":
            return EventHub()
        from tracecanary.daemon.cluster.kafka_cluster import KafkaClusterMembership

        assert isinstance(self.membership, KafkaClusterMembership)
        return self.membership.relay_hub(kind)

    def _announce_correlation(self) -> Callable[[str, str, str], None] | None:
        if self.membership.mode != "kafka":
            return None
        from tracecanary.daemon.cluster.kafka_cluster import KafkaClusterMembership

        assert isinstance(self.membership, KafkaClusterMembership)
        return self.membership.announce_correlation

    def _attach_kafka_member(self) -> tuple[Callable[[], str] | None, PassiveWindows | None]:
        """Mode kafka: the member reads spans into the buffer (and the passive judge's sampled traffic),
        publishes final runs (a run hook) and mints the runs' trace ids; its passive runs sum every
        member's counts; the gauge counts the probes it fires. Other modes: nothing."""
        member = self.membership
        if member.mode != "kafka":
            return None, None
        from tracecanary.daemon.cluster.kafka_cluster import KafkaClusterMembership  # aiokafka: when used
        from tracecanary.daemon.cluster.kafka_park import ProbeCorrelateKeys

        assert isinstance(member, KafkaClusterMembership)
        member.attach(self.buffer, lambda: [p.id for p in self.config.probes], self.passive,
                      correlate_keys=ProbeCorrelateKeys(lambda: self.config.probes))
        self.hooks.append(member)
        self.metrics.set_owned_probes_gauge(lambda: float(member.owned_probes()))
        self.metrics.set_kafka_member_metrics(
            lambda: float("nan") if member.results_idempotent is None else float(member.results_idempotent),
            member.park_counts)
        return member.mint_trace_id, member.passive_windows

    async def _start_components(self, tg: anyio.abc.TaskGroup) -> None:
        """Alerts, the Slack Socket Mode listener and Sentry check-ins, each when configured."""
        cfg = self.config
        if self.daemon_mode:
            self.alerts = self.new_alerts()
            self.readiness_details.append(lambda: self.alerts.readiness_detail() if self.alerts else [])
            if not self.defer_alerting:
                await self.start_alerting(tg)
        slack = cfg.integrations.slack
        if slack.app_token:
            from tracecanary.daemon.watchers.slack import SlackSocketListener

            self.services.slack_events = self._event_hub("slack")
            listener = SlackSocketListener(self.services.slack_events, app_token=slack.app_token,
                                           base_url=slack.base_url)
            await tg.start(listener.run)
        sentry = cfg.integrations.sentry
        if sentry.dsn and self.daemon_mode:
            from tracecanary import __version__
            from tracecanary.daemon.observe.crons import CronHook
            from tracecanary.daemon.observe.sentry import SecretScrubber, init_sentry

            init_sentry(sentry.dsn, environment="tracecanary", release=f"tracecanary@{__version__}",
                        scrubber=SecretScrubber(cfg.secrets()))
            self.hooks.append(CronHook())
        if sentry.org and sentry.token:
            from tracecanary.daemon.spans.sentry import SentryTraceSource

            self.sentry_source = SentryTraceSource(self.session, sentry)
        from tracecanary.daemon.spans.sources import build_source, configured

        self.pull_sources = {name: build_source(name, self.session, cfg.integrations)
                             for name in configured(cfg.integrations) if name != "sentry"}
        for source in (self.sentry_source, *self.pull_sources.values()):
            if source is not None:
                source.observe = self.metrics.trace_source_fetched
        self.metrics.register_pull_sources(configured(cfg.integrations))

    def new_alerts(self) -> AlertManager:
        """A fresh alert manager (the one before, if any, leaves the run hooks): built at start, and again
        each time a replica becomes active (a stopped manager's channels are closed)."""
        cfg = self.config
        alerts = AlertManager(
            self.store, cfg.extra.alerts, dashboard_url=self.dashboard_url,
            integrations=cfg.integrations, on_attempt=self.metrics.alert_sent,
            tracer=self.provider.get_tracer("tracecanary.alerts") if self._exports_telemetry else None,
        )
        if self.alerts in self.hooks:
            self.hooks.remove(self.alerts)
        self.hooks.append(alerts)
        return alerts

    async def start_alerting(self, tg: anyio.abc.TaskGroup) -> None:
        """Deliver (re-queue the outbox, run the lanes) in ``tg`` and catch up on missed runs."""
        assert self.alerts is not None
        await tg.start(self.alerts.run)
        await self.alerts.reconcile(self.config.probes)

    async def _follow_role(self) -> None:
        """``tracecanary_cluster_role`` and /readyz follow the role: a standby is unready (``standby``)."""
        async for role in self.membership.roles():
            self.metrics.set_role(role.value, [r.value for r in Role])
            self.set_unready("cluster", "standby" if role is Role.STANDBY else None)

    @property
    def dashboard_url(self) -> str:
        return self.config.daemon.public_url or f"http://{self.addresses.get('api', self.listen)}"

    def _telemetry(self) -> TracerProvider:
        """The daemon's own tracer provider; probe spans also go straight into the buffer.

        Only the runner's spans (probe root and client spans) enter the buffer, so the judged tree
        has no false orphan; receiver or alert spans never do (no feedback loop).
        """
        t = self.config.daemon.telemetry
        otlp = self.otlp_settings
        own = [a for a in (otlp.http, otlp.grpc) if a]
        provider = setup_telemetry(t.otlp_endpoint, service_name=t.service_name, own_receiver_addrs=own)
        # Spans of the daemon's own work only matter when exported: without an exporter, skip them.
        self._exports_telemetry = bool(t.otlp_endpoint) and not is_own_endpoint(t.otlp_endpoint or "", own)
        buffer = self.buffer

        def sink(rs: ReadableSpan) -> None:
            scope = rs.instrumentation_scope
            if scope is not None and scope.name == RUNNER_SCOPE:
                buffer.add_spans([otel_span_to_span(rs)])

        add_span_sink(provider, sink)
        return provider

    async def apply_config(self, config: Config) -> list[str]:
        """A reloaded config: links, metrics, what the API shows, alerting (policies, channels,
        silences) and ``daemon.store_health`` follow it; the running components (receivers, store,
        runner, integrations) keep what they were started with. Returns the changed settings that
        only a restart applies."""
        old, self.config = self.config, config
        self.metrics.retain(config.probes)
        self._follow_passive(config)
        # Runs started under the old config may still finish: mask the old secrets and the new ones.
        self.runner.deps.secrets = self.runner.deps.secrets | config.secrets()
        self.store.settings = config.daemon.store_health  # read at each check and each kept run
        if self.alerts is not None:
            await self.alerts.reconfigure(config.extra.alerts, config.integrations, config.probes,
                                          dashboard_url=self.dashboard_url, close_orphans=self.membership.role.acts)
        return needs_restart(old, config)

    def _follow_passive(self, config: Config) -> None:
        """The passive judge follows the config's passive probes; it taps the buffer only while there are some."""
        self.passive.configure(config.probes)
        self.buffer.remove_tap(self.passive)
        if self.passive.active:
            self.buffer.add_tap(self.passive)

    def links_for(self, trace_id: str, run_id: str, probe_id: str) -> dict[str, str]:
        """The run's trace links (the runner's :class:`LinkRenderer`): rendered once per run."""
        sentry = self.config.integrations.sentry
        return render_links(self.config.extra.links, trace_id=trace_id, run_id=run_id, probe_id=probe_id,
                            org=sentry.org, host=host_of(sentry.api_url) if sentry.api_url else None)

    async def _serve_http(self, tg: anyio.abc.TaskGroup) -> None:
        from tracecanary.daemon.spans.receiver import Ingest, otlp_routes

        otlp = self.otlp_settings
        self.app = web.Application(client_max_size=otlp.max_body + 1)
        self.app.add_routes([web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)])
        self.app.add_routes(self._common_routes())
        for make in self.routes:
            self.app.add_routes(make(self))
        shared = otlp.http is not None and otlp.http == self.listen
        self_tracer = self.provider.get_tracer("tracecanary.receiver") if self._exports_telemetry else None
        http_ingest = Ingest(self.buffer, otlp, on_spans=self._counter("otlp_http"), tracer=self_tracer,
                             on_refused=self._refused)
        if shared:
            self.app.add_routes(otlp_routes(self.buffer, otlp, http_ingest))
        if self.serve_api or shared:
            app_runner = await self._start_app(tg, self.app, self.listen, "api", serves_otlp=shared)
            self.addresses["api"] = f"{split_addr(self.listen)[0]}:{bound_port(app_runner)}"
        if otlp.http is not None and not shared:
            otlp_app = web.Application(client_max_size=otlp.max_body + 1)
            otlp_app.add_routes(otlp_routes(self.buffer, otlp, http_ingest))
            app_runner = await self._start_app(tg, otlp_app, otlp.http, "otlp http receiver", serves_otlp=True)
            self.addresses["otlp_http"] = f"{split_addr(otlp.http)[0]}:{bound_port(app_runner)}"
        elif shared:
            self.addresses["otlp_http"] = self.addresses["api"]
        if otlp.grpc is not None:
            from tracecanary.daemon.spans.grpc import serve_otlp_grpc

            grpc_ingest = Ingest(self.buffer, otlp, on_spans=self._counter("otlp_grpc"), tracer=self_tracer,
                                 on_refused=self._refused)
            port = await tg.start(partial(serve_otlp_grpc, ingest=grpc_ingest), self.buffer, otlp)
            self.addresses["otlp_grpc"] = f"{split_addr(otlp.grpc)[0]}:{port or split_addr(otlp.grpc)[1]}"
        kafka_stats = None
        if self.config.daemon.kafka is not None:
            from tracecanary.daemon.spans.kafka import KafkaSourceStats, run_kafka_source

            kafka_stats = KafkaSourceStats()
            await tg.start(partial(run_kafka_source, stats=kafka_stats), self.buffer, self.config.daemon.kafka)
        tg.start_soon(self._sync_counters, kafka_stats)

    async def _sync_counters(self, kafka_stats: KafkaSourceStats | None) -> None:
        """Fold the buffer's eviction count and the Kafka source's span count into /metrics."""
        evicted = kafka_spans = 0
        while True:
            await anyio.sleep(COUNTER_SYNC_S)
            stats = self.buffer.stats()
            if stats.evicted_spans > evicted:
                self.metrics.spans_dropped("evicted", stats.evicted_spans - evicted)
                evicted = stats.evicted_spans
            if kafka_stats is not None and kafka_stats.spans > kafka_spans:
                self.metrics.spans_received("kafka", kafka_stats.spans - kafka_spans)
                kafka_spans = kafka_stats.spans

    def _counter(self, source: str) -> Callable[[int, int], None]:
        metrics = self.metrics

        def count(accepted: int, rejected: int) -> None:
            metrics.spans_received(source, accepted)
            if rejected:
                metrics.spans_dropped("invalid", rejected)

        return count

    def _refused(self, reason: str) -> None:
        """A refused OTLP export: its spans were never read, so it counts once under its reason."""
        self.metrics.spans_dropped(reason, 1)

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

        hub = self.services.github_events
        assert hub is not None
        github = self.config.integrations.github
        return [*metrics_routes(self.metrics, self._refresh_metrics),
                *github_hook_routes(hub, github.webhook_secret, allow_unsigned=github.allow_unsigned_webhooks,
                                    announce=self.config.uses_github_webhooks())]

    async def _refresh_metrics(self) -> None:
        """At each scrape: the alert state of every probe (silences start and end on the clock). A store
        that fails keeps the last values (the store's own metrics and /readyz say why)."""
        if self.alerts is None:
            return
        try:
            with anyio.fail_after(METRICS_REFRESH_TIMEOUT_S):
                states = await self.alerts.alert_states(self.config.probes)
        except Exception as e:
            log.debug("metrics.alert_state_unread error=%r", e)
            return
        self.metrics.set_alert_states(states)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def set_unready(self, name: str, reason: str | None) -> None:
        """Hold /readyz at 503 for ``reason`` under ``name`` (one per component); None lifts it."""
        if reason is None:
            self.unready.pop(name, None)
        else:
            self.unready[name] = reason

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.ready or (self.ready_gate is not None and not self.ready_gate()):
            return web.json_response({"status": "starting"}, status=503)
        body: dict[str, Any] = {"status": "ready", "in_flight": len(self.runner.in_flight)}
        if self.unready:
            body = {"status": "unready", "reasons": [{"name": name, "reason": reason}
                                                     for name, reason in sorted(self.unready.items())]}
        if detail := [line for source in self.readiness_details for line in source()]:
            body["detail"] = detail
        return web.json_response(body, status=503 if self.unready else 200)


def _correlation_attributes(config: Config) -> list[str]:
    keys = list(config.daemon.buffer.correlation_attributes)
    for p in config.probes:
        corr = p.expect.trace.correlate if p.expect.trace is not None else None
        if corr is not None and corr.attribute not in keys:
            keys.append(corr.attribute)
    return keys
