"""Runner hooks: the seam metrics, alerts and Sentry check-ins hang on.

Hooks are called by the runner in order; a hook must be quick (queue slow work) and must not raise —
the runner logs and swallows hook errors so one broken hook never loses a run.
"""

from __future__ import annotations

from typing import Protocol

from tracecanary.daemon.store.base import RunRecord
from tracecanary.probes.base import ProbeSpec


class RunHook(Protocol):
    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        """The run was created (status running) and is about to fire."""

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        """The run finished or was aborted and is stored. ``run.final`` is False when a retry follows."""
