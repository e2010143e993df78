"""AlertManager: the RunHook that drives the policy state machine, and what the API asks of alerting.

Each final run of a probe advances its state (``policy.step``); the events the step decides are
handed to the :class:`~tracecanary.daemon.alerts.delivery.Outbox`, which claims, queues and delivers
them off the hot path. Everything it knows lives in the store, so a restart (or another replica)
picks up where it left off: the per-probe state in the kv namespace ``alerts.state`` (key: probe
id), silences as ``silences.py`` says, deliveries as ``delivery.py`` says. The read-side views the
API asks for (open incidents, the event log, alert states) are ``overview.py``.

Events: ``alert.silenced`` (held back by a silence); the outbox writes the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from opentelemetry.trace import Tracer

from tracecanary.assertions.telemetry import telemetry_flowed
from tracecanary.assertions.verdict import rank
from tracecanary.daemon.alerts.base import Channel, Notification, NotifiedFinding
from tracecanary.daemon.alerts.delivery import ChannelHealth, DeliveryTiming, Outbox
from tracecanary.daemon.alerts.incidents import (
    IncidentHistory,
    incident_history,
    incident_probe,
    record_transition,
)
from tracecanary.daemon.alerts.overview import ALERT_FAILING as ALERT_FAILING
from tracecanary.daemon.alerts.overview import ALERT_OK as ALERT_OK
from tracecanary.daemon.alerts.overview import ALERT_SILENCED as ALERT_SILENCED
from tracecanary.daemon.alerts.overview import AlertRecord as AlertRecord
from tracecanary.daemon.alerts.overview import AlertsOverview as AlertsOverview
from tracecanary.daemon.alerts.overview import Incident as Incident
from tracecanary.daemon.alerts.overview import alert_states, alerts_overview
from tracecanary.daemon.alerts.policy import NS_STATE as NS_STATE
from tracecanary.daemon.alerts.policy import (
    AlertEvent,
    AlertsSettings,
    Observation,
    PolicySettings,
    ProbeAlertState,
    TelemetryStreak,
    step,
)
from tracecanary.daemon.alerts.reconcile import closed_state, closing_note, missed_runs
from tracecanary.daemon.alerts.silences import ListedSilence, Silences, SilenceSettings, silenced_by
from tracecanary.daemon.alerts.system import SystemIncident, SystemIncidents
from tracecanary.daemon.store.base import RunRecord, Store
from tracecanary.integrations import Integrations
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.alerts")
MAX_FINDINGS = 5


@dataclass(frozen=True)
class _TimingOverrides:
    """Constructor overrides of the settings' durations (tests make them short)."""

    retry_delays_s: Sequence[float] | None
    max_retry_after_s: float | None
    failing_after_s: float | None
    expiry_s: float | None
    system_reconcile_s: float | None

    def timing(self, s: AlertsSettings) -> DeliveryTiming:
        return DeliveryTiming(
            delays_s=tuple(self.retry_delays_s if self.retry_delays_s is not None else s.retry_delays),
            max_retry_after_s=_pick(self.max_retry_after_s, s.max_retry_after),
            failing_after_s=_pick(self.failing_after_s, s.channel_failing_after),
            expiry_s=_pick(self.expiry_s, s.delivery_expiry))

    def reconcile_s(self, s: AlertsSettings) -> float:
        return _pick(self.system_reconcile_s, s.system_reconcile)


def _pick(override: float | None, setting: float) -> float:
    return setting if override is None else override


class AlertManager:
    """Implements RunHook; ``run()`` starts the delivery lanes and the system incidents (``tg.start`` it)."""

    def __init__(
        self,
        store: Store,
        settings: AlertsSettings,
        *,
        dashboard_url: str | None = None,
        clock: Callable[[], float] = time.time,
        retry_delays_s: Sequence[float] | None = None,
        max_retry_after_s: float | None = None,
        channel_failing_after_s: float | None = None,
        expiry_s: float | None = None,
        system_reconcile_s: float | None = None,
        integrations: Integrations | None = None,
        on_attempt: Callable[[str, str], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """Durations default to ``settings`` (``alerts.retry_delays`` …); the ``*_s`` arguments override
        them (tests). ``tracer``: the daemon's own tracer (one span per delivery attempt); None when not
        exported."""
        self.store = store
        self.settings = settings
        self._dashboard_url = dashboard_url.rstrip("/") if dashboard_url else None
        self._clock = clock
        self._overrides = _TimingOverrides(retry_delays_s, max_retry_after_s, channel_failing_after_s, expiry_s,
                                           system_reconcile_s)
        self._integrations = integrations or Integrations()
        channels = {name: cfg.build(name, self._integrations) for name, cfg in settings.channels.items()}
        self.outbox = Outbox(store, channels, queue_size=settings.queue_size, clock=clock,
                             timing=self._overrides.timing(settings), on_attempt=on_attempt, tracer=tracer)
        self.silences = Silences(store, settings.silences, clock)
        self.system = SystemIncidents(
            store, clock=clock, announce=self.outbox.announce, healthy_channels=self.outbox.healthy_channels,
            dashboard_url=self._dashboard_url, reconcile_after_s=self._overrides.reconcile_s(settings))
        self.outbox.on_channel_failing = lambda name, detail: self.raise_system(
            f"channel:{name}", f"alert channel {name} is failing", detail)
        self.outbox.on_channel_recovered = lambda name, detail: self.clear_system(f"channel:{name}", detail)
        self._probe_locks: dict[str, anyio.Lock] = {}
        self.telemetry = TelemetryStreak(after=settings.telemetry_incident_after)
        """Consecutive ``unknown`` runs across probes → the "telemetry" system incident."""

    @property
    def channels(self) -> dict[str, Channel]:
        """The live channels by name."""
        return self.outbox.channels

    async def reconfigure(self, settings: AlertsSettings, integrations: Integrations,
                          probes: Sequence[ProbeSpec], *, dashboard_url: str | None = None,
                          close_orphans: bool = True) -> None:
        """A reloaded config (SIGHUP): policies, channels (rebuilt when their config or the integrations
        changed; pending deliveries of a removed channel are dropped), silences and timings; incidents
        of probes that no longer alert are closed with their recovery (unless ``close_orphans`` is
        False: a standby replica leaves that to the active one)."""
        old, old_integrations = self.settings, self._integrations
        channels = {
            name: (self.outbox.lanes[name].channel
                   if name in self.outbox.lanes and old.channels.get(name) == cfg and old_integrations == integrations
                   else cfg.build(name, integrations))
            for name, cfg in settings.channels.items()}
        self.settings, self._integrations = settings, integrations
        if dashboard_url is not None:
            self._dashboard_url = self.system.dashboard_url = dashboard_url.rstrip("/")
        self.outbox.set_timing(self._overrides.timing(settings), settings.queue_size)
        await self.outbox.set_channels(channels)
        self.silences = Silences(self.store, settings.silences, self._clock)
        self.telemetry.after = settings.telemetry_incident_after
        if close_orphans:
            await self.close_orphans(probes, "the probe no longer alerts (configuration reloaded)")
        log.info("alerts reconfigured channels=%s policies=%s silences=%d", ",".join(settings.channels),
                 ",".join(settings.policies), len(settings.silences))

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
        prev = ProbeAlertState.model_validate(await self.store.kv_get(NS_STATE, probe.id) or {})
        silence_id = silenced_by(await self.silences.all(), probe.id, probe.tags, now_s)
        obs = Observation(probe.id, run.run_id, str(run.verdict), int(now_s * 1e9))
        decision = step(prev, policy, obs, silenced=silence_id is not None)
        for ev in decision.silenced:
            await self.store.append_event("alert.silenced", {
                "probe_id": probe.id, "event": ev.kind, "incident_id": ev.incident_id,
                "dedup_key": ev.dedup_key, "silence_id": silence_id, "run_id": run.run_id})
            log.info("alert.silenced probe=%s event=%s silence=%s", probe.id, ev.kind, silence_id)
        # Claim and queue before the state moves on: a crash in between re-derives the same dedup
        # key on the next run, and the claim refuses it (no duplicate, no loss: the outbox has it).
        state = decision.state
        state.last_run_started_ns = run.started_ns
        for ev in decision.send:
            targets = policy.channels
            if ev.kind in ("failing", "degraded"):
                state.notified_channels = list(policy.channels)
            elif ev.kind == "recovered" and prev.notified_channels:
                targets = [c for c in prev.notified_channels if c in self.settings.channels]
            await self.outbox.announce(self._note(ev, probe, run, state, now_s), targets)
        if state.status == "ok":
            state.notified_channels = []
        await record_transition(self.store, prev.incident_id, state, run.run_id, now_s)
        await self.store.kv_put(NS_STATE, probe.id, state.model_dump(mode="json"))

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

    async def wait_idle(self, *, held_ok: bool = False) -> None:
        """Until nothing is queued or being delivered (wrap in ``anyio.fail_after``); needs ``run()``.
        ``held_ok``: deliveries waiting to retry a failing channel do not count (they stay in the
        outbox) — what a shutdown waits for."""
        while True:  # a delivery may raise a system incident (a failing channel), which queues more
            await self.system.wait_idle()
            await self.outbox.wait_idle(held_ok=held_ok)
            if self.system.idle:
                return

    # --- after a restart (reconcile.py) ----------------------------------------------------------
    async def reconcile(self, probes: Sequence[ProbeSpec]) -> None:
        """On start: feed each probe's alert state the final runs recorded after the last one it saw
        (a crash between recording a run and alerting on it, or runs another process recorded while
        this one was down: an incident that resolved meanwhile is closed with its recovery), and close
        the incidents of probes that no longer alert. Claims keep any of it from being announced twice."""
        fed = 0
        for probe in probes:
            policy = self.policy_for(probe)
            if policy is None:
                continue
            try:
                async with self._probe_locks.setdefault(probe.id, anyio.Lock()):
                    state = ProbeAlertState.model_validate(await self.store.kv_get(NS_STATE, probe.id) or {})
                    for run in await missed_runs(self.store, probe.id, state):
                        await self._advance(probe, run, policy)
                        fed += 1
            except Exception:  # a failing store must not keep the daemon from starting: logged, skipped
                log.exception("alerts.reconcile_failed probe=%s", probe.id)
        try:
            closed = await self.close_orphans(probes, "the probe no longer alerts (removed from the configuration)")
        except Exception:
            log.exception("alerts.reconcile_failed step=close_orphans")
            closed = 0
        log.info("alerts reconciled missed_runs=%d closed_incidents=%d", fed, closed)

    async def close_orphans(self, probes: Sequence[ProbeSpec], why: str) -> int:
        """Close (with a recovery, when announced) the open incidents of probes absent from ``probes``
        or without a policy; returns how many."""
        alerting = {p.id for p in probes if self.policy_for(p) is not None}
        closed = 0
        for probe_id, value in (await self.store.kv_list(NS_STATE)).items():
            state = ProbeAlertState.model_validate(value)
            if probe_id in alerting or state.status == "ok" or state.incident_id is None:
                continue
            async with self._probe_locks.setdefault(probe_id, anyio.Lock()):
                if state.notified:
                    note = closing_note(state, probe_id, why, int(self._clock() * 1e9), self._dashboard_url)
                    targets = state.notified_channels or list(self.settings.channels)
                    await self.outbox.announce(note, [c for c in targets if c in self.settings.channels])
                await record_transition(self.store, state.incident_id, closed_state(state), "", self._clock(), why)
                await self.store.kv_put(NS_STATE, probe_id, closed_state(state).model_dump(mode="json"))
                closed += 1
        return closed

    def readiness_detail(self) -> list[str]:
        """For ``/readyz``: system incidents (a failing channel …) no healthy channel could announce."""
        return [f"{i.summary}: {i.detail} (no healthy alert channel to announce it)" if i.detail
                else f"{i.summary} (no healthy alert channel to announce it)" for i in self.system.unannounced()]

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

    async def acknowledge(self, incident_id: str, *, by: str, comment: str = "") -> bool:
        """Acknowledge an open incident: no more reminders for it (its recovery still goes out).
        False when no open incident has that id. Idempotent: a second acknowledgement is recorded too."""
        probe_id = incident_probe(incident_id)
        async with self._probe_locks.setdefault(probe_id, anyio.Lock()):
            state = ProbeAlertState.model_validate(await self.store.kv_get(NS_STATE, probe_id) or {})
            if state.incident_id != incident_id or state.status == "ok":
                return False
            now_ns = int(self._clock() * 1e9)
            state.acknowledged_by, state.acknowledged_ns = by, now_ns
            await self.store.append_event("alert.acknowledged", {
                "probe_id": probe_id, "incident_id": incident_id, "by": by, "comment": comment, "time_ns": now_ns})
            await self.store.kv_put(NS_STATE, probe_id, state.model_dump(mode="json"))
        log.info("alert.acknowledged probe=%s incident=%s by=%s", probe_id, incident_id, by)
        return True

    async def incidents(self, *, probe_id: str | None = None) -> list[IncidentHistory]:
        """Open and past incidents with their timelines (incidents.py), open first."""
        states = {pid: ProbeAlertState.model_validate(v) for pid, v in (await self.store.kv_list(NS_STATE)).items()}
        return await incident_history(self.store, states, probe_id=probe_id)

    async def alert_states(self, probes: Sequence[ProbeSpec]) -> dict[str, int]:
        """Per probe id, for ``tracecanary_alert_state``: 2 while an active silence covers the probe
        (whatever its status), else 1 while an incident is open (failing or degraded), else 0."""
        return await alert_states(self.store, self.silences, probes, self._clock())

    async def list_alerts(self, *, limit: int = 50) -> AlertsOverview:
        """Open incidents, recent notifications and delivery attempts, newest first."""
        return await alerts_overview(self.store, self.outbox, self.system, limit=limit)
