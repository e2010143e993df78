"""Alert state after a restart or a reload: the runs the alert hook never saw, incidents left orphaned.

The alert state of a probe (``alerts.state``) remembers the last run it saw. Final runs recorded after
it — a crash between recording a run and alerting on it, or runs that another process (``tracecanary
check --store``, a standby replica) recorded while this one was down — are fed to the state machine on
start, in order, so an incident that resolved meanwhile closes with its ``recovered``. An open incident
of a probe that no longer alerts (removed, or without a policy) is closed with a ``recovered`` saying why.
Claims (``delivery.py``) keep any of it from being announced twice.
"""

from __future__ import annotations

from tracecanary.daemon.alerts.base import Notification
from tracecanary.daemon.alerts.policy import ProbeAlertState
from tracecanary.daemon.store.base import RunRecord, RunStatus, Store

MAX_MISSED_RUNS = 100
"""At most this many recent runs of a probe are looked at on start."""


async def missed_runs(store: Store, probe_id: str, state: ProbeAlertState) -> list[RunRecord]:
    """Final, finished runs with a verdict recorded after the last run ``state`` saw, oldest first
    (none for a probe whose alert state never saw a run: old history does not open incidents)."""
    if state.last_run_id is None:
        return []
    runs = await store.list_runs(probe_id, limit=MAX_MISSED_RUNS)  # newest first
    if state.last_run_started_ns is not None:
        newer = [r for r in runs if r.started_ns > state.last_run_started_ns]
    else:
        ids = [r.run_id for r in runs]
        newer = runs[: ids.index(state.last_run_id)] if state.last_run_id in ids else []
    return [r for r in reversed(newer) if r.final and r.verdict is not None and r.status == RunStatus.FINISHED
            and r.run_id != state.last_run_id]


def closing_note(state: ProbeAlertState, probe_id: str, why: str, now_ns: int,
                 dashboard_url: str | None) -> Notification:
    """The ``recovered`` that closes an orphaned incident (same dedup key as a normal recovery)."""
    incident = state.incident_id or ""
    return Notification(
        event="recovered", dedup_key=f"{incident}:recovered", incident_id=incident, probe_id=probe_id,
        verdict=state.last_verdict, time_ns=now_ns, incident_started_ns=state.incident_started_ns, detail=why,
        dashboard_url=f"{dashboard_url}/probes/{probe_id}" if dashboard_url else None)


def closed_state(state: ProbeAlertState) -> ProbeAlertState:
    """``state`` with its incident closed."""
    return state.model_copy(update={
        "status": "ok", "incident_id": None, "incident_started_ns": None, "notified": False, "reminders": 0,
        "fail_streak": 0, "degraded_streak": 0, "window": [], "notified_channels": [],
        "acknowledged_by": None, "acknowledged_ns": None})
