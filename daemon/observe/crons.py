"""A RunHook that reports Sentry Crons check-ins per probe: in_progress at fire, ok/error at the verdict.

Retries belong to one check-in (keyed by ``first_run_id``): Sentry sees one execution per scheduled run.
"""

from __future__ import annotations

from tracecanary.daemon.observe.sentry import CronReporter
from tracecanary.daemon.store.base import RunRecord
from tracecanary.probes.base import ProbeSpec


class CronHook:
    def __init__(self, reporter: CronReporter | None = None) -> None:
        self.reporter = reporter or CronReporter()
        self._open: dict[str, str] = {}

    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        if run.attempt == 1:
            self._open[run.first_run_id] = self.reporter.checkin_start(probe)

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        if not run.final:
            return
        check_in_id = self._open.pop(run.first_run_id, None)
        if check_in_id is None:
            return
        ok = run.verdict is not None and run.verdict.ok
        duration_s = (run.finished_ns or run.started_ns) - _first_start_ns(run)
        self.reporter.checkin_finish(probe, check_in_id, ok, max(0.0, duration_s / 1e9))


def _first_start_ns(run: RunRecord) -> int:
    return run.started_ns
