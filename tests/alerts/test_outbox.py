"""The durable outbox and the lanes: expiry, a full lane, a crash mid-announce, a reload that removes or
replaces a channel, and the runs a crash kept from the alert hook (real receivers, a real SQLite store)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio
import pytest

from tests.alerts.helpers import Clock, FlakyHook, probe, run, running, settled
from tests.probes.helpers import serve
from tracecanary.daemon.alerts.base import Notification
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.alerts.silences import SilenceSettings
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.integrations import Integrations

pytestmark = pytest.mark.anyio


def settings(*urls: str, **extra: Any) -> AlertsSettings:
    return AlertsSettings.model_validate({
        "channels": {f"hook{i}": {"type": "webhook", "url": f"{url}/hook"} for i, url in enumerate(urls)},
        "policies": {"default": {"channels": [f"hook{i}" for i in range(len(urls))], "failure_threshold": 1}},
        "retry_delays": ["10ms"], **extra})


async def until(predicate: Any, timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.01)


async def outcomes(store: SqliteStore) -> Counter[tuple[str, str]]:
    return Counter((e["data"]["event"], e["data"]["outcome"]) for e in await store.list_events("alert.attempt", limit=500))


async def test_undelivered_notification_expires_but_a_recovery_never(store: SqliteStore) -> None:
    hook, clock = FlakyHook(), Clock()
    async with serve(hook.app()) as base:
        mgr = AlertManager(store, settings(base, delivery_expiry="1h"), clock=clock)
        async with running(mgr):
            await mgr.on_run_finished(probe("orders"), run("orders", 1, "fail"))
            await mgr.on_run_finished(probe("orders"), run("orders", 2, "pass"))
            await until(lambda: hook.attempts >= 2)
            clock.now_s += 2 * 3600  # past the expiry: the held failing is dropped at its next attempt
            await until(lambda: mgr.outbox.stats().pending == 1)
            hook.down = False
            await settled(mgr)
    assert [b["event"] for b in hook.accepted] == ["recovered"]
    counts = await outcomes(store)
    assert counts[("failing", "expired")] == 1 and counts[("recovered", "sent")] == 1
    assert await store.kv_list("alerts.outbox") == {}


async def test_a_full_lane_never_drops_a_recovery(store: SqliteStore) -> None:
    mgr = AlertManager(store, settings("http://127.0.0.1:9", queue_size=2))  # no lanes running: it fills up
    await mgr.on_run_finished(probe("a"), run("a", 1, "fail"))
    await mgr.on_run_finished(probe("a"), run("a", 2, "pass"))
    await mgr.on_run_finished(probe("b"), run("b", 1, "fail"))
    await mgr.on_run_finished(probe("c"), run("c", 1, "fail"))
    kept = sorted(await store.kv_list("alerts.outbox"))
    assert kept == ["a:a-r1:recovered|hook0", "c:c-r1:failing|hook0"]
    dropped = [e["data"]["dedup_key"] for e in reversed(await store.list_events("alert.dropped"))]
    assert dropped == ["a:a-r1:failing", "b:b-r1:failing"]


async def test_an_announcement_cut_short_by_a_crash_is_completed_on_start(store: SqliteStore) -> None:
    """The claim was written (with the note and its targets) but not its outbox entries: nothing of it
    was sent, so the next start writes them and delivers once."""
    hook = FlakyHook(down=False)
    async with serve(hook.app()) as base:
        note = Notification(event="failing", dedup_key="orders:r9:failing", incident_id="orders:r9", probe_id="orders",
                            verdict="fail", time_ns=time.time_ns())
        await store.kv_put("alerts.claims", note.dedup_key, {"owner": "crashed", "time_ns": note.time_ns,
                                                            "state": "queuing",
                                                            "note": note.model_dump(mode="json"), "channels": ["hook0"]})
        mgr = AlertManager(store, settings(base))
        async with running(mgr):
            await settled(mgr)
            assert not await mgr.outbox.announce(note, ["hook0"])  # the claim stands: no second announcement
            await settled(mgr)
    assert hook.keys() == ["orders:r9:failing"]
    assert "state" not in await store.kv_get("alerts.claims", note.dedup_key)


async def test_reload_replaces_a_channel_and_removes_another(store: SqliteStore) -> None:
    dead, spare, other = FlakyHook(), FlakyHook(down=False), FlakyHook()
    async with serve(dead.app()) as dead_url, serve(spare.app()) as spare_url, serve(other.app()) as other_url:
        mgr = AlertManager(store, settings(dead_url, other_url))
        async with running(mgr):
            await mgr.on_run_finished(probe("orders"), run("orders", 1, "fail"))
            await until(lambda: dead.attempts >= 1 and other.attempts >= 1)
            # hook0 moves to a URL that works (its held notification goes there now); hook1 is removed
            new = AlertsSettings.model_validate({
                "channels": {"hook0": {"type": "webhook", "url": f"{spare_url}/hook"}},
                "policies": {"default": {"channels": ["hook0"], "failure_threshold": 2}}})
            await mgr.reconfigure(new, Integrations(), [probe("orders")])
            await settled(mgr)
            assert mgr.policy_for(probe("orders")) == new.policies["default"]
    assert spare.keys() == ["orders:orders-r1:failing"] and dead.accepted == [] and other.accepted == []
    [dropped] = await store.list_events("alert.dropped")
    assert dropped["data"] == {"dedup_key": "orders:orders-r1:failing", "channel": "hook1", "reason": "channel removed"}
    assert await store.kv_list("alerts.outbox") == {}


async def test_runs_the_hook_never_saw_are_fed_on_start(store: SqliteStore) -> None:
    """A crash between recording a final run and alerting on it: the start-up pass catches up."""
    hook = FlakyHook(down=False)
    async with serve(hook.app()) as base:
        s = settings(base).model_copy(update={"policies": AlertsSettings.model_validate(
            {"policies": {"default": {"channels": ["hook0"], "failure_threshold": 2}}}).policies})
        p = probe("orders")
        first = AlertManager(store, s)
        await first.on_run_finished(p, run("orders", 1, "fail"))  # seen: one failure, below the threshold
        for i in (2, 3):  # recorded, never seen by the hook
            r = run("orders", i, "fail")
            await store.insert_run(r)
            await store.finish_run(r)
        mgr = AlertManager(store, s)
        async with running(mgr):
            await mgr.reconcile([p])
            await settled(mgr)
            await mgr.reconcile([p])  # twice: nothing new
            await settled(mgr)
    assert hook.keys() == ["orders:orders-r1:failing"]
    assert hook.accepted[0]["consecutive_failures"] == 2


async def test_reload_applies_configured_silences(store: SqliteStore) -> None:
    hook = FlakyHook(down=False)
    async with serve(hook.app()) as base:
        s = settings(base)
        mgr = AlertManager(store, s)
        async with running(mgr):
            silenced = s.model_copy(update={"silences": [SilenceSettings(probes=["orders"], comment="maintenance",
                                                                         start="2020-01-01T00:00:00Z")]})
            await mgr.reconfigure(silenced, Integrations(), [probe("orders")])
            await mgr.on_run_finished(probe("orders"), run("orders", 1, "fail"))
            await settled(mgr)
            [listed] = await mgr.list_silences()
    assert hook.accepted == [] and listed.id == "config-0" and listed.settings.comment == "maintenance" and listed.active
    [held] = await store.list_events("alert.silenced")
    assert held["data"]["event"] == "failing" and held["data"]["silence_id"] == "config-0"
