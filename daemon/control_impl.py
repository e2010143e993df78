"""The daemon's implementation of the Control protocol the API and dashboard use."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from tracecanary.assertions.spans import Span
from tracecanary.probes.base import ProbeSpec

from .runner import new_run_id
from .store.base import Store

if TYPE_CHECKING:
    from .engine import Engine
    from .scheduler import Scheduler


class DaemonControl:
    """Backed by a started Engine (and the Scheduler when the daemon runs one)."""

    def __init__(self, engine: Engine, task_group: anyio.abc.TaskGroup | None = None,
                 scheduler: Scheduler | None = None, alerts: Any = None) -> None:
        self.engine = engine
        self.task_group = task_group
        self.scheduler = scheduler
        self.demo: Any = None
        """The demo world (`tracecanary demo`): the dashboard shows its chaos toggle."""
        if alerts is not None:
            self.alerts = alerts

    @property
    def store(self) -> Store:
        return self.engine.store

    def probes(self) -> list[ProbeSpec]:
        return list(self.engine.config.probes)

    def next_run(self, probe_id: str) -> datetime | None:
        return self.scheduler.next_run(probe_id) if self.scheduler is not None else None

    async def run_now(self, probe_id: str) -> str:
        probe = self.engine.config.probe(probe_id)  # KeyError for an unknown probe
        if self.task_group is None:
            raise RuntimeError("run now is not available before the daemon is ready")
        run_id = new_run_id()
        self.task_group.start_soon(self._run, probe, run_id)
        return run_id

    async def _run(self, probe: ProbeSpec, run_id: str) -> None:
        await self.engine.runner.run_probe(probe, first_run_id=run_id)

    def live_spans(self, trace_id: str) -> list[Span]:
        return self.engine.buffer.trace(trace_id)

    def links_for(self, trace_id: str, run_id: str, probe_id: str) -> dict[str, str]:
        return self.engine.links_for(trace_id, run_id, probe_id)

    def settings_public(self) -> dict[str, Any]:
        d = self.engine.config.daemon
        return {
            "listen": self.engine.addresses.get("api", d.listen),
            "otlp_http": self.engine.addresses.get("otlp_http"),
            "otlp_grpc": self.engine.addresses.get("otlp_grpc"),
            "max_concurrent_runs": d.max_concurrent_runs,
            "probes": len(self.engine.config.probes),
            "config": self.engine.config.sources,
        }
