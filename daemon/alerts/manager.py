"""AlertManager: the RunHook that drives the policy state machine, and what the API asks of alerting.

Each final run of a probe advances its state (``policy.step``); the events the step decides are
handed to the :class:`~tracecanary.daemon.alerts.delivery.Outbox`, which claims, queues and delivers
them off the hot path. Everything it knows lives in the store, so a restart (or another replica)
picks up where it left off: the per-probe state in the kv namespace ``alerts.state`` (key: probe
id), silences as ``silences.py`` says, deliveries as ``delivery.py`` says.

Events: ``alert.silenced`` (held back by a silence); the outbox writes the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from anyio.abc import TaskStatus
from opentelemetry.trace import Tracer

from tracecanary.assertions.telemetry import telemetry_flowed
from tracecanary.assertions.verdict import rank
from tracecanary.daemon.alerts.base import Channel, Notification, NotifiedFinding
from tracecanary.daemon.alerts.delivery import ChannelHealth, DeliveryQueue, Outbox, QueueStats, RetryPolicy
from tracecanary.daemon.alerts.policy import (
    AlertEvent,
    AlertsSettings,
    Observation,
    PolicySettings,
    ProbeAlertState,
    TelemetryStreak,
    step,
)
from tracecanary.daemon.alerts.silences import ListedSilence, Silences, SilenceSettings, silenced_by
from tracecanary.daemon.alerts.system import SystemIncident, SystemIncidents
from tracecanary.daemon.store.base import RunRecord, Store
from tracecanary.integrations import Integrations
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.alerts")
NS_STATE = "alerts.state"
MAX_FINDINGS = 5


@dataclass(frozen=True)
class Incident:
    """A probe whose alert state is not ok."""

    probe_id: str
    status: Literal["failing", "degraded"]
    incident_id: str | None
    incident_started_ns: int | None
    notified: bool
    """Whether the incident was announced (a silence or ``notify_on`` may have held it back)."""
    fail_streak: int
    last_verdict: str | None


@dataclass(frozen=True)
class AlertRecord:
    """An entry of the store's event log (``alert.notification``, ``alert.attempt`` …)."""

    id: int
    time_ns: int
    kind: str
    data: dict[str, Any]
    """The event's JSON payload as written by the outbox or the manager."""

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> AlertRecord:
        return cls(id=int(event["id"]), time_ns=int(event["time_ns"]), kind=str(event["kind"]),
                   data=dict(event["data"]))


@dataclass(frozen=True)
class AlertsOverview:
    """Open incidents, recent notifications, held-back events and delivery attempts (newest first)."""

    incidents: list[Incident]
    notifications: list[AlertRecord]
    silenced: list[AlertRecord]
    attempts: list[AlertRecord]
    queue: QueueStats


class AlertManager:
    """Implements RunHook; ``run()`` starts the delivery workers (start it with ``tg.start``)."""

    def __init__(
        self,
        store: Store,
        settings: AlertsSettings,
        *,
        dashboard_url: str | None = None,
        clock: Callable[[], float] = time.time,
        retry_delays_s: Sequence[float] = RetryPolicy.delays_s,
        max_retry_after_s: float = RetryPolicy.max_retry_after_s,
        integrations: Integrations | None = None,
        channels: dict[str, Channel] | None = None,
        on_attempt: Callable[[str, str], None] | None = None,
        workers: int = 4,
        tracer: Tracer | None = None,
        system_reconcile_s: float = 300.0,
    ) -> None:
        """``tracer``: the daemon's own tracer (one span per delivery attempt); None when not exported.
        ``system_reconcile_s``: a system incident reloaded after a restart and not raised again within
        this long is cleared (with its recovery)."""
        self.store = store
        self.settings = settings
        self._dashboard_url = dashboard_url.rstrip("/") if dashboard_url else None
        self._clock = clock
        integrations = integrations or Integrations()
        self.channels: dict[str, Channel] = channels if channels is not None else {
            name: cfg.build(name, integrations) for name, cfg in settings.channels.items()}
        self.outbox = Outbox(
            store, self.channels, queue_size=settings.queue_size,
            failure_threshold=settings.channel_failure_threshold, clock=clock,
            retry=RetryPolicy(tuple(retry_delays_s), max_retry_after_s), dashboard_url=self._dashboard_url,
            on_attempt=on_attempt, workers=workers, tracer=tracer,
        )
        self.silences = Silences(store, settings.silences, clock)
        self.system = SystemIncidents(
            store, clock=clock, announce=self.outbox.announce_best_effort,
            healthy_channels=self.outbox.healthy_channels, dashboard_url=self._dashboard_url,
            reconcile_after_s=system_reconcile_s)
        self.outbox.on_channel_failing = lambda name, detail: self.raise_system(
            f"channel:{name}", f"alert channel {name} is failing", detail)
        self.outbox.on_channel_recovered = lambda name, detail: self.clear_system(f"channel:{name}", detail)
        self._probe_locks: dict[str, anyio.Lock] = {}
        self.telemetry = TelemetryStreak(after=settings.telemetry_incident_after)
        """Consecutive ``unknown`` runs across probes → the "telemetry" system incident."""

    @property
    def queue(self) -> DeliveryQueue:
        return self.outbox.queue

    # --- RunHook ---------------------------------------------------------------------------------
    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        return None

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        if not run.final or run.verdict is None:
            return
        self._observe_telemetry(probe, run)
        policy = self.policy_for(probe)
        if policy is None:
            return
        lock = self._probe_locks.setdefault(probe.id, anyio.Lock())
        async with lock:
            await self._advance(probe, run, policy)

    def _observe_telemetry(self, probe: ProbeSpec, run: RunRecord) -> None:
        """Feed the telemetry streak (policy.TelemetryStreak); raise or clear the "telemetry" incident."""
        action = self.telemetry.observe(probe.id, str(run.verdict), telemetry_flowed(run.trace_report))
        if action == "raise":
            latest = run.findings[0].message if run.findings else f"{probe.id}: unknown"
            self.raise_system("telemetry", self.telemetry.summary, self.telemetry.detail(latest))
        elif action == "clear":
            self.clear_system("telemetry", f"{probe.id}: spans arrived from the services it expects")

    def policy_for(self, probe: ProbeSpec) -> PolicySettings | None:
        """The probe's policy: ``alert.policy`` or, without ``alert:``, the policy named default."""
        name = probe.alert.policy if probe.alert is not None else "default"
        return self.settings.policies.get(name)

    async def _advance(self, probe: ProbeSpec, run: RunRecord, policy: PolicySettings) -> None:
        now_s = self._clock()
        state = ProbeAlertState.model_validate(await self.store.kv_get(NS_STATE, probe.id) or {})
        silence_id = silenced_by(await self.silences.all(), probe.id, probe.tags, now_s)
        obs = Observation(probe.id, run.run_id, str(run.verdict), int(now_s * 1e9))
        decision = step(state, policy, obs, silenced=silence_id is not None)
        for ev in decision.silenced:
            await self.store.append_event("alert.silenced", {
                "probe_id": probe.id, "event": ev.kind, "incident_id": ev.incident_id,
                "dedup_key": ev.dedup_key, "silence_id": silence_id, "run_id": run.run_id})
            log.info("alert.silenced probe=%s event=%s silence=%s", probe.id, ev.kind, silence_id)
        # Claim and queue before the state moves on: a crash in between re-derives the same dedup
        # key on the next run, and the claim refuses it (no duplicate, no loss: the outbox has it).
        for ev in decision.send:
            await self.outbox.announce(self._note(ev, probe, run, decision.state, now_s), policy.channels)
        await self.store.kv_put(NS_STATE, probe.id, decision.state.model_dump(mode="json"))

    def _note(self, ev: AlertEvent, probe: ProbeSpec, run: RunRecord, state: ProbeAlertState,
              now_s: float) -> Notification:
        top = sorted(run.findings, key=lambda f: -rank(f.severity))[:MAX_FINDINGS]
        return Notification(
            event=ev.kind, dedup_key=ev.dedup_key, incident_id=ev.incident_id, probe_id=probe.id,
            kind=probe.kind, tags=list(probe.tags), verdict=str(run.verdict), run_id=run.run_id,
            trace_id=run.trace_id, time_ns=int(now_s * 1e9), incident_started_ns=state.incident_started_ns,
            duration_s=run.duration_s, consecutive_failures=state.fail_streak,
            findings=[NotifiedFinding(type=f.type, message=f.message, path=f.path, expected=f.expected,
                                      observed=f.observed) for f in top],
            links=dict(run.links),  # computed once per run, by the runner
            dashboard_url=f"{self._dashboard_url}/runs/{run.run_id}" if self._dashboard_url else None,
        )

    # --- delivery --------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Re-queue the outbox, then deliver until cancelled (pending items stay in the outbox); the
        channels' connections are closed on the way out."""
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.system.run)
                await tg.start(self.outbox.run)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def wait_idle(self) -> None:
        """Until nothing is queued or being delivered (wrap in ``anyio.fail_after``); needs ``run()``."""
        while True:  # a delivery may raise a system incident (a failing channel), which queues more
            await self.system.wait_idle()
            await self.outbox.wait_idle()
            if self.system.idle:
                return

    async def aclose(self) -> None:
        """Close the channels' connections (idempotent)."""
        await self.outbox.aclose()

    # --- system incidents (alerts about tracecanary itself: system.py) ----------------------------
    def raise_system(self, key: str, summary: str, detail: str = "") -> None:
        """Open (or keep open) the system incident ``key`` (e.g. "store", "telemetry", "channel:ops-webhook").

        Announced once on every healthy channel; idempotent while open (``detail`` may be updated,
        no re-announce); never blocks (queues); works while the results store fails (the state is
        kept in memory and persisted best-effort). Call it from the event loop's thread.
        """
        self.system.raise_(key, summary, detail)

    def clear_system(self, key: str, detail: str = "") -> None:
        """Resolve it: one ``recovered`` notification, once; a no-op when not open."""
        self.system.clear(key, detail)

    def system_incidents(self) -> list[SystemIncident]:
        """Open system incidents (key, summary, detail, opened_ns) for the API/dashboard/readyz."""
        return self.system.open_incidents()

    # --- what the API and the dashboard ask (web.control.AlertsControl) -------------------------
    async def list_silences(self) -> list[ListedSilence]:
        return await self.silences.listed()

    async def add_silence(self, silence: SilenceSettings, *, created_by: str = "api") -> ListedSilence:
        """Store a silence; returns it as listed, with its new id."""
        return await self.silences.add(silence, created_by=created_by)

    async def remove_silence(self, silence_id: str) -> bool:
        """Remove an API silence; False when unknown (configured silences are removed in config)."""
        return await self.silences.remove(silence_id)

    async def channel_health(self) -> list[ChannelHealth]:
        """Per configured channel: failing flag, consecutive failures, last error and times."""
        return await self.outbox.channel_health()

    async def list_alerts(self, *, limit: int = 50) -> AlertsOverview:
        """Open incidents, recent notifications and delivery attempts, newest first."""
        incidents = []
        for probe_id, value in sorted((await self.store.kv_list(NS_STATE)).items()):
            s = ProbeAlertState.model_validate(value)
            if s.status != "ok":
                incidents.append(Incident(probe_id, s.status, s.incident_id, s.incident_started_ns, s.notified,
                                          s.fail_streak, s.last_verdict))

        async def events(kind: str) -> list[AlertRecord]:
            return [AlertRecord.from_event(e) for e in await self.store.list_events(kind, limit=limit)]

        return AlertsOverview(
            incidents=incidents, notifications=await events("alert.notification"),
            silenced=await events("alert.silenced"), attempts=await events("alert.attempt"),
            queue=self.outbox.stats(),
        )
