"""The daemon: engine + scheduler under one task group; signals, reload, drain, retention.

SIGTERM/SIGINT: stop firing, let in-flight runs finish for up to ``shutdown_grace``, then cancel the
rest (recorded ``aborted``), exit 0. SIGHUP: reload; a bad config is rejected with its errors logged
and the old one kept; unchanged probes keep their schedule phase and their in-flight runs.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from tracecanary.errors import ConfigError
from tracecanary.probes.base import ProbeSpec

from .config import Config, load_config
from .engine import Engine, Overrides
from .scheduler import Scheduler

log = logging.getLogger("tracecanary.daemon")


class Daemon:
    """``tracecanary run CONFIG``."""

    def __init__(self, config_path: str | Path, config: Config, overrides: Overrides | None = None,
                 *, on_ready: Callable[[Daemon], None] | None = None, demo: Any = None) -> None:
        self.config_path = Path(config_path)
        self.config = config
        self.engine = Engine(config, overrides or Overrides())
        self.scheduler: Scheduler | None = None
        self._on_ready = on_ready
        self._demo = demo
        """The demo world (its chaos toggle shows on the dashboard), when run by `tracecanary demo`."""
        self.reloads = 0

    async def run(self) -> int:
        from .control_impl import DaemonControl
        from .wiring import wire_daemon

        self.control = DaemonControl(self.engine)
        if self._demo is not None:
            self.control.demo = self._demo
        wire_daemon(self.engine, self.control)
        # Handlers go in before anything starts: a SIGTERM during start-up drains instead of killing.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            return await self._run(signals)

    async def _run(self, signals: AsyncIterator[int]) -> int:
        async with self.engine.started() as engine:
            engine.ready = False  # /readyz: ready once the scheduler runs, not when the servers bind
            if engine.alerts is not None:
                self.control.alerts = engine.alerts
            aborted = await engine.store.abort_running("daemon restart")
            if aborted:
                log.warning("marked runs left running by a previous process as aborted count=%d", aborted)
            await self._upsert_probes(self.config.probes)
            self.scheduler = Scheduler(self._fire, on_lateness=engine.metrics.lateness,
                                       on_skip=engine.metrics.skipped)
            self.scheduler.set_probes(self.config.probes)
            self.control.scheduler = self.scheduler
            async with anyio.create_task_group() as tg:
                self.control.task_group = tg
                await tg.start(self.scheduler.run)
                tg.start_soon(self._retention_loop)
                engine.ready = True
                log.info("daemon ready addresses=%s probes=%d", engine.addresses, len(self.config.probes))
                if self._on_ready is not None:
                    self._on_ready(self)
                await self._signals(tg, signals)
        return 0

    async def _fire(self, probe: ProbeSpec, scheduled_at: float) -> None:
        await self.engine.runner.run_probe(probe)

    async def _signals(self, tg: anyio.abc.TaskGroup, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await self.reload()
                continue
            log.info("shutdown signal=%s in_flight=%d grace_s=%s", signal.Signals(signum).name,
                     len(self.engine.runner.in_flight), self.config.daemon.shutdown_grace)
            await self.drain()
            tg.cancel_scope.cancel()
            return

    async def drain(self) -> None:
        """Stop firing; wait for in-flight runs up to shutdown_grace; the caller then cancels the rest."""
        assert self.scheduler is not None
        self.scheduler.stop()
        with anyio.move_on_after(self.config.daemon.shutdown_grace):
            await self.engine.runner.wait_idle()
            if self.engine.alerts is not None:
                await self.engine.alerts.wait_idle()

    async def reload(self) -> bool:
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload rejected; keeping the old config errors=%d", len(e.errors))
            for line in e.errors:
                log.error("config error: %s", line)
            return False
        self.config = new
        self.engine.config = new
        await self._upsert_probes(new.probes)
        assert self.scheduler is not None
        self.scheduler.set_probes(new.probes)
        self.engine.metrics.retain(new.probes)
        self.reloads += 1
        log.info("config reloaded probes=%d", len(new.probes))
        return True

    async def _upsert_probes(self, probes: list[ProbeSpec]) -> None:
        for p in probes:
            await self.engine.store.upsert_probe(p.id, p.kind, p.model_dump(mode="json", by_alias=True), p.tags)

    async def _retention_loop(self) -> None:
        r = self.config.daemon.retention
        while True:
            try:
                deleted = await self.engine.store.apply_retention(
                    max_age_s=r.max_age, max_runs_per_probe=r.max_runs_per_probe
                )
                if deleted:
                    log.info("retention deleted runs=%d", deleted)
            except Exception:
                log.exception("retention failed")
            await anyio.sleep(3600)
