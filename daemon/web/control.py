"""What the HTTP API and dashboard may ask of the running daemon (implemented in app.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from tracecanary.assertions.spans import Span
from tracecanary.daemon.store.base import Store
from tracecanary.probes.base import ProbeSpec


class Control(Protocol):
    @property
    def store(self) -> Store:
        """The results store."""

    def probes(self) -> list[ProbeSpec]:
        """The probes of the loaded config, in config order."""

    def next_run(self, probe_id: str) -> datetime | None:
        """When the scheduler will fire the probe next (None: paused or unscheduled)."""

    async def run_now(self, probe_id: str) -> str:
        """Fire the probe now; returns the new run id (raises KeyError for an unknown probe)."""

    def live_spans(self, trace_id: str) -> list[Span]:
        """Spans held in the trace buffer for a trace (for a running run's live view)."""

    def links_for(self, trace_id: str, run_id: str, probe_id: str) -> dict[str, str]:
        """Rendered trace links (Sentry, Jaeger, …) for a run."""

    def settings_public(self) -> dict[str, Any]:
        """Non-secret settings for display."""
