"""tracecanary_alert_state's source: AlertManager.alert_states (0 ok, 1 failing, 2 silenced) over a real store."""

from __future__ import annotations

import pytest

from tests.alerts.helpers import probe, run
from tracecanary.daemon.alerts.manager import ALERT_FAILING, ALERT_OK, ALERT_SILENCED, AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.alerts.silences import SilenceSettings
from tracecanary.daemon.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


async def test_ok_failing_and_silenced(store: SqliteStore) -> None:
    settings = AlertsSettings.model_validate({
        "channels": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/hook"}},  # never delivered: no lanes
        "policies": {"default": {"channels": ["hook"], "failure_threshold": 1, "recovery_threshold": 1}},
        "silences": [{"tags": ["maintenance"], "start": "2020-01-01T00:00:00Z"}]})
    mgr = AlertManager(store, settings)
    orders, billing, batch = probe("orders"), probe("billing"), probe("batch", tags=("maintenance",))
    probes = [orders, billing, batch]
    assert await mgr.alert_states(probes) == {"orders": ALERT_OK, "billing": ALERT_OK, "batch": ALERT_SILENCED}

    await mgr.on_run_finished(orders, run("orders", 1, "fail"))
    await mgr.on_run_finished(batch, run("batch", 1, "fail"))  # failing, but a silence covers it
    assert await mgr.alert_states(probes) == {"orders": ALERT_FAILING, "billing": ALERT_OK, "batch": ALERT_SILENCED}

    added = await mgr.add_silence(SilenceSettings.model_validate({"probes": ["orders"], "start": "2020-01-01T00:00:00Z"}))
    assert (await mgr.alert_states(probes))["orders"] == ALERT_SILENCED
    assert await mgr.remove_silence(added.id)
    assert (await mgr.alert_states(probes))["orders"] == ALERT_FAILING

    await mgr.on_run_finished(orders, run("orders", 2, "pass"))
    assert (await mgr.alert_states(probes))["orders"] == ALERT_OK
