"""A RunHook that reports Sentry Crons check-ins per probe: in_progress at fire, ok/error at the verdict.

Retries belong to one check-in (keyed by ``first_run_id``): Sentry sees one execution per scheduled run,
and its duration runs from the first attempt's start to the final attempt's end. An ``unknown`` verdict (no
telemetry: the system may be fine) closes the check-in ``ok``: like the alert policy, Crons never pages a
probe's owner for a dead telemetry pipeline; the daemon's "telemetry pipeline" incident does. A run
skipped for an unmet ``requires:`` closes it ``ok`` too: the schedule ran, and a skip never alerts.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.observe.sentry import CronReporter
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.probes.base import ProbeSpec


@dataclass(frozen=True, slots=True)
class _OpenCheckIn:
    check_in_id: str
    first_started_ns: int


class CronHook:
    """Opens a check-in at a run's first attempt and closes it at the final one."""

    def __init__(self, reporter: CronReporter | None = None) -> None:
        self.reporter = reporter or CronReporter()
        self._open: dict[str, _OpenCheckIn] = {}
        """first_run_id → the open check-in; an entry lives until the run's final attempt."""

    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        if run.attempt == 1:
            self._open[run.first_run_id] = _OpenCheckIn(self.reporter.checkin_start(probe), run.started_ns)

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        if not run.final:
            return
        opened = self._open.pop(run.first_run_id, None)
        if opened is None:
            return
        ok = run.status is RunStatus.SKIPPED or (
            run.verdict is not None and (run.verdict.ok or run.verdict is Verdict.UNKNOWN))
        duration_ns = (run.finished_ns or run.started_ns) - opened.first_started_ns
        self.reporter.checkin_finish(probe, opened.check_in_id, ok, max(0.0, duration_ns / 1e9))
