"""What the HTTP API and the dashboard may ask of the running daemon: the only seam between web/ and the rest.

``DaemonControl`` (daemon_control.py) implements :class:`Control`; the alert manager (alerts/manager.py)
implements :class:`AlertsControl`; the demo world (demo/world.py, which imports nothing of the daemon)
satisfies :class:`DemoControl` structurally.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from tracecanary.assertions.spans import Span
from tracecanary.daemon.alerts.delivery import ChannelHealth
from tracecanary.daemon.alerts.incidents import IncidentHistory
from tracecanary.daemon.alerts.manager import AlertsOverview
from tracecanary.daemon.alerts.silences import ListedSilence, SilenceSettings
from tracecanary.daemon.alerts.system import SystemIncident
from tracecanary.daemon.cluster.membership import Membership
from tracecanary.daemon.config.secrets import Secrets
from tracecanary.daemon.run.passive import PassiveSnapshot
from tracecanary.daemon.store.base import Store
from tracecanary.probes.base import ProbeSpec


class AlertsControl(Protocol):
    """Silences and alert state (the API's /api/alerts and /api/silences, the dashboard's channel banner)."""

    async def list_silences(self) -> list[ListedSilence]:
        """Configured silences, then the ones added through the API."""
        ...

    async def add_silence(self, silence: SilenceSettings, *, created_by: str = "api") -> ListedSilence:
        """Store a silence; returns it as listed, with its new id."""
        ...

    async def remove_silence(self, silence_id: str) -> bool:
        """False when no API silence has that id."""
        ...

    async def list_alerts(self, *, limit: int = 50) -> AlertsOverview:
        """Open incidents, latest notifications and delivery attempts, the queue's counters."""
        ...

    async def acknowledge(self, incident_id: str, *, by: str, comment: str = "") -> bool:
        """Acknowledge an open incident (no more reminders; the recovery still goes out); False when
        no open incident has that id."""
        ...

    async def incidents(self, *, probe_id: str | None = None) -> list[IncidentHistory]:
        """Open and past incidents with their timelines, open first, then newest first."""
        ...

    async def channel_health(self) -> list[ChannelHealth]:
        """One entry per configured channel."""
        ...

    def system_incidents(self) -> list[SystemIncident]:
        """Open incidents about tracecanary itself (a failing channel, the results store …)."""
        ...


class ChaosState(Protocol):
    """The demo's fault switch as the dashboard shows it."""

    @property
    def faults(self) -> Sequence[str]:
        """Names of the faults that can be switched on."""
        ...

    @property
    def active(self) -> str | None:
        """The fault switched on, None when healthy."""
        ...


class DemoControl(Protocol):
    """The demo world's hooks (`tracecanary demo`): the dashboard's chaos toggle."""

    def chaos_state(self) -> ChaosState: ...

    async def set_fault(self, name: str | None) -> None:
        """Switch a fault on by name (None: healthy); ValueError for an unknown name."""
        ...


class Control(Protocol):
    @property
    def store(self) -> Store:
        """The results store."""
        ...

    @property
    def alerts(self) -> AlertsControl | None:
        """The alert manager; None when the process does not alert (the alert routes answer 501)."""
        ...

    @property
    def demo(self) -> DemoControl | None:
        """The demo world when run by `tracecanary demo` (the dashboard shows its chaos toggle)."""
        ...

    @property
    def membership(self) -> Membership:
        """This replica's cluster role and the members (``GET /api/cluster``, the dashboard header)."""
        ...

    def probes(self) -> list[ProbeSpec]:
        """The probes of the loaded config, in config order."""
        ...

    def secrets(self) -> Secrets:
        """The loaded config's secrets: masked out of every response and page (by value, not by key)."""
        ...

    def next_run(self, probe_id: str) -> datetime | None:
        """When the scheduler will fire the probe next (None: paused or unscheduled)."""
        ...

    async def run_now(self, probe_id: str) -> str:
        """Fire the probe now through the scheduler (its overlap policy applies); the new run id.

        Raises KeyError for an unknown probe, ``OverlapSkipped`` when the policy refuses (a run is in
        flight) and ``SchedulerNotRunning`` while the daemon starts or shuts down (both ``RunRefused``).
        """
        ...

    def live_spans(self, trace_id: str) -> list[Span]:
        """Spans held in the trace buffer for a trace (for a running run's live view)."""
        ...

    def links_for(self, trace_id: str, run_id: str, probe_id: str) -> dict[str, str]:
        """Rendered trace links (Sentry, Jaeger, …) for a run stored without any."""
        ...

    def cluster_role(self) -> str | None:
        """This replica's role when the daemon runs in a cluster (``active``, ``standby`` …; the overview
        shows it); None in single mode."""
        ...

    @property
    def public_status(self) -> bool:
        """``daemon.public_status``: with ``protect_reads``, badges and the status page stay open."""
        ...

    def passive(self, probe_id: str) -> PassiveSnapshot | None:
        """A ``kind: passive`` probe's current window and worst recent traces (None: no such probe)."""
        ...
