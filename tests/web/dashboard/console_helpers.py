"""Shared steps of the console tests: fire a run and wait for its verdict and its alerting."""

from __future__ import annotations

import time

import anyio

from tests.web.dashboard.conftest import Site
from tracecanary.daemon.alerts.manager import NS_STATE
from tracecanary.daemon.run.scheduler import OverlapSkipped
from tracecanary.daemon.store.base import RunRecord, RunStatus

RUN_TIMEOUT_S = 30.0
REMIND_EVERY_S = 0.1
"""The alerting fixture's ``remind_every``."""


async def remind_due(site: Site, probe_id: str = "shop-slack") -> None:
    """Until a reminder is due for the probe's open incident (``remind_every`` has passed since it
    opened, once more than the reminders sent so far): a wait on the clock, bounded."""
    state = await site.control.store.kv_get(NS_STATE, probe_id) or {}
    due_ns = (state.get("incident_started_ns") or 0) + int((state.get("reminders", 0) + 1.5) * REMIND_EVERY_S * 1e9)
    with anyio.fail_after(RUN_TIMEOUT_S):
        while time.time_ns() < due_ns:
            await anyio.sleep(0.01)


async def fire(site: Site, probe_id: str = "shop-slack", *, status: int | None = None) -> RunRecord:
    """Run the probe now (the target answering ``status``); returns the stored run once the alert manager
    has taken it in (the probe's alert state names it) and every delivery it queued was attempted."""
    if status is not None:
        site.running.target.status = status
    store = site.control.store
    with anyio.fail_after(RUN_TIMEOUT_S):
        while True:
            try:
                run_id = await site.control.run_now(probe_id)
                break
            except OverlapSkipped:  # a run still in flight: wait for it
                await anyio.sleep(0.05)
        while (run := await store.get_run(run_id)) is None or run.status is RunStatus.RUNNING:
            await anyio.sleep(0.05)
        alerts = site.running.daemon.engine.alerts
        if alerts is not None and run.final:
            while ((await store.kv_get(NS_STATE, probe_id)) or {}).get("last_run_id") != run_id:
                await anyio.sleep(0.05)
            await alerts.wait_idle()
    return run
