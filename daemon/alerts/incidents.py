"""Incidents as the console shows them: open and past, each with its timeline, read from the event log.

The manager writes ``alert.opened`` (an incident opened, announced or not), ``alert.acknowledged``
(who, when) and ``alert.resolved``; the outbox writes ``alert.notification`` (each announcement:
failing, reminder, recovered) and ``alert.attempt`` (each delivery attempt: channel, outcome,
error); a silence leaves ``alert.silenced``. Every one carries the ``incident_id``, so an incident's
timeline is its events in time order. The log is read newest first and bounded (``limit`` per kind):
an incident older than that window is listed from what remains of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tracecanary.daemon.alerts.policy import ProbeAlertState
from tracecanary.daemon.store.base import Store

TIMELINE_KINDS = ("alert.opened", "alert.notification", "alert.attempt", "alert.silenced", "alert.acknowledged",
                  "alert.resolved")
EVENTS_PER_KIND = 1000


What = Literal["opened", "notified", "attempt", "held", "acknowledged", "resolved"]


@dataclass(frozen=True)
class TimelineEntry:
    """One thing that happened to an incident."""

    time_ns: int
    what: What
    event: str | None = None
    """The announced transition (failing, reminder, recovered, degraded) for notified/attempt/held."""
    channel: str | None = None
    outcome: str | None = None
    """For an attempt: sent | retry | failed | expired | dropped."""
    detail: str = ""


@dataclass
class IncidentHistory:
    """An incident of a probe, open or resolved, with its timeline (oldest first)."""

    incident_id: str
    probe_id: str
    status: Literal["open", "resolved"]
    opened_ns: int
    resolved_ns: int | None = None
    acknowledged_by: str | None = None
    acknowledged_ns: int | None = None
    timeline: list[TimelineEntry] = field(default_factory=list)

    @property
    def notifications(self) -> int:
        return sum(1 for t in self.timeline if t.what == "notified")


def _entry(kind: str, time_ns: int, data: Mapping[str, Any]) -> TimelineEntry:
    if kind == "alert.opened":
        return TimelineEntry(time_ns, "opened", detail=f"{data.get('status', 'failing')} after run {data.get('run_id')}")
    if kind == "alert.notification":
        return TimelineEntry(time_ns, "notified", event=data.get("event"),
                             detail=f"to {', '.join(data.get('channels') or []) or 'no channel'}")
    if kind == "alert.attempt":
        return TimelineEntry(time_ns, "attempt", event=data.get("event"), channel=data.get("channel"),
                             outcome=data.get("outcome"), detail=str(data.get("error") or ""))
    if kind == "alert.silenced":
        return TimelineEntry(time_ns, "held", event=data.get("event"), detail=f"by silence {data.get('silence_id')}")
    if kind == "alert.acknowledged":
        return TimelineEntry(time_ns, "acknowledged", detail=f"by {data.get('by')}" + (
            f": {data['comment']}" if data.get("comment") else ""))
    return TimelineEntry(time_ns, "resolved", detail=str(data.get("why") or ""))


def incident_probe(incident_id: str) -> str:
    """The probe of an incident id (``<probe id>:<first failing run id>``)."""
    return incident_id.partition(":")[0]


async def record_transition(store: Store, prev_incident: str | None, state: ProbeAlertState, run_id: str,
                            now_s: float, why: str = "") -> None:
    """``alert.resolved`` / ``alert.opened`` when a probe's incident closed or opened (the manager calls it
    as it stores the probe's new state)."""
    now_ns = int(now_s * 1e9)
    if prev_incident and prev_incident != state.incident_id:
        await store.append_event("alert.resolved", {
            "probe_id": incident_probe(prev_incident), "incident_id": prev_incident, "run_id": run_id,
            "time_ns": now_ns, "why": why or f"run {run_id} passed"})
    if state.incident_id and state.incident_id != prev_incident:
        await store.append_event("alert.opened", {
            "probe_id": incident_probe(state.incident_id), "incident_id": state.incident_id,
            "status": state.status, "run_id": run_id, "time_ns": now_ns})


async def incident_history(store: Store, states: Mapping[str, ProbeAlertState], *, probe_id: str | None = None,
                           limit: int = EVENTS_PER_KIND) -> list[IncidentHistory]:
    """Incidents found in the latest ``limit`` events of each kind, plus the open ones of ``states`` (the
    probes' alert states: authoritative for what is open now), open first, then newest first."""
    found: dict[str, IncidentHistory] = {}
    for kind in TIMELINE_KINDS:
        for ev in await store.list_events(kind, limit=limit):
            data = ev["data"]
            iid = data.get("incident_id")
            if not iid or (probe_id is not None and data.get("probe_id", incident_probe(iid)) != probe_id):
                continue
            time_ns = int(data.get("time_ns") or ev["time_ns"])
            inc = found.setdefault(iid, IncidentHistory(iid, str(data.get("probe_id") or incident_probe(iid)),
                                                        "open", time_ns))
            inc.timeline.append(_entry(kind, time_ns, data))
            if kind == "alert.resolved" or (kind == "alert.notification" and data.get("event") == "recovered"):
                inc.status, inc.resolved_ns = "resolved", max(time_ns, inc.resolved_ns or 0)
            elif kind == "alert.acknowledged" and (inc.acknowledged_ns or 0) < time_ns:
                inc.acknowledged_by, inc.acknowledged_ns = str(data.get("by")), time_ns
    for inc in found.values():
        inc.timeline.sort(key=lambda t: t.time_ns)
        inc.opened_ns = inc.timeline[0].time_ns
    for pid, s in states.items():
        if s.incident_id and (probe_id is None or pid == probe_id):
            inc = found.setdefault(s.incident_id, IncidentHistory(s.incident_id, pid, "open", s.incident_started_ns or 0))
            inc.status, inc.resolved_ns = "open", None
            inc.acknowledged_by, inc.acknowledged_ns = s.acknowledged_by, s.acknowledged_ns
    return sorted(found.values(), key=lambda i: (i.status != "open", -i.opened_ns))
