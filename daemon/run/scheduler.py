"""When probes run: ``every`` with a stable per-probe phase, ``cron`` in a timezone, overlap policy.

One timer heap for every probe (not one task per probe): the loop sleeps until the earliest due
time, pops what is due, reschedules it and hands the run to ``fire`` in a task group the scheduler
owns. ``run_now`` (the API's "run now") goes through the same dispatch, so the overlap policy and
the skip metric apply to manual runs too. Due times are wall-clock instants (so ``every: 60s`` keeps
its phase across restarts and cron follows the timezone, DST included) converted to the monotonic
clock for waiting.

Phase of an ``every`` probe: ``hash(id) → fraction × interval × jitter`` past the epoch-aligned grid,
so 10k probes with ``jitter: 100%`` spread over the whole interval and a restart keeps each one's
slot. Cron jobs with a fixed hour run once on the repeated hour of a DST fall-back (as Vixie cron
does); jobs whose hour field is a wildcard run on both passes, because real time passed.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import anyio
from anyio.abc import TaskGroup, TaskStatus
from croniter import croniter

from tracecanary.daemon.run.ids import new_run_id
from tracecanary.errors import TracecanaryError
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.scheduler")

FireFn = Callable[[ProbeSpec, float, str], Awaitable[None]]
"""``fire(probe, scheduled_at, first_run_id)``: ``scheduled_at`` is the wall-clock (epoch seconds) due time
(for a manual run, when it was asked for); ``first_run_id`` is the run id of the run's first attempt,
minted at dispatch so "run now" can answer with it before the run starts."""

LATE_SKIP_S = 1.0
"""A tick missed by more than this (suspend, overload) is dropped instead of fired late."""


def phase_fraction(probe_id: str) -> float:
    """A stable number in [0, 1) derived from the probe id (same on every host and restart)."""
    return int.from_bytes(hashlib.sha256(probe_id.encode()).digest()[:8], "big") / 2**64


def every_next_wall(probe_id: str, interval_s: float, jitter: float, not_before: float) -> float:
    """The first grid instant ``k·interval + phase`` at or after ``not_before`` (epoch seconds)."""
    phase_s = phase_fraction(probe_id) * interval_s * jitter
    k = math.ceil((not_before - phase_s) / interval_s)
    return k * interval_s + phase_s


def _second_pass_of_fold(when: datetime) -> bool:
    tz = when.tzinfo
    naive = when.replace(tzinfo=None)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    return first.utcoffset() != second.utcoffset() and when.utcoffset() == second.utcoffset()


def cron_next_wall(expr: str, timezone: str, after: float) -> float:
    """The first cron instant strictly after ``after`` (epoch seconds), DST-correct in ``timezone``."""
    tz = ZoneInfo(timezone)
    fixed_hour = not expr.split()[1].startswith("*")
    it = croniter(expr, datetime.fromtimestamp(after, tz))
    for _ in range(4):
        nxt: datetime = it.get_next(datetime)
        if not (fixed_hour and _second_pass_of_fold(nxt)):
            return nxt.timestamp()
    raise AssertionError(f"cron {expr!r}: no instant outside a DST fold")  # pragma: no cover


class RunRefused(TracecanaryError):
    """A manual run was not started; the message says why."""


class OverlapSkipped(RunRefused):
    """The probe's overlap policy refused a manual run: a run of it is in flight (and, for ``queue``,
    another is already queued)."""


class SchedulerNotRunning(RunRefused):
    """A manual run was asked for before the scheduler started or after it stopped (shutdown)."""


@dataclass(frozen=True, slots=True)
class _Dispatched:
    """A run the scheduler started or queued."""

    scheduled_at: float
    first_run_id: str


@dataclass(eq=False)
class _State:
    spec: ProbeSpec
    generation: int = 0
    due_wall: float | None = None
    running: int = 0
    pending: _Dispatched | None = None
    skipped: int = 0


class Scheduler:
    """Fires probes on their schedules; ``run`` inside the daemon's task group, ``stop`` to stop firing.

    ``set_probes`` must be called from inside the event loop (it reads the anyio clock).
    """

    def __init__(
        self,
        fire: FireFn,
        *,
        clock: Callable[[], float] = anyio.current_time,
        wall: Callable[[], float] = time.time,
        owns: Callable[[str], bool] = lambda probe_id: True,
        on_lateness: Callable[[str, float], None] | None = None,
        on_skip: Callable[[str], None] | None = None,
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._wall = wall
        self._owns = owns
        self._on_lateness = on_lateness
        self._on_skip = on_skip
        self._states: dict[str, _State] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = 0
        self._tg: TaskGroup | None = None
        self._wake = anyio.Event()
        self._stopped = False

    # --- configuration ---------------------------------------------------------------------
    def set_probes(self, probes: Sequence[ProbeSpec]) -> None:
        """Load or reload: unchanged specs keep their next due time, changed ones are rescheduled."""
        seen: set[str] = set()
        offset = self._clock() - self._wall()
        for spec in probes:
            seen.add(spec.id)
            state = self._states.get(spec.id)
            if state is not None and (state.spec is spec or state.spec == spec):
                continue
            if state is None:
                state = self._states[spec.id] = _State(spec)
            else:
                state.spec = spec
                state.generation += 1
            self._schedule(state, self._first_due(spec), offset)
        for probe_id in set(self._states) - seen:
            del self._states[probe_id]
        if len(self._heap) > 2 * len(self._states) + 64:
            self._compact()
        self._wake.set()
        log.info("scheduler probes=%d scheduled=%d", len(self._states), sum(
            1 for s in self._states.values() if s.due_wall is not None))

    def _compact(self) -> None:
        """Drop heap entries of removed or rescheduled probes (reloads leave them behind)."""
        live = {(pid, st.generation) for pid, st in self._states.items() if st.due_wall is not None}
        self._heap = [e for e in self._heap if (e[2], e[3]) in live]
        heapq.heapify(self._heap)

    def _first_due(self, spec: ProbeSpec) -> float | None:
        if spec.pause:
            return None
        now = self._wall()
        not_before = max(now, spec.start_at.timestamp()) if spec.start_at is not None else now
        if spec.every is not None:
            return every_next_wall(spec.id, spec.every, spec.jitter, not_before)
        if spec.cron is not None:
            return cron_next_wall(spec.cron, spec.timezone, not_before - 1e-6)
        return None

    def _next_due(self, spec: ProbeSpec, previous: float) -> float | None:
        now = self._wall()
        if spec.every is not None:
            nxt = previous + spec.every
            if nxt < now - min(LATE_SKIP_S, spec.every / 2):  # missed ticks are dropped, not replayed
                nxt = every_next_wall(spec.id, spec.every, spec.jitter, now)
            return nxt
        if spec.cron is not None:
            nxt = cron_next_wall(spec.cron, spec.timezone, previous)
            return nxt if nxt >= now - LATE_SKIP_S else cron_next_wall(spec.cron, spec.timezone, now)
        return None

    def _schedule(self, state: _State, due_wall: float | None, mono_minus_wall: float | None = None) -> None:
        state.due_wall = due_wall
        if due_wall is None:
            return
        offset = self._clock() - self._wall() if mono_minus_wall is None else mono_minus_wall
        due_mono = due_wall + offset
        self._seq += 1
        heapq.heappush(self._heap, (due_mono, self._seq, state.spec.id, state.generation))

    # --- queries ---------------------------------------------------------------------------
    def next_run(self, probe_id: str) -> datetime | None:
        """When the probe fires next (UTC), or None when paused, unscheduled, unknown or not ours."""
        state = self._states.get(probe_id)
        if state is None or state.due_wall is None or not self._owns(probe_id):
            return None
        return datetime.fromtimestamp(state.due_wall, UTC)

    def skipped(self, probe_id: str) -> int:
        """Ticks dropped by the overlap policy (skip, or queue with one already pending)."""
        state = self._states.get(probe_id)
        return state.skipped if state else 0

    def running(self, probe_id: str) -> int:
        """Runs of the probe currently in flight."""
        state = self._states.get(probe_id)
        return state.running if state else 0

    @property
    def started(self) -> bool:
        """``run`` has started (it fires) and has not returned yet (it may be draining after ``stop``)."""
        return self._tg is not None

    # --- running ---------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Fire due probes until ``stop``; then wait for in-flight runs and return."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            while not self._stopped:
                self._fire_due(tg)
                self._wake = anyio.Event()
                delay = self._heap[0][0] - self._clock() if self._heap else math.inf
                if delay > 0 and not self._stopped:
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
        self._tg = None

    def stop(self) -> None:
        """Fire nothing more (queued runs are dropped); ``run`` returns when in-flight runs end."""
        self._stopped = True
        for state in self._states.values():
            state.pending = None
        self._wake.set()

    def run_now(self, probe_id: str) -> str:
        """Fire the probe at once under its overlap policy; returns the run's first run id.

        With ``overlap: queue`` and a run in flight the run is queued: the id is the one it will have.
        Raises KeyError for an unknown probe, :class:`OverlapSkipped` when the policy refuses (counted
        like a skipped tick) and :class:`SchedulerNotRunning` before ``run`` or after ``stop``.
        """
        state = self._states[probe_id]
        if self._tg is None or self._stopped:
            raise SchedulerNotRunning("the scheduler is not running (starting or shutting down)")
        first_run_id = self._dispatch(self._tg, state, self._wall())
        if first_run_id is None:
            queued = " and a run is already queued" if state.spec.overlap == "queue" else ""
            raise OverlapSkipped(f"probe {probe_id!r} has a run in flight{queued}; "
                                 f"its overlap policy is {state.spec.overlap}")
        return first_run_id

    def _fire_due(self, tg: TaskGroup) -> None:
        now = self._clock()
        while self._heap and self._heap[0][0] <= now and not self._stopped:
            due_mono, _, probe_id, generation = heapq.heappop(self._heap)
            state = self._states.get(probe_id)
            if state is None or state.generation != generation or state.due_wall is None:
                continue
            scheduled = state.due_wall
            if state.spec.cron is not None and self._wall() < scheduled - 0.05:
                self._schedule(state, scheduled)  # the wall clock lags the monotonic one: wait more
                continue
            self._schedule(state, self._next_due(state.spec, scheduled))
            if not self._owns(probe_id):
                continue
            if self._on_lateness is not None:
                self._on_lateness(probe_id, self._clock() - due_mono)
            self._dispatch(tg, state, scheduled)

    def _dispatch(self, tg: TaskGroup, state: _State, scheduled: float) -> str | None:
        """Start (or queue) a run; its first run id, or None when the overlap policy skips it."""
        spec = state.spec
        if state.running and spec.overlap != "allow":
            if spec.overlap == "queue" and state.pending is None:
                state.pending = _Dispatched(scheduled, new_run_id())
                return state.pending.first_run_id
            state.skipped += 1
            log.info("probe overlap skipped probe=%s policy=%s skipped=%d", spec.id, spec.overlap, state.skipped)
            if self._on_skip is not None:
                self._on_skip(spec.id)
            return None
        first_run_id = new_run_id()
        state.running += 1
        tg.start_soon(self._run_one, tg, state, spec, _Dispatched(scheduled, first_run_id))
        return first_run_id

    async def _run_one(self, tg: TaskGroup, state: _State, spec: ProbeSpec, run: _Dispatched) -> None:
        try:
            await self._fire(spec, run.scheduled_at, run.first_run_id)
        except Exception:
            log.exception("probe fire failed probe=%s run_id=%s", spec.id, run.first_run_id)
        finally:
            state.running -= 1
            if state.pending is not None and not self._stopped and self._states.get(spec.id) is state:
                queued, state.pending = state.pending, None
                state.running += 1
                tg.start_soon(self._run_one, tg, state, state.spec, queued)
