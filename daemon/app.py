"""The daemon: engine + scheduler under one task group; signals, reload, drain, retention.

SIGTERM/SIGINT: stop firing, let in-flight runs finish for up to ``shutdown_grace``, then cancel the
rest (recorded ``aborted``), exit 0. SIGHUP: reload from the same path and the same environment
(``${VAR}``) the daemon started with; a bad config is rejected with its errors logged and the old one
kept; unchanged probes keep their schedule phase and their in-flight runs. A reload applies probes, alert
policies, channels and silences, retention and the API token; a changed setting that only a restart
applies (listen addresses, store, buffer …) is named in a warning line. Every run, "run now"
included, is fired by the scheduler, so a probe's overlap policy holds for manual runs too.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from aiohttp import web

from tracecanary.daemon.cluster.membership import Role
from tracecanary.daemon.cluster.timing import StandbyTiming
from tracecanary.daemon.config.load import Config, load_config
from tracecanary.daemon.config.secrets import install_log_masking
from tracecanary.daemon.daemon_control import DaemonControl, kafka_member
from tracecanary.daemon.engine import Engine, Overrides
from tracecanary.daemon.run.scheduler import Scheduler, cron_next_wall
from tracecanary.daemon.store.base import RunRecord, StoreFault
from tracecanary.daemon.web.api import ApiAuth
from tracecanary.daemon.web.control import DemoControl
from tracecanary.errors import ConfigError, StartupError
from tracecanary.probes.base import ProbeSpec

if TYPE_CHECKING:
    pass

log = logging.getLogger("tracecanary.daemon")
RETENTION_EVERY_S = 3600.0


class Daemon:
    """``tracecanary run CONFIG``."""

    def __init__(self, config_path: str | Path, config: Config, overrides: Overrides | None = None,
                 *, on_ready: Callable[[Daemon], None] | None = None, demo: DemoControl | None = None,
                 environ: Mapping[str, str] | None = None, standby_timing: StandbyTiming | None = None) -> None:
        self.config_path = Path(config_path)
        self.config = config
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        """What ``config`` was loaded with: a reload resolves ``${VAR}`` from the same mapping."""
        self.engine = Engine(config, overrides or Overrides(), daemon_mode=True, routes=[self._web_routes],
                             ready_gate=self._scheduling, defer_alerting=True,
                             standby_timing=standby_timing or StandbyTiming())
        self.scheduler: Scheduler | None = None
        self.auth = ApiAuth(config.daemon.api_token, config.daemon.protect_reads)
        """The API's and the dashboard's token check, updated by a reload."""
        self._retention_changed = anyio.Event()
        self._on_ready = on_ready
        self._demo = demo
        """The demo world (its chaos toggle shows on the dashboard), when run by `tracecanary demo`."""
        self._acting: anyio.CancelScope | None = None
        """While this replica's role acts: the scope of its scheduler, alerting and retention."""
        self._role_ready = anyio.Event()
        self._acted_before = False
        self.stop_reason: str | None = None
        """Why ``run()`` returned (e.g. ``signal SIGTERM``): the exit line says it."""

    def _scheduling(self) -> bool:
        """/readyz: ready once the scheduler runs, not when the servers bind (a standby: once it waits,
        and then /readyz says ``standby``)."""
        if self.engine.membership.role is Role.STANDBY:
            return self._role_ready.is_set()
        return self.scheduler is not None and self.scheduler.started

    async def run(self) -> int:
        self.control = DaemonControl(self.engine, demo=self._demo)
        # Handlers go in before anything starts: a SIGTERM during start-up drains instead of killing.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            return await self._run(signals)

    async def _run(self, signals: AsyncIterator[int]) -> int:
        async with self.engine.started() as engine:
            self.control.alerts = engine.alerts
            membership = engine.membership
            try:
                await self._upsert_probes(self.config.probes)
                await engine.metrics.restore(engine.store, self.config.probes)
                # mode single: what a previous process left is taken over before anything is served as ready
                pending = await self._take_over("daemon restart") if membership.role is Role.SINGLE else None
            except StoreFault as e:
                raise StartupError(f"store {self.engine.store_url(None)}: {e}") from e
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow_roles, tg, pending)
                tg.start_soon(self._warm_console)
                await self._role_ready.wait()
                log.info("daemon ready addresses=%s probes=%d mode=%s member=%s role=%s", engine.addresses,
                         len(self.config.probes), membership.mode, membership.member_id, membership.role)
                if self._on_ready is not None:
                    self._on_ready(self)
                await self._signals(tg, signals)
        return 0

    async def _follow_roles(self, tg: anyio.abc.TaskGroup, pending: list[RunRecord] | None) -> None:
        """Act (schedule, fire, judge, alert) while the role acts; stop at once when it no longer does."""
        async for role in self.engine.membership.roles():
            if role.acts and self._acting is None:
                await self._write_as(tg, self.engine.membership.writer)
                self._acting = anyio.CancelScope()
                await tg.start(self._act, self._acting, pending)
                pending = None
            elif not role.acts and self._acting is not None:
                log.warning("stopped acting: this replica is a standby now member=%s",
                            self.engine.membership.member_id)
                self._acting.cancel()
                self._acting = None
                self.engine.store.drop_kept("this replica is no longer the active one")
            self._role_ready.set()

    async def _write_as(self, tg: anyio.abc.TaskGroup, writer: str | None) -> None:
        """A term won in a fenced mode: the store is opened anew with the term's writer identity, so no
        write of an earlier term (queued on the old connections) can land; the old store is closed."""
        if writer is None:
            return
        from tracecanary.daemon.cluster.fence import member_url
        from tracecanary.daemon.store.urls import open_store

        store = open_store(member_url(self.engine.store_url(None), writer),
                           open_timeout_s=self.config.daemon.store_health.check_timeout)
        try:
            await store.open()
        except Exception:  # its writes will be refused (and counted) until the next term
            log.exception("opening the store for this term failed writer=%s", writer)
            return
        old = self.engine.store.replace_inner(store)

        async def close_old() -> None:
            with anyio.CancelScope(shield=True):
                await old.aclose()

        tg.start_soon(close_old)

    async def _act(self, scope: anyio.CancelScope, pending: list[RunRecord] | None,
                   *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The active role: take over what the previous active process left, alert, schedule, retain."""
        engine, started = self.engine, False
        with scope:
            try:
                if pending is None:  # a standby taking over: the runs the deposed or dead active left
                    pending = await self._take_over_safely()
                if self._acted_before and engine.alerts is not None:  # a stopped manager's channels are closed
                    engine.alerts = self.control.alerts = engine.new_alerts()
                self._acted_before = True
                async with anyio.create_task_group() as tg:
                    if engine.alerts is not None:
                        await engine.start_alerting(tg)
                    kafka = kafka_member(engine.membership)
                    self.scheduler = Scheduler(self._fire, on_lateness=engine.metrics.lateness,
                                               on_skip=engine.metrics.skipped,
                                               owns=kafka.owns if kafka else lambda _: True)
                    if kafka is not None:
                        from tracecanary.daemon.cluster.kafka_rebalance import rebalance_handler

                        kafka.on_moves(rebalance_handler(kafka, engine.runner, self.scheduler, tg,
                                                         reschedule=self._reschedule,
                                                         probes=lambda: self.config.probes))
                    self.scheduler.set_probes(self._scheduled_probes())
                    self.control.scheduler = self.scheduler
                    await self._recover_chains(tg, pending)
                    await tg.start(self.scheduler.run)
                    tg.start_soon(self._retention_loop)
                    task_status.started()
                    started = True
            finally:
                self.scheduler = self.control.scheduler = None
        if not started:  # deposed before it started: the caller goes on
            task_status.started()

    async def _take_over_safely(self) -> list[RunRecord]:
        """:meth:`_take_over` on a takeover in mode standby: a failure is logged and the replica acts on
        (the runs stay as they are until the next takeover); the fence refuses it if it was deposed."""
        membership = self.engine.membership
        if membership.mode == "kafka":  # each probe's new owner aborts what the previous one left (rebalance)
            return []
        reason = "failover" if membership.previous_active not in (None, membership.member_id) else "daemon restart"
        try:
            return await self._take_over(reason)
        except Exception:
            log.exception("taking over the previous active replica's runs failed member=%s", membership.member_id)
            return []

    async def _take_over(self, reason: str) -> list[RunRecord]:
        """What a previous process left: runs still ``running`` become aborted (``reason``: daemon restart
        or failover); chains waiting for their retry are returned."""
        store = self.engine.store
        aborted = await store.abort_running(reason)
        if aborted:
            log.warning("marked runs left running by a previous process as aborted count=%d reason=%s",
                        aborted, reason)
        return await store.pending_retries()

    async def _recover_chains(self, tg: anyio.abc.TaskGroup, pending: list[RunRecord]) -> None:
        """Resume each retry chain a previous process left waiting, or end it with the reason why not
        (then its failure reaches the alert policy)."""
        probes = {p.id: p for p in self.config.probes}
        now_s = time.time()
        for run in pending:
            probe = probes.get(run.probe_id)
            reason = chain_end_reason(probe, run, now_s)
            if reason is not None:
                await self.engine.runner.end_chain(probe, run, reason)
                continue
            assert probe is not None
            log.info("resuming retry chain probe=%s first_run_id=%s next_attempt=%d", probe.id, run.first_run_id,
                     run.attempt + 1)
            tg.start_soon(self._resume, probe, run)

    async def _resume(self, probe: ProbeSpec, run: RunRecord) -> None:
        try:
            await self.engine.runner.resume_chain(probe, run)
        except Exception:
            log.exception("resumed retry chain failed probe=%s first_run_id=%s", probe.id, run.first_run_id)

    def _web_routes(self, engine: Engine) -> list[web.AbstractRouteDef]:
        """The API and the dashboard over this daemon's Control."""
        from tracecanary.daemon.web.api import api_routes
        from tracecanary.daemon.web.dashboard.views import dashboard_routes

        return [*api_routes(self.control, auth=self.auth), *dashboard_routes(self.control, auth=self.auth)]

    def _scheduled_probes(self) -> list[ProbeSpec]:
        """The probes this replica schedules: all of them, or in mode kafka those of its partitions
        (a member's timer heap holds only its own probes; the lease is checked again at fire time)."""
        kafka = kafka_member(self.engine.membership)
        if kafka is None:
            return list(self.config.probes)
        own = kafka.ownership
        return [p for p in self.config.probes if own.owns_probe(p.id)]

    def _reschedule(self) -> None:
        if self.scheduler is not None:
            self.scheduler.set_probes(self._scheduled_probes())

    async def _fire(self, probe: ProbeSpec, scheduled_at: float, first_run_id: str) -> None:
        await self.engine.runner.run_probe(probe, first_run_id=first_run_id)

    async def _signals(self, tg: anyio.abc.TaskGroup, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await self.reload()
                continue
            self.stop_reason = f"signal {signal.Signals(signum).name}"
            log.info("shutdown signal=%s in_flight=%d grace_s=%s", signal.Signals(signum).name,
                     len(self.engine.runner.in_flight), self.config.daemon.shutdown_grace)
            await self.drain()
            tg.cancel_scope.cancel()
            return

    async def drain(self) -> None:
        """Stop firing; end the retry chains whose retry could not finish within shutdown_grace (their
        failure is final and alerted now); wait for in-flight runs and the other retries up to the
        grace; the caller then cancels the rest."""
        if self.scheduler is None:  # a standby: nothing fires, nothing to drain
            return
        self.scheduler.stop()
        grace_s = self.config.daemon.shutdown_grace
        self.engine.runner.end_retries(time.time() + grace_s)
        with anyio.move_on_after(grace_s):
            await self.engine.runner.wait_idle()
            if self.engine.alerts is not None:  # not for a dead channel: its queue waits in the outbox
                await self.engine.alerts.wait_idle(held_ok=True)

    async def reload(self) -> bool:
        try:
            new = load_config(self.config_path, self.environ)
        except ConfigError as e:
            log.error("reload rejected; keeping the old config errors=%d", len(e.errors))
            for line in e.errors:
                log.error("config error: %s", line)
            return False
        old, self.config = self.config, new
        restart = await self.engine.apply_config(new)
        self.auth.update(new.daemon.api_token, new.daemon.protect_reads)
        if new.daemon.retention != old.daemon.retention:
            self._retention_changed.set()
        install_log_masking(new.secrets())
        await self._upsert_probes(new.probes)
        if self.scheduler is not None:  # a standby's scheduler starts with the config it has then
            self.scheduler.set_probes(self._scheduled_probes())
        a = new.extra.alerts
        log.info("config reloaded probes=%d alert_channels=%d alert_policies=%d silences=%d "
                 "retention_max_age_s=%g api_token=%s", len(new.probes), len(a.channels), len(a.policies),
                 len(a.silences), new.daemon.retention.max_age, "set" if new.daemon.api_token else "unset")
        if restart:
            log.warning("config reloaded; these changes need a restart to apply: %s", "; ".join(restart))
        return True

    async def _upsert_probes(self, probes: list[ProbeSpec]) -> None:
        secrets = self.config.secrets()  # the stored spec never holds a credential in clear
        for p in probes:
            spec = secrets.mask(p.model_dump(mode="json", by_alias=True))
            await self.engine.store.upsert_probe(p.id, p.kind, spec, p.tags)

    async def _warm_console(self) -> None:
        """Fill the console's rollups once in the background at start (30 days of day and hour buckets, two
        days at a time): the first 30-day view does not wait for them. On failure the pages fill on demand."""
        now_ns = time.time_ns()
        hour_ns, day_ns = 3600 * 10**9, 86_400 * 10**9
        try:
            await self.engine.store.run_stats(now_ns - 30 * day_ns, now_ns)
            # the probe pages' charts read hour buckets; no probe has the empty id, so this only fills them
            since = (now_ns // hour_ns + 1) * hour_ns - 30 * day_ns
            await self.engine.store.run_stats(since, now_ns, probe_id="", bucket_ns=day_ns)
        except Exception as e:
            log.warning("console rollups not warmed (filled on demand): %s", e)

    async def _retention_loop(self) -> None:
        """Apply retention hourly, and at once when a reload changed it."""
        while True:
            r = self.config.daemon.retention
            try:
                deleted = await self.engine.store.apply_retention(
                    max_age_s=r.max_age, max_runs_per_probe=r.max_runs_per_probe
                )
                if deleted:
                    log.info("retention deleted runs=%d", deleted)
            except Exception:
                log.exception("retention failed")
            with anyio.move_on_after(RETENTION_EVERY_S):
                await self._retention_changed.wait()
            self._retention_changed = anyio.Event()


def chain_end_reason(probe: ProbeSpec | None, run: RunRecord, now_s: float) -> str | None:
    """None when a retry chain a previous process left should resume; else why it ends instead.

    A chain whose retry ran and was aborted (the process died during it) ends. Otherwise it resumes
    while its retry is at most one schedule period overdue (``every``, the cron gap after
    the due time, or for a paused or unscheduled probe its retry delay plus timeout): later, the
    probe's own schedule has moved on and the failure is reported as it stands.
    """
    if probe is None:
        return "the probe is no longer configured"
    if run.retry_aborted is not None:  # the retry ran and was aborted (the process died during it)
        return run.retry_aborted
    due_s = (run.retry_at_ns or (run.finished_ns or run.started_ns) + int(probe.retries.delay * 1e9)) / 1e9
    if probe.every is not None and not probe.pause:
        period_s = probe.every
    elif probe.cron is not None and not probe.pause:
        nxt = cron_next_wall(probe.cron, probe.timezone, due_s)
        period_s = cron_next_wall(probe.cron, probe.timezone, nxt) - nxt
    else:
        period_s = probe.retries.delay + probe.timeout
    overdue_s = now_s - due_s
    if overdue_s > period_s:
        return (f"the daemon was not running when the retry was due ({overdue_s:.0f}s ago, more than "
                f"the probe's period of {period_s:g}s)")
    return None


__all__ = ["RETENTION_EVERY_S", "Daemon", "DaemonControl", "chain_end_reason"]
