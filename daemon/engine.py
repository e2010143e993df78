"""The engine both `run` and `check` use: store, trace buffer, span intake, runner, HTTP servers.

``async with Engine(config, overrides).started() as engine:`` opens everything inside one task group
(components start with ``tg.start()`` and report ready) and closes it all on exit. ``check`` is not
a second implementation: it starts the same engine without the scheduler.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import Tracer

from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.cluster.membership import Membership, Role, SingleMembership
from tracecanary.daemon.cluster.modes import membership_for
from tracecanary.daemon.cluster.timing import StandbyTiming
from tracecanary.daemon.config.links import host_of, render_links
from tracecanary.daemon.config.load import Config
from tracecanary.daemon.config.reload import needs_restart
from tracecanary.daemon.config.secrets import install_log_masking
from tracecanary.daemon.front import HttpFront
from tracecanary.daemon.observe.lag import LAG_INTERVAL_S, LAG_THRESHOLD_S, LagMonitor, tune_gc
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
from tracecanary.probes.base import ProbeResources
from tracecanary.probes.kafka import KafkaProducers
from tracecanary.probes.passive import PassiveWindows

if TYPE_CHECKING:
    from tracecanary.daemon.spans.pull import PullSource
    from tracecanary.daemon.spans.sentry import SentryTraceSource

log = logging.getLogger("tracecanary.engine")

RouteFactory = Callable[["Engine"], Sequence[web.AbstractRouteDef]]
"""Builds routes over a started engine (the daemon's API and dashboard)."""

RUNNER_SCOPE = "tracecanary.runner"


@dataclass
class Overrides:
    """CLI flags that override addresses for `run` and `check` alike."""

    listen: str | None = None
    otlp_http: str | None = None
    otlp_grpc: str | None = None
    """``none`` disables the gRPC receiver."""
    store: str | None = None


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
            self_tracer=self.own_tracer("tracecanary.daemon"),
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
        keys = ProbeCorrelateKeys(lambda: self.config.probes)
        member.attach(self.buffer, lambda: [p.id for p in self.config.probes], self.passive,
                      correlate_keys=keys, expects_linked=keys.expects_linked)
        self.hooks.append(member)
        if not self.store.add_finish_extra(member.outbox_statement):  # PostgreSQL (mode kafka requires it)
            log.warning("results store cannot write outbox rows with runs: each final run costs a round trip more")
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
            tracer=self.own_tracer("tracecanary.alerts"),
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
        await HttpFront(self).serve(tg)

    def own_tracer(self, name: str) -> Tracer | None:
        """A tracer for the daemon's own spans when they are exported (``telemetry.otlp_endpoint``), else None."""
        return self.provider.get_tracer(name) if self._exports_telemetry else None

    def set_unready(self, name: str, reason: str | None) -> None:
        """Hold /readyz at 503 for ``reason`` under ``name`` (one per component); None lifts it."""
        if reason is None:
            self.unready.pop(name, None)
        else:
            self.unready[name] = reason


def _correlation_attributes(config: Config) -> list[str]:
    keys = list(config.daemon.buffer.correlation_attributes)
    for p in config.probes:
        corr = p.expect.trace.correlate if p.expect.trace is not None else None
        if corr is not None and corr.attribute not in keys:
            keys.append(corr.attribute)
    return keys
