"""Store faults made loud: the engine's :class:`~tracecanary.daemon.store.guard.StoreEvents`.

A failing results store turns ``/readyz`` to 503 with the reason, counts
``tracecanary_store_errors_total{op}``, sets ``tracecanary_store_up`` to 0, raises the ``store``
system alert on the alert channels (cleared with a recovery when the store works again), and is
reported to Sentry once per episode when Sentry is configured. Lost run results count in
``tracecanary_runs_lost_total`` (the guard logs their run ids).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from tracecanary.daemon.observe.metrics import Metrics

if TYPE_CHECKING:
    from tracecanary.daemon.alerts.manager import AlertManager

log = logging.getLogger("tracecanary.store")
SYSTEM_KEY = "store"
"""The system alert's key, and the name of the /readyz reason."""
SUMMARY = "results store is failing"


class StoreFaultReporter:
    """Routes the guard's events to metrics, readiness, the system alert, Sentry and the log."""

    def __init__(self, metrics: Metrics, set_unready: Callable[[str, str | None], None],
                 alerts: Callable[[], AlertManager | None]) -> None:
        self._metrics = metrics
        self._set_unready = set_unready
        self._alerts = alerts
        self._failing = False

    def store_error(self, op: str, error: BaseException) -> None:
        self._metrics.store_error(op)

    def store_failing(self, reason: str, error: BaseException) -> None:
        first = not self._failing
        self._failing = True
        self._metrics.store_up.set(0.0)
        self._set_unready(SYSTEM_KEY, reason)
        log.error("store failing reason=%s", reason)
        alerts = self._alerts()
        if alerts is not None:
            alerts.raise_system(SYSTEM_KEY, SUMMARY, reason)
        if first:
            try:
                from tracecanary.daemon.observe.sentry import capture_daemon_exception

                capture_daemon_exception(error)
            except Exception:
                log.debug("sentry capture failed", exc_info=True)

    def store_recovered(self, was: str) -> None:
        self._failing = False
        self._metrics.store_up.set(1.0)
        self._set_unready(SYSTEM_KEY, None)
        alerts = self._alerts()
        if alerts is not None:
            alerts.clear_system(SYSTEM_KEY, f"the results store works again (it failed: {was})")

    def runs_lost(self, run_ids: list[str], why: str) -> None:
        self._metrics.lost_runs(len(run_ids))
