"""What the API and the dashboard read of alerting: open incidents, the event log, per-probe alert states.

Read-only views over the store (the per-probe state in ``alerts.state``, the ``alert.*`` events) and the
outbox's queue; ``manager.AlertManager.list_alerts`` and ``alert_states`` answer with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tracecanary.daemon.alerts.delivery import Outbox, QueueStats
from tracecanary.daemon.alerts.policy import NS_STATE, ProbeAlertState
from tracecanary.daemon.alerts.silences import Silences, silenced_by
from tracecanary.daemon.alerts.system import SystemIncident, SystemIncidents
from tracecanary.daemon.store.base import Store
from tracecanary.probes.base import ProbeSpec

ALERT_OK, ALERT_FAILING, ALERT_SILENCED = 0, 1, 2
"""The values of ``tracecanary_alert_state`` (:meth:`AlertManager.alert_states`)."""


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
    acknowledged_by: str | None = None


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
    system: list[SystemIncident] = field(default_factory=list)
    """Open incidents about tracecanary itself (system.py)."""


async def alert_states(store: Store, silences: Silences, probes: Sequence[ProbeSpec], now_s: float) -> dict[str, int]:
    """Per probe id, for ``tracecanary_alert_state``: 2 while an active silence covers the probe
    (whatever its status), else 1 while an incident is open (failing or degraded), else 0."""
    active = await silences.all()
    stored = await store.kv_list(NS_STATE)
    out: dict[str, int] = {}
    for p in probes:
        if silenced_by(active, p.id, p.tags, now_s) is not None:
            out[p.id] = ALERT_SILENCED
        elif p.id in stored and ProbeAlertState.model_validate(stored[p.id]).status != "ok":
            out[p.id] = ALERT_FAILING
        else:
            out[p.id] = ALERT_OK
    return out


async def alerts_overview(store: Store, outbox: Outbox, system: SystemIncidents, *, limit: int) -> AlertsOverview:
    """Open incidents, recent notifications and delivery attempts, newest first."""
    incidents = []
    for probe_id, value in sorted((await store.kv_list(NS_STATE)).items()):
        s = ProbeAlertState.model_validate(value)
        if s.status != "ok":
            incidents.append(Incident(probe_id, s.status, s.incident_id, s.incident_started_ns, s.notified,
                                      s.fail_streak, s.last_verdict, s.acknowledged_by))

    async def events(kind: str) -> list[AlertRecord]:
        return [AlertRecord.from_event(e) for e in await store.list_events(kind, limit=limit)]

    return AlertsOverview(
        incidents=incidents, notifications=await events("alert.notification"),
        silenced=await events("alert.silenced"), attempts=await events("alert.attempt"),
        queue=outbox.stats(), system=system.open_incidents(),
    )
