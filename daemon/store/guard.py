"""The engine's store: any backend, with its faults made loud and no run result dropped silently.

:class:`GuardedStore` implements the Store protocol by delegation. Every error is counted by
operation (``StoreEvents.store_error``); a :class:`StoreFault` (not writable, disk full, file
deleted or replaced…) also marks the store failing with its one-line reason
(``StoreEvents.store_failing``: the engine turns ``/readyz`` to 503, raises the ``store`` system
alert and reports to Sentry). A run whose ``insert_run``/``finish_run`` hit a fault is not raised to
the runner — its verdict still reaches metrics and alerts — but kept here, bounded in count, span
volume and time, and written again once the store is healthy. What cannot be kept is counted lost
and logged with its run ids (``StoreEvents.runs_lost``), never dropped quietly.

:meth:`GuardedStore.run` checks the store every ``check_interval`` (``Store.health``: the file is
still the one opened and takes a write), flushes the kept runs when it is healthy and reports the
recovery. A check that does not answer within ``check_timeout`` (a hung disk) is itself a fault.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pydantic import Field

from tracecanary.assertions.units import Duration
from tracecanary.daemon.cluster.fence import FencedWrite, fenced_reason
from tracecanary.daemon.store.base import FinishExtra, ProbeRow, RunRecord, Store, StoreFault
from tracecanary.daemon.store.stats import RunHead, RunStats
from tracecanary.model import StrictModel

log = logging.getLogger("tracecanary.store")
T = TypeVar("T")


class StoreHealthSettings(StrictModel):
    """``daemon.store_health``: how store faults are found and how long unwritten results are kept."""

    check_interval: Duration = Field(30.0, gt=0, description="How often the store is checked: the file "
                                     "opened is still at its path, writable, and takes a write.")
    check_timeout: Duration = Field(20.0, gt=0, description="A check (or the open at start) not answered "
                                    "within this is a fault of its own (a hung disk or file system).")
    keep_runs_for: Duration = Field(600.0, gt=0, description="How long run results the store refused are "
                                    "kept in memory to be written again; then they count as lost.")
    max_pending_runs: int = Field(1000, ge=1, description="Most run results kept while the store fails; "
                                  "beyond it the oldest count as lost.")
    max_pending_spans: int = Field(100_000, ge=0, description="Most spans (of the kept runs' snapshots) "
                                   "kept while the store fails; beyond it the oldest runs count as lost.")


class StoreEvents(Protocol):
    """What the guard reports (the engine: metrics, /readyz, the system alert, Sentry, the log)."""

    def store_error(self, op: str, error: BaseException) -> None:
        """A store call failed (every failure, fault or not)."""

    def store_failing(self, reason: str, error: BaseException) -> None:
        """The store is failing, or fails for another reason than last reported."""

    def store_recovered(self, was: str) -> None:
        """The store works again (a health check passed and every kept run was written)."""

    def runs_lost(self, run_ids: list[str], why: str) -> None:
        """These runs' results will never be stored."""


@dataclass(slots=True)
class _Kept:
    run: RunRecord
    since_s: float


class GuardedStore:
    """A :class:`Store` that reports faults and keeps refused run results for a bounded retry."""

    def __init__(self, store: Store, events: StoreEvents, settings: StoreHealthSettings | None = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 on_fenced: Callable[[str, str], None] | None = None) -> None:
        """``on_fenced(op, reason)``: a write refused because this replica lost the leader epoch
        (cluster mode standby): counted and logged by the caller, never kept for retry, never merged."""
        self.inner = store
        self.on_fenced = on_fenced
        self.settings = settings or StoreHealthSettings()
        self._events = events
        self._clock = clock
        self.failing: str | None = None
        """The reason the store fails, None while healthy."""
        self._kept: dict[str, _Kept] = {}
        self._checking_since: float | None = None
        self._finish_extras: list[FinishExtra] = []

    @property
    def pending_runs(self) -> list[RunRecord]:
        """Runs whose result waits to be written, oldest first."""
        return [k.run for k in self._kept.values()]

    # --- faults --------------------------------------------------------------------------------
    def _fault(self, op: str, error: StoreFault) -> None:
        """Count it; report the store failing when it was not, or when a health check finds another
        cause (the check's reason is the reported one: calls failing meanwhile do not make it flap)."""
        self._events.store_error(op, error)
        reason = str(error)
        if self.failing is None or (op == "health" and reason != self.failing):
            self.failing = reason
            self._events.store_failing(reason, error)

    def _fenced(self, op: str, error: BaseException) -> FencedWrite | None:
        """A write the cluster fence refused: reported (not a fault of the store); None for other errors."""
        reason = fenced_reason(error)
        if reason is None:
            return None
        log.error("store write refused: this replica is not the active one op=%s reason=%s", op, reason)
        if self.on_fenced is not None:
            self.on_fenced(op, reason)
        return error if isinstance(error, FencedWrite) else FencedWrite(reason)

    async def _call(self, op: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as e:
            if (fenced := self._fenced(op, e)) is not None:
                raise fenced from e
            if isinstance(e, StoreFault):
                self._fault(op, e)
            else:
                self._events.store_error(op, e)
            raise

    async def _save(self, op: str, run: RunRecord, write: Callable[[RunRecord], Awaitable[None]]) -> None:
        try:
            await write(run)
        except Exception as e:
            fenced = self._fenced(op, e)
            if fenced is None:
                self._refused(op, run, e)
            elif op == "insert_run":  # a deposed replica's run must not start; a result it finishes is dropped
                raise fenced from e
            return
        self._kept.pop(run.run_id, None)

    def _refused(self, op: str, run: RunRecord, error: Exception) -> None:
        """A run write failed: a fault keeps the run for a later write; anything else is raised."""
        if not isinstance(error, StoreFault):
            self._events.store_error(op, error)
            raise error
        self._fault(op, error)
        self._keep(run)
        log.warning("run kept in memory until the store works again run_id=%s op=%s pending=%d reason=%s",
                    run.run_id, op, len(self._kept), error)

    def replace_inner(self, store: Store) -> Store:
        """Serve from ``store`` (opened) from now on; returns the one it replaces (the caller closes it)."""
        old, self.inner = self.inner, store
        if self._finish_extras:
            self._give_extras()
        return old

    def add_finish_extra(self, extra: FinishExtra) -> bool:
        """Write ``extra``'s statement in the same statement as each finished run (kept runs' retries
        included); False when the backend cannot (SQLite), then the caller writes it itself."""
        self._finish_extras.append(extra)
        return self._give_extras()

    def _give_extras(self) -> bool:
        if not hasattr(self.inner, "finish_extras"):
            return False
        self.inner.finish_extras = self._finish_extras
        return True

    def drop_kept(self, why: str) -> list[str]:
        """Forget the kept runs without writing them (a deposed replica: the new active records them
        ``aborted``/``failover``, and a write of this term must not land later); their run ids."""
        dropped = list(self._kept)
        self._kept.clear()
        if dropped:
            log.error("kept runs dropped, not written why=%s run_ids=%s", why, ",".join(dropped))
            if self.on_fenced is not None:
                for _ in dropped:
                    self.on_fenced("finish_run", why)
        return dropped

    def _keep(self, run: RunRecord) -> None:
        kept = self._kept.get(run.run_id)
        self._kept[run.run_id] = _Kept(run, kept.since_s if kept is not None else self._clock())
        s = self.settings
        lost: list[str] = []
        while len(self._kept) > s.max_pending_runs or (
                len(self._kept) > 1 and sum(len(k.run.spans) for k in self._kept.values()) > s.max_pending_spans):
            lost.append(self._kept.pop(next(iter(self._kept))).run.run_id)
        if lost:
            self._lose(lost, f"more than {s.max_pending_runs} runs or {s.max_pending_spans} spans "
                             "waiting for the store")

    def _lose(self, run_ids: list[str], why: str) -> None:
        log.error("runs lost: their results were never stored count=%d why=%s run_ids=%s",
                  len(run_ids), why, ",".join(run_ids))
        self._events.runs_lost(run_ids, why)

    # --- health --------------------------------------------------------------------------------
    async def check(self) -> str | None:
        """One health check: the store's own, then the kept runs written; None when healthy."""
        try:
            reason = await self.inner.health()
        except Exception as e:  # health() answers with a reason; an exception is a fault of its own
            reason = str(e) if isinstance(e, StoreFault) else f"health check failed: {type(e).__name__}: {e}"
        if reason is None:
            reason = await self._flush()
        self._expire()
        if reason is not None:
            self._fault("health", StoreFault(reason))
        elif self.failing is not None:
            was, self.failing = self.failing, None
            log.warning("store works again was=%s", was)
            self._events.store_recovered(was)
        return reason

    async def _flush(self) -> str | None:
        """Write the kept runs, oldest first; the fault that stopped it, or None."""
        for run_id, kept in list(self._kept.items()):
            try:
                await self.inner.finish_run(kept.run)
            except Exception as e:
                if self._fenced("finish_run", e) is not None:  # another replica is active now: not ours to write
                    self._kept.pop(run_id, None)
                    continue
                if isinstance(e, StoreFault):
                    return str(e)
                self._events.store_error("finish_run", e)
                self._kept.pop(run_id, None)
                self._lose([run_id], f"write failed: {type(e).__name__}: {e}")
                continue
            if self._kept.get(run_id) is kept:
                del self._kept[run_id]
            log.info("kept run written run_id=%s", run_id)
        return None

    def _expire(self) -> None:
        horizon = self._clock() - self.settings.keep_runs_for
        old = [rid for rid, k in self._kept.items() if k.since_s < horizon]
        for rid in old:
            del self._kept[rid]
        if old:
            self._lose(old, f"the store failed for longer than keep_runs_for={self.settings.keep_runs_for:g}s")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check every ``check_interval`` until cancelled; a check that hangs is reported, not waited on."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                await anyio.sleep(self.settings.check_interval)
                await self._bounded_check(tg)

    async def _bounded_check(self, tg: TaskGroup) -> None:
        timeout_s = self.settings.check_timeout
        hung = StoreFault(f"the store did not answer a health check within {timeout_s:g}s (hung disk?)")
        if self._checking_since is not None:  # the last check still hangs
            self._fault("health", hung)
            self._expire()
            return
        done = anyio.Event()

        async def one() -> None:
            self._checking_since = self._clock()
            try:
                await self.check()
            finally:
                self._checking_since = None
                done.set()

        tg.start_soon(one)
        with anyio.move_on_after(timeout_s):
            await done.wait()
        if not done.is_set():
            self._fault("health", hung)

    # --- the Store protocol ----------------------------------------------------------------------
    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        """Write what is kept one last time (bounded), count the rest lost, close the store."""
        if self._kept:
            with anyio.move_on_after(self.settings.check_timeout):
                await self._flush()
            if self._kept:
                self._lose(list(self._kept), "the daemon stopped while the store was failing")
                self._kept.clear()
        await self.inner.aclose()

    async def health(self) -> str | None:
        return await self.inner.health()

    async def upsert_probe(self, probe_id: str, kind: str, spec: dict[str, Any], tags: list[str]) -> None:
        await self._call("upsert_probe", self.inner.upsert_probe(probe_id, kind, spec, tags))

    async def list_probes(self) -> list[ProbeRow]:
        return await self._call("list_probes", self.inner.list_probes())

    async def insert_run(self, run: RunRecord) -> None:
        await self._save("insert_run", run, self.inner.insert_run)

    async def finish_run(self, run: RunRecord) -> None:
        await self._save("finish_run", run, self.inner.finish_run)

    async def get_run(self, run_id: str, *, with_spans: bool = False) -> RunRecord | None:
        kept = self._kept.get(run_id)
        if kept is not None:
            return kept.run
        return await self._call("get_run", self.inner.get_run(run_id, with_spans=with_spans))

    async def list_runs(
        self, probe_id: str | None = None, *, limit: int = 50, before_ns: int | None = None
    ) -> list[RunRecord]:
        return await self._call("list_runs", self.inner.list_runs(probe_id, limit=limit, before_ns=before_ns))

    async def runs_for_trace(self, trace_id: str) -> list[RunRecord]:
        return await self._call("runs_for_trace", self.inner.runs_for_trace(trace_id))

    async def run_stats(
        self, since_ns: int, until_ns: int, *, probe_id: str | None = None, bucket_ns: int | None = None
    ) -> dict[tuple[str, int], RunStats]:
        return await self._call("run_stats", self.inner.run_stats(
            since_ns, until_ns, probe_id=probe_id, bucket_ns=bucket_ns))

    async def recent_runs(self, probe_ids: list[str], *, limit: int) -> dict[str, list[RunHead]]:
        return await self._call("recent_runs", self.inner.recent_runs(probe_ids, limit=limit))

    async def latest_runs(self, probe_ids: list[str]) -> dict[str, RunRecord]:
        return await self._call("latest_runs", self.inner.latest_runs(probe_ids))

    async def abort_running(self, reason: str) -> int:
        return await self._call("abort_running", self.inner.abort_running(reason))

    async def pending_retries(self) -> list[RunRecord]:
        return await self._call("pending_retries", self.inner.pending_retries())

    async def apply_retention(self, *, max_age_s: float, max_runs_per_probe: int) -> int:
        return await self._call("apply_retention", self.inner.apply_retention(
            max_age_s=max_age_s, max_runs_per_probe=max_runs_per_probe))

    async def append_event(self, kind: str, data: dict[str, Any]) -> int:
        return await self._call("append_event", self.inner.append_event(kind, data))

    async def list_events(self, kind: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        return await self._call("list_events", self.inner.list_events(kind, limit=limit))

    async def kv_get(self, namespace: str, key: str) -> Any | None:
        return await self._call("kv_get", self.inner.kv_get(namespace, key))

    async def kv_put(self, namespace: str, key: str, value: Any) -> None:
        await self._call("kv_put", self.inner.kv_put(namespace, key, value))

    async def kv_put_if_absent(self, namespace: str, key: str, value: Any) -> bool:
        return await self._call("kv_put_if_absent", self.inner.kv_put_if_absent(namespace, key, value))

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._call("kv_delete", self.inner.kv_delete(namespace, key))

    async def kv_list(self, namespace: str) -> dict[str, Any]:
        return await self._call("kv_list", self.inner.kv_list(namespace))


async def open_guarded(url: str, events: StoreEvents, settings: StoreHealthSettings | None = None) -> GuardedStore:
    """Open the store for ``url`` behind a guard; any reason it cannot read and write is a
    :class:`StartupError` (exit 2) of one line: unknown scheme, missing folder, read-only, locked, hung."""
    from tracecanary.daemon.store.urls import open_store
    from tracecanary.errors import StartupError

    settings = settings or StoreHealthSettings()
    store = open_store(url, open_timeout_s=settings.check_timeout)
    try:
        await store.open()
    except StoreFault as e:
        raise StartupError(f"store {url}: {e}") from e
    return GuardedStore(store, events, settings)
