"""``DaemonControl``: the web layer's :class:`~tracecanary.daemon.web.control.Control` over a started engine
(and the daemon's scheduler once it runs one): probes, run now (refused on a standby or a kafka member that
does not own the probe), live spans, links, passive windows, the cluster role."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from tracecanary.assertions.spans import Span
from tracecanary.daemon.cluster.membership import Membership, Role
from tracecanary.daemon.config.secrets import Secrets
from tracecanary.daemon.engine import Engine
from tracecanary.daemon.run.passive import PassiveSnapshot
from tracecanary.daemon.run.scheduler import RunRefused, Scheduler, SchedulerNotRunning
from tracecanary.daemon.store.base import Store
from tracecanary.daemon.web.control import AlertsControl, DemoControl
from tracecanary.probes.base import ProbeSpec

if TYPE_CHECKING:
    from tracecanary.daemon.cluster.kafka_cluster import KafkaClusterMembership


class DaemonControl:
    """The web layer's :class:`~tracecanary.daemon.web.control.Control`, backed by a started Engine (and the
    Scheduler once the daemon runs one)."""

    def __init__(self, engine: Engine, scheduler: Scheduler | None = None, alerts: AlertsControl | None = None,
                 demo: DemoControl | None = None) -> None:
        self.engine = engine
        self.scheduler = scheduler
        """Set once the daemon's scheduler runs (before: next_run is None and run now is refused)."""
        self.alerts = alerts
        """The alert manager (None: the alert routes answer 501)."""
        self.demo = demo
        """The demo world (`tracecanary demo`): the dashboard shows its chaos toggle."""

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def membership(self) -> Membership:
        return self.engine.membership

    def probes(self) -> list[ProbeSpec]:
        return list(self.engine.config.probes)

    def secrets(self) -> Secrets:
        return self.engine.config.secrets()

    def next_run(self, probe_id: str) -> datetime | None:
        return self.scheduler.next_run(probe_id) if self.scheduler is not None else None

    async def run_now(self, probe_id: str) -> str:
        """Fire the probe through the scheduler (its overlap policy applies); the new first run id.

        KeyError: unknown probe; ``OverlapSkipped``: the policy refused; ``SchedulerNotRunning``: the
        daemon is starting or shutting down.
        """
        if self.scheduler is None and self.engine.membership.role is Role.STANDBY:
            raise SchedulerNotRunning("this replica is a standby: run the probe on the active one "
                                      "(GET /api/cluster lists the members)")
        if self.scheduler is None:
            raise SchedulerNotRunning("the scheduler is not running yet (the daemon is starting)")
        kafka = kafka_member(self.engine.membership)
        if kafka is not None and any(p.id == probe_id for p in self.probes()) and not kafka.owns(probe_id):
            raise RunRefused(f"probe {probe_id!r} is fired by another member of the kafka cluster (partition "
                             f"{kafka.partition_of_probe(probe_id)}); GET /api/cluster lists who owns which")
        return self.scheduler.run_now(probe_id)

    def live_spans(self, trace_id: str) -> list[Span]:
        return self.engine.buffer.trace(trace_id)

    def links_for(self, trace_id: str, run_id: str, probe_id: str) -> dict[str, str]:
        return self.engine.links_for(trace_id, run_id, probe_id)

    def passive(self, probe_id: str) -> PassiveSnapshot | None:
        return self.engine.passive.snapshot(probe_id)

    def cluster_role(self) -> str | None:
        membership = self.engine.membership
        return None if membership.role is Role.SINGLE else str(membership.role)

    @property
    def public_status(self) -> bool:
        return self.engine.config.daemon.public_status


def kafka_member(membership: Membership) -> KafkaClusterMembership | None:
    """The membership as a kafka-mode member (imported only then: aiokafka and psycopg are heavy)."""
    if membership.mode != "kafka":
        return None
    from tracecanary.daemon.cluster.kafka_cluster import KafkaClusterMembership

    assert isinstance(membership, KafkaClusterMembership)
    return membership


__all__ = ["DaemonControl", "kafka_member"]
