"""System incidents: alerts about tracecanary itself (a failing alert channel, a broken results store,
a down telemetry pipeline), as opposed to a probe's incidents.

A component calls ``AlertManager.raise_system(key, summary, detail)`` when something of its own
breaks and ``clear_system(key)`` when it works again. Both are plain (non-async) calls that never
block and never touch the store on the caller's path: the state lives in memory, the announcement is
queued, and ``SystemIncidents.run`` (started by the manager) hands it to the outbox and persists the
open incidents best-effort (kv namespace ``alerts.system``, key = incident key) — so a broken store
cannot silence the alert about the broken store.

Events: ``channel:<name>`` keys announce ``channel_failing`` / ``channel_recovered``; every other key
``system_failing`` / ``system_recovered``. The opening is announced once, on every channel that is
healthy at that moment (never on the channel the incident is about); the recovery once, on the
channels that got the opening. Incident id: ``system:<key>:<opened_ns>``; dedup keys
``<incident id>:<event>``, so a restart never announces the same opening twice.

After a restart the open incidents the previous process persisted are reloaded as open (not
announced again); one that nobody raises again within ``reconcile_after_s`` is cleared with its
recovery — the component that raised it would have raised it again if it still held.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import anyio
from anyio.abc import TaskStatus

from tracecanary.daemon.alerts.base import EventKind, Notification
from tracecanary.daemon.store.base import Store

log = logging.getLogger("tracecanary.alerts")
NS_SYSTEM = "alerts.system"
STORE_TIMEOUT_S = 5.0
"""Deadline on each best-effort store write: a hung store must not hold announcements back."""

Announce = Callable[[Notification, Sequence[str]], Awaitable[object]]
"""The outbox's announce for a system notification (store-tolerant), with the target channels."""


@dataclass(frozen=True)
class SystemIncident:
    """An open incident about tracecanary itself (``/api/alerts``, the dashboard, ``/readyz``)."""

    key: str
    """What is broken, e.g. ``store``, ``telemetry``, ``channel:ops-webhook``."""
    summary: str
    """One line, e.g. ``results store writes fail``."""
    detail: str
    """The latest error or explanation (updated while open)."""
    opened_ns: int

    @property
    def incident_id(self) -> str:
        return f"system:{self.key}:{self.opened_ns}"


@dataclass
class _Open:
    incident: SystemIncident
    announced_to: list[str] = field(default_factory=list)
    """Channels the opening was queued for (the recovery goes to the same ones)."""
    announced: bool = False
    reloaded: bool = False
    """Persisted by a previous process and not raised again since."""


def event_kinds(key: str) -> tuple[EventKind, EventKind]:
    """(opening, recovery) event kinds for a system incident key."""
    if key.startswith("channel:"):
        return "channel_failing", "channel_recovered"
    return "system_failing", "system_recovered"


class SystemIncidents:
    """The in-memory register of open system incidents and the task that announces them."""

    def __init__(self, store: Store, *, clock: Callable[[], float], announce: Announce,
                 healthy_channels: Callable[[], list[str]], dashboard_url: str | None = None,
                 reconcile_after_s: float = 300.0) -> None:
        self._store = store
        self._clock = clock
        self._announce = announce
        self._healthy_channels = healthy_channels
        self.dashboard_url = dashboard_url
        self._reconcile_after_s = reconcile_after_s
        self._open: dict[str, _Open] = {}
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Literal["open", "close", "save"], str,
                                                                            _Open]](math.inf)
        self._backlog = 0
        """Actions queued and not yet handled (``wait_idle``)."""
        self._changed = anyio.Event()

    # --- the callers' side (sync, never blocks) --------------------------------------------------
    def raise_(self, key: str, summary: str, detail: str = "") -> None:
        """Open (or keep open) ``key``; a repeat only updates summary/detail."""
        entry = self._open.get(key)
        if entry is not None:
            if entry.reloaded:
                log.info("system.confirmed key=%s", key)
            entry.reloaded = False
            if (entry.incident.detail, entry.incident.summary) != (detail, summary):
                entry.incident = replace(entry.incident, summary=summary, detail=detail)
                self._queue("save", key, entry)
            return
        entry = _Open(SystemIncident(key, summary, detail, int(self._clock() * 1e9)))
        self._open[key] = entry
        log.error("system.failing key=%s summary=%s detail=%s", key, summary, detail)
        self._queue("open", key, entry)

    def clear(self, key: str, detail: str = "") -> None:
        """Resolve ``key`` (one recovery); a no-op when it is not open."""
        entry = self._open.pop(key, None)
        if entry is None:
            return
        entry.incident = replace(entry.incident, detail=detail)
        log.warning("system.recovered key=%s detail=%s", key, detail)
        self._queue("close", key, entry)

    def _queue(self, action: Literal["open", "close", "save"], key: str, entry: _Open) -> None:
        self._backlog += 1
        self._send.send_nowait((action, key, entry))

    @property
    def idle(self) -> bool:
        return self._backlog == 0

    async def wait_idle(self) -> None:
        """Until every queued action was handed to the outbox (needs ``run()``)."""
        while self._backlog:
            await self._changed.wait()

    def unannounced(self) -> list[SystemIncident]:
        """Open incidents announced on no channel (none healthy): ``/readyz`` shows them."""
        return [e.incident for e in self._open.values() if e.announced and not e.announced_to]

    def open_incidents(self) -> list[SystemIncident]:
        return sorted((e.incident for e in self._open.values()), key=lambda i: (i.opened_ns, i.key))

    # --- the task --------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reload what a previous process left open, then announce what is queued until cancelled."""
        await self._reload()
        task_status.started()
        async with anyio.create_task_group() as tg:
            if any(e.reloaded for e in self._open.values()):
                tg.start_soon(self._reconcile)
            async for action, key, entry in self._receive:
                try:
                    await self._handle(action, key, entry)
                finally:
                    self._backlog -= 1
                    changed, self._changed = self._changed, anyio.Event()
                    changed.set()

    async def _handle(self, action: str, key: str, entry: _Open) -> None:
        if action == "save":
            await self._persist(key, entry if key in self._open else None)
            return
        opening, recovery = event_kinds(key)
        if action == "open":
            targets = [c for c in self._healthy_channels() if c != key.removeprefix("channel:")]
            entry.announced_to, entry.announced = targets, True
            if not targets:
                log.error("system.unannounced key=%s reason=no healthy channel summary=%s", key,
                          entry.incident.summary)
            await self._persist(key, entry if key in self._open else None)
            await self._announce(self._note(opening, entry.incident), targets)
        else:
            await self._persist(key, None)
            if entry.announced:
                await self._announce(self._note(recovery, entry.incident), entry.announced_to)

    def _note(self, event: EventKind, inc: SystemIncident) -> Notification:
        return Notification(
            event=event, dedup_key=f"{inc.incident_id}:{event}", incident_id=inc.incident_id,
            probe_id=inc.key.removeprefix("channel:") if inc.key.startswith("channel:") else inc.key,
            headline=inc.summary, time_ns=int(self._clock() * 1e9), incident_started_ns=inc.opened_ns,
            detail=inc.detail, dashboard_url=f"{self.dashboard_url}/incidents" if self.dashboard_url else None)

    async def _persist(self, key: str, entry: _Open | None) -> None:
        """Best-effort: a failing store is logged, never raised (the state is in memory)."""
        try:
            with anyio.fail_after(STORE_TIMEOUT_S):
                if entry is None:
                    await self._store.kv_delete(NS_SYSTEM, key)
                else:
                    await self._store.kv_put(NS_SYSTEM, key, _stored(entry))
        except Exception as e:
            log.warning("system.persist_failed key=%s error=%s: %s", key, type(e).__name__, e)

    async def _reload(self) -> None:
        try:
            with anyio.fail_after(STORE_TIMEOUT_S):
                stored = await self._store.kv_list(NS_SYSTEM)
        except Exception as e:
            log.warning("system.reload_failed error=%s: %s", type(e).__name__, e)
            return
        for key, value in stored.items():
            if key in self._open:
                continue
            try:
                inc = SystemIncident(key, str(value["summary"]), str(value.get("detail", "")),
                                     int(value["opened_ns"]))
                self._open[key] = _Open(inc, list(value.get("announced_to", [])), bool(value.get("announced")),
                                        reloaded=True)
            except (KeyError, TypeError, ValueError):
                log.warning("system.reload_skipped key=%s value=%r", key, value)

    async def _reconcile(self) -> None:
        """Clear reloaded incidents nobody raised again (with their recovery)."""
        await anyio.sleep(self._reconcile_after_s)
        for key, entry in list(self._open.items()):
            if entry.reloaded:
                self.clear(key, "not raised again since the restart")


def _stored(entry: _Open) -> dict[str, Any]:
    inc = entry.incident
    return {"summary": inc.summary, "detail": inc.detail, "opened_ns": inc.opened_ns,
            "announced_to": entry.announced_to, "announced": entry.announced}
