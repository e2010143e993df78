"""Prometheus metrics: a RunHook plus counters the span intake, scheduler and alerts feed.

Names follow blackbox_exporter and Grafana Synthetic Monitoring where they overlap (``probe_success``,
``probe_duration_seconds``) so existing dashboards and alert rules carry over. Labels are low
cardinality only: probe ids, kinds, verdicts, finding types, sources, reasons, channels — never run or
trace ids. Everything is registered in the instance's own ``CollectorRegistry`` (not the process
global), so tests and several engines in one process never collide. The label sets each metric has
seen are noted here (prometheus_client offers no public listing), so a reload can forget gone probes.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import anyio
from aiohttp import web
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from tracecanary import __version__
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.spans.pull import FETCH_OUTCOMES
from tracecanary.daemon.store.base import RunRecord, RunStatus, Store
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.metrics")

DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
SPAN_COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 20000)
LATENESS_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
M = TypeVar("M", Gauge, Counter, Histogram)
RUN_OUTCOMES = (*(str(v) for v in Verdict), "aborted", "skipped")
"""The ``verdict`` label values of ``tracecanary_runs_total``."""
DROP_REASONS = ("buffer_full", "evicted", "invalid", "unauthorized", "unsupported", "throttled", "too_large",
                "undecodable", "timeout", "disconnected")
"""The ``reason`` label values of ``tracecanary_spans_dropped_total`` registered at start."""
DELIVERY_OUTCOMES = ("sent", "retry", "failed", "dropped")


class Metrics:
    """The daemon's metrics; implements RunHook (``on_run_started`` / ``on_run_finished``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No ``*_created`` series: in the text format Prometheus stores each as a gauge of its own (one per
        # counter and histogram child, ~13 % of all series here), named like a count (tracecanary_runs_created).
        # Process-wide and idempotent; the ignore: prometheus_client leaves this function unannotated.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        self.probe_success = Gauge(
            "probe_success", "1 when the probe's last judged final verdict passed (pass or degraded), else 0; "
            "an unknown verdict (no telemetry) leaves it as it was.", ["probe", "kind"], registry=r)
        self.probe_unknown = Gauge(
            "tracecanary_probe_unknown", "1 while the probe's last final verdict is unknown: none of the services "
            "its trace expectation names sent spans (the telemetry pipeline is suspect), else 0.",
            ["probe", "kind"], registry=r)
        self.probe_duration = Histogram(
            "probe_duration_seconds", "Run duration, trigger to verdict, of every finished attempt.",
            ["probe", "kind"], buckets=DURATION_BUCKETS_S, registry=r)
        self.runs = Counter(
            "tracecanary_runs", "Finished runs (every attempt) by verdict (pass, degraded, unknown, fail, error); "
            "aborted runs count as 'aborted', runs skipped for an unmet requires: precondition as 'skipped'.",
            ["probe", "kind", "verdict"], registry=r)
        self.findings = Counter(
            "tracecanary_findings", "Findings reported by runs, by probe and finding type.", ["probe", "type"],
            registry=r)
        self.trace_spans = Histogram(
            "tracecanary_trace_spans", "Spans judged per run (runs with trace expectations).",
            ["probe", "kind"], buckets=SPAN_COUNT_BUCKETS, registry=r)
        self.time_to_verdict = Histogram(
            "tracecanary_time_to_verdict_seconds", "From the trigger until the verdict was known.",
            ["probe", "kind"], buckets=DURATION_BUCKETS_S, registry=r)
        self.spans_received_total = Counter(
            "tracecanary_spans_received", "Spans taken in, by source (otlp_http, otlp_grpc, kafka, sentry, self).",
            ["source"], registry=r)
        self.spans_dropped_total = Counter(
            "tracecanary_spans_dropped", "Spans dropped, by reason (buffer_full, evicted, invalid …). An OTLP export "
            "refused before its spans were read counts once: unauthorized, unsupported, throttled, too_large, "
            "undecodable, timeout, disconnected.",
            ["reason"], registry=r)
        self.buffer_spans = Gauge("tracecanary_buffer_spans", "Spans held in the trace buffer now.", registry=r)
        self.alerts_sent = Counter(
            "tracecanary_alerts_sent", "Alert delivery attempts by channel and outcome (sent, retry, failed, dropped).",
            ["channel", "outcome"], registry=r)
        self.schedule_lateness = Histogram(
            "tracecanary_schedule_lateness_seconds", "How late the scheduler fired a run after its planned time.",
            ["probe"], buckets=LATENESS_BUCKETS_S, registry=r)
        self.runs_skipped = Counter(
            "tracecanary_runs_skipped", "Scheduled runs skipped because the previous run was still going "
            "(overlap: skip).", ["probe"], registry=r)
        self.store_errors = Counter(
            "tracecanary_store_errors", "Failed results-store calls by operation (insert_run, finish_run, health …).",
            ["op"], registry=r)
        self.runs_lost = Counter(
            "tracecanary_runs_lost", "Run results never stored: the store failed for longer, or more of them, "
            "than daemon.store_health allows (each is logged with its run id).", registry=r)
        self.store_up = Gauge(
            "tracecanary_store_up", "1 while the results store works, 0 while it fails (see /readyz for why).",
            registry=r)
        self.store_up.set(1.0)
        self.event_loop_lag = Histogram(
            "tracecanary_event_loop_lag_seconds", "How late the event loop ran a periodic timer: the time one "
            "step or a garbage collection held it (observe/lag.py; steps stay under 20 ms).",
            buckets=LOOP_LAG_BUCKETS_S, registry=r)
        self.cluster_role = Gauge(
            "tracecanary_cluster_role", "1 for this replica's current cluster role (single, active, standby, member), "
            "0 for the others.", ["role"], registry=r)
        self.cluster_fenced_writes = Counter(
            "tracecanary_cluster_fenced_writes", "Writes refused because this replica no longer held the leader "
            "epoch (a deposed active replica's late writes), by store operation.", ["op"], registry=r)
        self.cluster_depositions = Counter(
            "tracecanary_cluster_depositions", "Times this replica lost the active role (its lock connection failed "
            "or went silent).", registry=r)
        self.passive_traces = Counter(
            "tracecanary_passive_traces", "Entry traces judged by kind: passive probes, by verdict (dropped: not "
            "judged, the passive judge was over its span budget).", ["probe", "verdict"], registry=r)
        self.trace_source_fetches = Counter(
            "tracecanary_trace_source_fetches", "Trace fetches from pull sources (sentry, jaeger, tempo) by outcome: "
            "found, not_found (not there yet), rate_limited (429), auth (401/403: polling stops), error (network, "
            "5xx, timeout, unreadable answer).", ["source", "outcome"], registry=r)
        self.last_run = Gauge(
            "probe_last_run_timestamp_seconds", "Unix time the probe's latest run (any attempt, any outcome) "
            "finished; 0 before its first. Age: time() - probe_last_run_timestamp_seconds.", ["probe"], registry=r)
        self.alert_state = Gauge(
            "tracecanary_alert_state", "The probe's alert state, read at scrape time: 0 ok, 1 failing (an "
            "incident is open, failing or degraded), 2 silenced (an active silence covers the probe).",
            ["probe"], registry=r)
        Info("tracecanary_build", "The running tracecanary: version and Python.", registry=r).info(
            {"version": __version__, "python_version": platform.python_version(),
             "python_implementation": platform.python_implementation()})
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_* (shared)
            r.register(standard)
        self._series: dict[Gauge | Counter | Histogram, dict[tuple[str, ...], Any]] = {m: {} for m in (
            self.probe_success, self.probe_unknown, self.probe_duration, self.runs, self.trace_spans,
            self.time_to_verdict, self.schedule_lateness, self.runs_skipped, self.findings, self.last_run,
            self.alert_state, self.passive_traces)}
        """The children of the probe-labelled metrics by label values: what ``retain`` prunes."""

    def register(self, probes: Iterable[ProbeSpec]) -> None:
        """Create each probe's series before its first event (counters and histograms at 0, the alert
        state ok, the last run time 0), so rates and alert rules see the first increment. Idempotent.
        ``probe_success`` is the exception: 0 would read as failing, so it waits for a verdict (or
        :meth:`restore`). Findings are per type, created as they occur."""
        for p in probes:
            kind = p.kind
            for verdict in RUN_OUTCOMES:
                self._child(self.runs, p.id, kind, verdict)
            self._child(self.probe_unknown, p.id, kind)
            self._child(self.probe_duration, p.id, kind)
            self._child(self.time_to_verdict, p.id, kind)
            if p.expect.trace is not None:
                self._child(self.trace_spans, p.id, kind)
            self._child(self.schedule_lateness, p.id)
            self._child(self.runs_skipped, p.id)
            self._child(self.last_run, p.id)
            self._child(self.alert_state, p.id)

    def register_intake(self, sources: Iterable[str], channels: Iterable[str]) -> None:
        """The span-intake and alert-delivery counters at 0 for the configured sources and channels, and
        the known drop reasons, so a rate or an alert rule sees their first increment."""
        for source in sources:
            self.spans_received_total.labels(source)
        for reason in DROP_REASONS:
            self.spans_dropped_total.labels(reason)
        for channel in channels:
            for outcome in DELIVERY_OUTCOMES:
                self.alerts_sent.labels(channel, outcome)

    def register_pull_sources(self, sources: Iterable[str]) -> None:
        """The pull-source fetch counters at 0 for the configured sources, every outcome."""
        for source in sources:
            for outcome in FETCH_OUTCOMES:
                self.trace_source_fetches.labels(source, outcome)

    def trace_source_fetched(self, source: str, outcome: str) -> None:
        """One fetch from a pull source ended with ``outcome`` (``PullSource.observe``)."""
        self.trace_source_fetches.labels(source, outcome).inc()

    async def restore(self, store: Store, probes: Iterable[ProbeSpec], *, look_back: int = 20) -> None:
        """After a restart: each probe's last run time and last judged verdict from the store, so a
        dashboard does not lose them until the next run (a store that fails leaves them unset)."""
        for p in probes:
            try:
                runs = await store.list_runs(p.id, limit=look_back)
            except Exception as e:  # the store's own faults are reported by the store guard
                log.warning("metrics.restore_failed probe=%s error=%s", p.id, e)
                return
            done = [run for run in runs if run.finished_ns is not None]
            if done:
                self._child(self.last_run, p.id).set(max(run.finished_ns or 0 for run in done) / 1e9)
            judged = next((run for run in runs if run.final and run.verdict is not None), None)
            if judged is not None and judged.verdict is not None:
                unknown = judged.verdict is Verdict.UNKNOWN
                self._child(self.probe_unknown, p.id, p.kind).set(1.0 if unknown else 0.0)
            known = next((run.verdict for run in runs if run.final and run.verdict not in (None, Verdict.UNKNOWN)),
                         None)
            if known is not None:
                self._child(self.probe_success, p.id, p.kind).set(1.0 if known.ok else 0.0)

    def set_alert_states(self, states: Mapping[str, int]) -> None:
        """``tracecanary_alert_state`` per probe id (0 ok, 1 failing, 2 silenced)."""
        for probe_id, state in states.items():
            self._child(self.alert_state, probe_id).set(float(state))

    # --- RunHook ---------------------------------------------------------------------------------
    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        return None

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        self.record_run(probe, run)

    def record_run(self, probe: ProbeSpec, run: RunRecord) -> None:
        """Synchronous core of the hook (also used by ``check`` and benchmarks)."""
        kind = probe.kind
        if run.finished_ns is not None:
            self._child(self.last_run, probe.id).set(run.finished_ns / 1e9)
        if run.retry_aborted is not None:  # a chain ended without its retry: the attempt was counted already
            if run.verdict is not None:
                self._child(self.probe_success, probe.id, kind).set(1.0 if run.verdict.ok else 0.0)
            return
        if run.status is RunStatus.SKIPPED:  # a requires: precondition unmet: neither pass nor failure
            self._child(self.runs, probe.id, kind, "skipped").inc()
            return
        if run.status is RunStatus.ABORTED or run.verdict is None:
            self._child(self.runs, probe.id, kind, "aborted").inc()
            return
        self._child(self.runs, probe.id, kind, str(run.verdict)).inc()
        for finding in run.findings:
            self._child(self.findings, probe.id, finding.type).inc()
        if run.duration_s is not None:
            self._child(self.probe_duration, probe.id, kind).observe(run.duration_s)
        if run.time_to_verdict_s is not None:
            self._child(self.time_to_verdict, probe.id, kind).observe(run.time_to_verdict_s)
        if probe.expect.trace is not None or run.span_count:
            self._child(self.trace_spans, probe.id, kind).observe(run.span_count)
        if run.final:
            unknown = run.verdict is Verdict.UNKNOWN
            self._child(self.probe_unknown, probe.id, kind).set(1.0 if unknown else 0.0)
            if not unknown:  # could not judge: the probe's success is not known to have changed
                self._child(self.probe_success, probe.id, kind).set(1.0 if run.verdict.ok else 0.0)

    # --- feeds from other components -------------------------------------------------------------
    def spans_received(self, source: str, n: int) -> None:
        if n:
            self.spans_received_total.labels(source).inc(n)

    def spans_dropped(self, reason: str, n: int) -> None:
        if n:
            self.spans_dropped_total.labels(reason).inc(n)

    def set_owned_probes_gauge(self, fn: Callable[[], float]) -> None:
        """Mode kafka: ``tracecanary_owned_probes`` reads how many probes this member fires now."""
        Gauge("tracecanary_owned_probes", "Probes this member fires now (mode kafka: its partitions' probes "
              "whose lease it holds).", registry=self.registry).set_function(fn)

    def set_kafka_member_metrics(self, results_idempotent: Callable[[], float],
                                 correlate_parked: Callable[[], Mapping[str, int]]) -> None:
        """Mode kafka: ``tracecanary_cluster_results_idempotent`` and ``tracecanary_cluster_correlate_parked_total``
        read the member's state at scrape time."""
        Gauge("tracecanary_cluster_results_idempotent", "1 when this member publishes results with an idempotent "
              "producer; 0 when the broker refused InitProducerId (tansu) and it fell back to a plain one (a send "
              "retried within one session may repeat a run on results_topic); NaN before it started.",
              registry=self.registry).set_function(results_idempotent)
        self.registry.register(_CountsCollector(
            "tracecanary_cluster_correlate_parked", "Foreign span messages parked for a late `correlate` "
            "value or `linked` trace announcement, by outcome: parked, released (sent to the owner when it came), expired (nobody "
            "announced it: real traffic), overflowed (dropped by the bound before its window ended: a late "
            "announcement misses it).", "outcome", correlate_parked))

    def set_buffer_gauge(self, fn: Callable[[], float]) -> None:
        """Read the buffer's size at scrape time (no bookkeeping on the hot path)."""
        self.buffer_spans.set_function(fn)

    def lateness(self, probe_id: str, seconds: float) -> None:
        self._child(self.schedule_lateness, probe_id).observe(max(0.0, seconds))

    def passive_trace(self, probe_id: str, verdict: str) -> None:
        """One entry trace judged (or dropped) by a passive probe."""
        self._child(self.passive_traces, probe_id, verdict).inc()

    def skipped(self, probe_id: str) -> None:
        self._child(self.runs_skipped, probe_id).inc()

    def store_error(self, op: str) -> None:
        self.store_errors.labels(op).inc()

    def lost_runs(self, n: int) -> None:
        if n:
            self.runs_lost.inc(n)

    def loop_lag(self, seconds: float) -> None:
        """One tick of the event-loop lag monitor."""
        self.event_loop_lag.observe(seconds)

    def set_role(self, role: str, roles: Iterable[str]) -> None:
        """``tracecanary_cluster_role``: 1 for ``role``, 0 for the other ``roles``."""
        for name in roles:
            self.cluster_role.labels(name).set(1.0 if name == role else 0.0)

    def write_fenced(self, op: str, reason: str) -> None:
        self.cluster_fenced_writes.labels(op).inc()

    def alert_sent(self, channel: str, outcome: str) -> None:
        self.alerts_sent.labels(channel, outcome).inc()

    def retain(self, probes: Iterable[ProbeSpec]) -> None:
        """After a reload: forget the series of probes that are gone (stale probe_success misleads) and
        register the new ones."""
        probes = list(probes)
        keep = {(p.id, p.kind) for p in probes}
        keep_ids = {pid for pid, _ in keep}
        for metric in (self.probe_success, self.probe_unknown, self.probe_duration, self.trace_spans,
                       self.time_to_verdict):
            self._forget(metric, lambda labels: labels not in keep)
        self._forget(self.runs, lambda labels: (labels[0], labels[1]) not in keep)
        by_id: tuple[Gauge | Counter | Histogram, ...] = (
            self.schedule_lateness, self.runs_skipped, self.findings, self.last_run, self.alert_state,
            self.passive_traces)
        for one in by_id:
            self._forget(one, lambda labels: labels[0] not in keep_ids)
        self.register(probes)

    def _child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, kept by label values for ``retain`` (and reused: no lookup again)."""
        children = self._series[metric]
        child = children.get(labels)
        if child is None:
            child = children[labels] = metric.labels(*labels)
        return cast(M, child)

    def _forget(self, metric: Gauge | Counter | Histogram, gone: Callable[[tuple[str, ...]], bool]) -> None:
        children = self._series[metric]
        for labels in [ls for ls in children if gone(ls)]:
            metric.remove(*labels)
            del children[labels]


def metrics_routes(m: Metrics, refresh: Callable[[], Awaitable[None]] | None = None) -> list[web.RouteDef]:
    """``GET /metrics`` in the Prometheus text format (OpenMetrics when the scraper asks for it);
    ``refresh`` updates what is read at scrape time (the alert states) first. The encoding runs in a
    worker thread (prometheus_client is thread-safe): with hundreds of probes it takes hundreds of
    milliseconds, which would otherwise stall the event loop (benchmarks/metrics_scrape.py)."""

    async def handle(request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await anyio.to_thread.run_sync(encoder, m.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [web.get("/metrics", handle)]


class _CountsCollector(Collector):
    """One counter family read from a mapping at scrape time (``label value -> count``)."""

    def __init__(self, name: str, documentation: str, label: str, counts: Callable[[], Mapping[str, int]]) -> None:
        self._name, self._doc, self._label, self._counts = name, documentation, label, counts

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for value, count in sorted(self._counts().items()):
            family.add_metric([value], float(count))
        yield family
