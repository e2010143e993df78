"""AlertManager: the RunHook that drives the policy state machine and delivers off the hot path.

Everything it knows lives in the store, so a restart (or another replica) picks up where it left:

==================  ==============================  ===========================================
kv namespace        key                             value
==================  ==============================  ===========================================
alerts.state        probe id                        ProbeAlertState
alerts.claims       dedup key                       who claimed it and when (sent at most once)
alerts.outbox       "<dedup key>|<channel>"         a pending delivery (re-queued on start)
alerts.refs         "<incident id>|<channel>"       the channel's reference (Slack ts) to thread on
alerts.channels     channel name                    delivery health (consecutive failures …)
alerts.silences     silence id                      silences added through the API
==================  ==============================  ===========================================

Events: ``alert.notification`` (announced), ``alert.silenced`` (held back by a silence),
``alert.attempt`` (every delivery attempt: channel, time, outcome, error), ``alert.dropped``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, runtime_checkable

import anyio
from anyio.abc import TaskStatus
from opentelemetry.trace import Tracer

from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.alerts.base import Channel, DeliveryError, Notification, NotifiedFinding
from tracecanary.daemon.alerts.policy import (
    AlertEvent,
    AlertsSettings,
    Observation,
    PolicySettings,
    ProbeAlertState,
    step,
)
from tracecanary.daemon.alerts.queue import Delivery, DeliveryQueue
from tracecanary.daemon.alerts.silences import SilenceSettings, silenced_by
from tracecanary.daemon.store.base import RunRecord, Store
from tracecanary.integrations import Integrations
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.alerts")
NS_STATE, NS_CLAIMS, NS_OUTBOX = "alerts.state", "alerts.claims", "alerts.outbox"
NS_REFS, NS_CHANNELS, NS_SILENCES = "alerts.refs", "alerts.channels", "alerts.silences"
LinksFn = Callable[[str, str, str], dict[str, str]]
"""(trace_id, run_id, probe_id) -> {backend: url}, as ``Control.links_for``."""
MAX_FINDINGS = 5


@runtime_checkable
class ClaimingStore(Protocol):
    """A store with an atomic put-if-absent (INSERT … ON CONFLICT DO NOTHING): replica-safe claims."""

    async def kv_put_if_absent(self, namespace: str, key: str, value: Any) -> bool: ...


class AlertManager:
    """Implements RunHook; ``run()`` is the delivery worker (start it with ``tg.start``)."""

    def __init__(
        self,
        store: Store,
        settings: AlertsSettings,
        *,
        links: LinksFn | None = None,
        dashboard_url: str | None = None,
        clock: Callable[[], float] = time.time,
        retry_delays_s: Sequence[float] = (1.0, 5.0, 30.0, 120.0),
        max_retry_after_s: float = 300.0,
        integrations: Integrations | None = None,
        channels: dict[str, Channel] | None = None,
        on_attempt: Callable[[str, str], None] | None = None,
        workers: int = 4,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._links = links
        self._dashboard_url = dashboard_url.rstrip("/") if dashboard_url else None
        self._clock = clock
        self._retry_delays_s = tuple(retry_delays_s)
        self._max_retry_after_s = max_retry_after_s
        integrations = integrations or Integrations()
        self.channels: dict[str, Channel] = channels if channels is not None else {
            name: cfg.build(name, integrations) for name, cfg in settings.channels.items()}
        self._on_attempt = on_attempt
        self._workers = workers
        self._tracer = tracer
        self.queue = DeliveryQueue(settings.queue_size)
        self._probe_locks: dict[str, anyio.Lock] = {}
        self._channel_locks: dict[str, anyio.Lock] = {}
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._pending: set[str] = set()
        self._inflight = 0
        self._settled = anyio.Condition()
        """Outbox keys queued in memory (so run() does not queue them a second time)."""

    # --- RunHook ---------------------------------------------------------------------------------
    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        return None

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        if not run.final or run.verdict is None:
            return
        policy = self.policy_for(probe)
        if policy is None:
            return
        lock = self._probe_locks.setdefault(probe.id, anyio.Lock())
        async with lock:
            await self._advance(probe, run, policy)

    def policy_for(self, probe: ProbeSpec) -> PolicySettings | None:
        """The probe's policy: ``alert.policy`` or, without ``alert:``, the policy named default."""
        name = probe.alert.policy if probe.alert is not None else "default"
        return self.settings.policies.get(name)

    async def _advance(self, probe: ProbeSpec, run: RunRecord, policy: PolicySettings) -> None:
        now_s = self._clock()
        state = ProbeAlertState.model_validate(await self.store.kv_get(NS_STATE, probe.id) or {})
        silence_id = silenced_by(await self._silences(), probe.id, probe.tags, now_s)
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
            note = self._note(ev, probe, run, decision.state, now_s)
            await self._announce(note, policy.channels)
        await self.store.kv_put(NS_STATE, probe.id, decision.state.model_dump(mode="json"))

    async def _announce(self, note: Notification, channel_names: Sequence[str]) -> bool:
        if not await self._claim(note.dedup_key):
            log.info("alert.duplicate dedup_key=%s", note.dedup_key)
            return False
        targets = [c for c in channel_names if c in self.channels and self.channels[c].accepts(note.event)]
        await self.store.append_event("alert.notification", {
            "dedup_key": note.dedup_key, "event": note.event, "probe_id": note.probe_id,
            "incident_id": note.incident_id, "verdict": note.verdict, "run_id": note.run_id,
            "trace_id": note.trace_id, "channels": targets, "title": note.title, "time_ns": note.time_ns})
        log.info("alert.notify probe=%s event=%s incident=%s channels=%s",
                 note.probe_id, note.event, note.incident_id, ",".join(targets))
        for channel in targets:
            await self._enqueue(Delivery(note, channel))
        return True

    async def _claim(self, dedup_key: str) -> bool:
        value = {"owner": self._owner, "time_ns": int(self._clock() * 1e9)}
        if isinstance(self.store, ClaimingStore):
            return await self.store.kv_put_if_absent(NS_CLAIMS, dedup_key, value)
        if await self.store.kv_get(NS_CLAIMS, dedup_key) is not None:
            return False
        await self.store.kv_put(NS_CLAIMS, dedup_key, value)
        return True

    async def _enqueue(self, item: Delivery) -> None:
        await self.store.kv_put(NS_OUTBOX, item.key, {"note": item.note.model_dump(mode="json"),
                                                      "channel": item.channel})
        self._pending.add(item.key)
        dropped = await self.queue.put(item)
        if dropped is not None:
            self._pending.discard(dropped.key)
            await self.store.kv_delete(NS_OUTBOX, dropped.key)
            await self.store.append_event("alert.dropped", {"dedup_key": dropped.note.dedup_key,
                                                            "channel": dropped.channel})
            self._count(dropped.channel, "dropped")
            log.warning("alert.dropped channel=%s dedup_key=%s queue_size=%d",
                        dropped.channel, dropped.note.dedup_key, self.settings.queue_size)

    def _note(self, ev: AlertEvent, probe: ProbeSpec, run: RunRecord, state: ProbeAlertState,
              now_s: float) -> Notification:
        links = dict(run.links)
        if self._links is not None:
            links.update(self._links(run.trace_id, run.run_id, probe.id))
        order = {Verdict.ERROR: 0, Verdict.FAIL: 1, Verdict.DEGRADED: 2, Verdict.PASS: 3}
        top = sorted(run.findings, key=lambda f: order[f.severity])[:MAX_FINDINGS]
        return Notification(
            event=ev.kind, dedup_key=ev.dedup_key, incident_id=ev.incident_id, probe_id=probe.id,
            kind=probe.kind, tags=list(probe.tags), verdict=str(run.verdict), run_id=run.run_id,
            trace_id=run.trace_id, time_ns=int(now_s * 1e9), incident_started_ns=state.incident_started_ns,
            duration_s=run.duration_s, consecutive_failures=state.fail_streak,
            findings=[NotifiedFinding(type=f.type, message=f.message, path=f.path, expected=f.expected,
                                      observed=f.observed) for f in top],
            links=links,
            dashboard_url=f"{self._dashboard_url}/runs/{run.run_id}" if self._dashboard_url else None,
        )

    # --- delivery --------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Re-queue the outbox, then deliver until cancelled (pending items stay in the outbox)."""
        for key, value in sorted((await self.store.kv_list(NS_OUTBOX)).items(),
                                 key=lambda kv: int(kv[1]["note"].get("time_ns", 0))):
            try:
                item = Delivery(Notification.model_validate(value["note"]), value["channel"])
            except (KeyError, ValueError):
                await self.store.kv_delete(NS_OUTBOX, key)
                continue
            if key not in self._pending:
                self._pending.add(key)
                await self.queue.put(item)
        async with anyio.create_task_group() as tg:
            for _ in range(self._workers):
                tg.start_soon(self._worker)
            task_status.started()

    async def _worker(self) -> None:
        while True:
            item = await self.queue.get()
            self._inflight += 1
            try:
                lock = self._channel_locks.setdefault(item.channel, anyio.Lock())
                async with lock:  # per-channel order: a recovery never overtakes its firing message
                    await self._deliver(item)
            finally:
                self._inflight -= 1
                with anyio.CancelScope(shield=True):
                    async with self._settled:
                        self._settled.notify_all()

    async def wait_idle(self) -> None:
        """Until nothing is queued or being delivered (wrap in ``anyio.fail_after``); needs ``run()``."""
        async with self._settled:
            while len(self.queue) or self._inflight:
                await self._settled.wait()

    async def _deliver(self, item: Delivery) -> None:
        channel = self.channels.get(item.channel)
        note = item.note
        if channel is None:
            await self.store.kv_delete(NS_OUTBOX, item.key)
            self._pending.discard(item.key)
            return
        ref_key = f"{note.incident_id}|{item.channel}"
        thread = await self.store.kv_get(NS_REFS, ref_key)
        error: DeliveryError | None = None
        ref: dict[str, Any] | None = None
        delays = (0.0, *self._retry_delays_s)
        for attempt, delay in enumerate(delays, start=1):
            if attempt > 1:
                wait = max(delay, min(error.retry_after_s or 0.0, self._max_retry_after_s)) if error else delay
                await anyio.sleep(wait)
            started_s = self._clock()
            try:
                with self._span(item, attempt):
                    ref = await channel.send(note, thread)
            except DeliveryError as e:
                error = e
            except Exception as e:  # a channel bug must not kill the worker: record it, do not retry
                log.exception("alert.channel_crashed channel=%s", item.channel)
                error = DeliveryError(f"{type(e).__name__}: {e}", retryable=False)
            else:
                error = None
                break
            last = attempt == len(delays) or not error.retryable
            await self._record(item, attempt, started_s, "failed" if last else "retry", str(error))
            if last:
                break
        with anyio.CancelScope(shield=True):  # sent is sent: a shutdown must not make us send it again
            if error is None:
                await self._record(item, attempt, started_s, "sent", None)
                if ref and thread is None:
                    await self.store.kv_put(NS_REFS, ref_key, ref)
            await self.store.kv_delete(NS_OUTBOX, item.key)
            self._pending.discard(item.key)
            await self._health(item.channel, error)

    def _span(self, item: Delivery, attempt: int) -> AbstractContextManager[object]:
        """A span per delivery attempt in the daemon's own telemetry (errors recorded by the SDK)."""
        if self._tracer is None:
            return nullcontext()
        return self._tracer.start_as_current_span(f"alert.deliver {item.channel}", attributes={
            "tracecanary.alert.channel": item.channel, "tracecanary.alert.event": item.note.event,
            "tracecanary.probe.id": item.note.probe_id, "tracecanary.alert.incident": item.note.incident_id,
            "tracecanary.alert.attempt": attempt})

    async def _record(self, item: Delivery, attempt: int, started_s: float, outcome: str,
                      error: str | None) -> None:
        await self.store.append_event("alert.attempt", {
            "channel": item.channel, "time_ns": int(started_s * 1e9), "outcome": outcome, "attempt": attempt,
            "error": error, "dedup_key": item.note.dedup_key, "event": item.note.event,
            "probe_id": item.note.probe_id, "incident_id": item.note.incident_id})
        self._count(item.channel, outcome)
        level = logging.INFO if outcome == "sent" else logging.WARNING
        log.log(level, "alert.attempt channel=%s outcome=%s attempt=%d dedup_key=%s error=%s",
                item.channel, outcome, attempt, item.note.dedup_key, error)

    def _count(self, channel: str, outcome: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(channel, outcome)

    # --- channel health --------------------------------------------------------------------------
    async def _health(self, name: str, error: DeliveryError | None) -> None:
        now_ns = int(self._clock() * 1e9)
        h: dict[str, Any] = await self.store.kv_get(NS_CHANNELS, name) or {
            "consecutive_failures": 0, "failing": False, "failing_since_ns": None}
        if error is None:
            h.update(consecutive_failures=0, last_success_ns=now_ns)
            if h.get("failing"):
                await self._channel_event(name, "channel_recovered", h, "deliveries succeed again")
                h.update(failing=False, failing_since_ns=None)
        else:
            h["consecutive_failures"] = int(h.get("consecutive_failures", 0)) + 1
            h.update(last_error=str(error), last_failure_ns=now_ns)
            if not h.get("failing") and h["consecutive_failures"] >= self.settings.channel_failure_threshold:
                h.update(failing=True, failing_since_ns=now_ns)
                detail = f"{h['consecutive_failures']} deliveries in a row failed; last error: {error}"
                await self._channel_event(name, "channel_failing", h, detail)
        await self.store.kv_put(NS_CHANNELS, name, h)

    async def _channel_event(self, name: str, event: str, h: dict[str, Any], detail: str) -> None:
        incident = f"channel:{name}:{h['failing_since_ns']}"
        note = Notification.model_validate({
            "event": event, "dedup_key": f"{incident}:{event}", "incident_id": incident, "probe_id": name,
            "time_ns": int(self._clock() * 1e9), "detail": detail,
            "dashboard_url": f"{self._dashboard_url}/alerts" if self._dashboard_url else None})
        log.warning("alert.%s channel=%s detail=%s", event, name, detail)
        await self._announce(note, [c for c in self.channels if c != name])

    async def channel_health(self) -> list[dict[str, Any]]:
        """Per configured channel: failing flag, consecutive failures, last error and times."""
        stored = await self.store.kv_list(NS_CHANNELS)
        return [{"channel": name, "failing": False, "consecutive_failures": 0, **stored.get(name, {})}
                for name in self.channels]

    # --- silences and listing (the API uses these) -----------------------------------------------
    async def _silences(self) -> list[tuple[str, SilenceSettings]]:
        configured = [(f"config-{i}", s) for i, s in enumerate(self.settings.silences)]
        stored = await self.store.kv_list(NS_SILENCES)
        return configured + [(k, SilenceSettings.model_validate(v["silence"])) for k, v in sorted(stored.items())]

    async def add_silence(self, silence: SilenceSettings, *, created_by: str = "api") -> str:
        """Store a silence; returns its id."""
        silence_id = uuid.uuid4().hex[:12]
        await self.store.kv_put(NS_SILENCES, silence_id, {
            "silence": silence.model_dump(mode="json"), "created_ns": int(self._clock() * 1e9),
            "created_by": created_by})
        log.info("alert.silence_added id=%s by=%s probes=%s tags=%s", silence_id, created_by,
                 silence.probes, silence.tags)
        return silence_id

    async def remove_silence(self, silence_id: str) -> bool:
        """Remove an API silence; False when unknown (configured silences are removed in config)."""
        if await self.store.kv_get(NS_SILENCES, silence_id) is None:
            return False
        await self.store.kv_delete(NS_SILENCES, silence_id)
        return True

    async def list_silences(self) -> list[dict[str, Any]]:
        now_s = self._clock()
        stored = await self.store.kv_list(NS_SILENCES)
        out = []
        for silence_id, s in await self._silences():
            meta = stored.get(silence_id, {})
            out.append({"id": silence_id, "source": "api" if meta else "config", "active": s.active_at(now_s),
                        "kind": s.kind, "created_by": meta.get("created_by"), **s.model_dump(mode="json")})
        return out

    async def list_alerts(self, *, limit: int = 50) -> dict[str, Any]:
        """Open incidents, recent notifications and delivery attempts, newest first."""
        states = await self.store.kv_list(NS_STATE)
        incidents = [{"probe_id": pid, **{k: s.get(k) for k in (
            "status", "incident_id", "incident_started_ns", "notified", "fail_streak", "last_verdict")}}
            for pid, s in sorted(states.items()) if s.get("status") != "ok"]
        return {
            "incidents": incidents,
            "notifications": await self.store.list_events("alert.notification", limit=limit),
            "silenced": await self.store.list_events("alert.silenced", limit=limit),
            "attempts": await self.store.list_events("alert.attempt", limit=limit),
            "queue": {"pending": len(self.queue), "dropped": self.queue.dropped},
        }

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()
