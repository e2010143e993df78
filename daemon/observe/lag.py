"""Event-loop lag: how long the loop was blocked, by what, measured all the time.

A ticker task sleeps ``interval_s`` and measures how late it woke: the time one synchronous step (or a
garbage collection) held the loop. ``gc.callbacks`` attribute pauses to GC generations, and a sampler
thread names the step: while the loop is overdue it records the innermost frames of the loop thread
(``sys._current_frames``), so a warning says *where* the loop was stuck, not just for how long. A
sample that finds the loop thread waiting in its selector means the process itself was not scheduled
(CPU contention), not that a step was slow.

Every lag goes to ``observe`` (the ``tracecanary_event_loop_lag_seconds`` histogram); a stall over
``threshold_s`` is logged as a warning (at most one per ``warn_interval_s``, with a count of those
held back).
"""

from __future__ import annotations

import gc
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import anyio
import anyio.abc

log = logging.getLogger("tracecanary.observe.lag")

LAG_INTERVAL_S = 0.025
"""Default ticker period. A stall is seen when it spans a tick (one longer than the period always does) and
measured from the tick's due time; 40 wake-ups a second, with the sampler's, cost ~1 % of a core on an
idle 2-core VM (each wake-up of an idle process costs the kernel more than the Python)."""
LAG_THRESHOLD_S = 0.05
"""Default warning threshold: 2.5 times the 20 ms step budget, so a busy host's scheduling jitter alone
does not warn (the histogram shows every lag)."""
_LINE = re.compile(r":\d+")
IDLE = "idle in the event loop's selector (the process was not scheduled: CPU contention?)"


@dataclass(frozen=True, slots=True)
class GcPause:
    """One garbage collection: its generation, when it started (``time.perf_counter``) and how long it took."""

    generation: int
    started_s: float
    duration_s: float


class GcPauses:
    """Records every garbage collection of the process through ``gc.callbacks`` while installed.

    Callbacks run in whichever thread triggered the collection; every thread is stopped meanwhile, the
    event loop's included. Use as ``with GcPauses() as pauses: … pauses.take()``.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started_s = 0.0
        self._pauses: list[GcPause] = []
        self.total_s = 0.0
        """Time spent collecting while installed (differences of it give the GC time within a span of time)."""

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_s = self._clock()
        else:
            took_s = self._clock() - self._started_s
            self.total_s += took_s
            self._pauses.append(GcPause(int(info["generation"]), self._started_s, took_s))

    def take(self) -> list[GcPause]:
        """The pauses recorded since the last call."""
        pauses, self._pauses = self._pauses, []
        return pauses


def describe_frame(frame: FrameType | None, depth: int = 4) -> str:
    """Where a thread is: its innermost frame and the next frames of tracecanary's own code, innermost first.

    ``tracecanary.assertions.tree.max_bipartite:186 < tracecanary.assertions.anchors.AnchorSearch._solve_top:151``
    """
    parts: list[str] = []
    first = True
    while frame is not None and len(parts) < depth:
        module = frame.f_globals.get("__name__", "?")
        if first or str(module).startswith("tracecanary."):
            parts.append(f"{module}.{frame.f_code.co_qualname}:{frame.f_lineno}")
        first = False
        frame = frame.f_back
    return " < ".join(parts)


def _is_idle(frame: FrameType | None) -> bool:
    """The loop thread waits in its selector (``selectors.*.select`` under ``run_once``)."""
    return frame is not None and frame.f_globals.get("__name__") == "selectors" and frame.f_code.co_name == "select"


class StallSampler:
    """A daemon thread that names what the event-loop thread runs while it is overdue.

    The loop calls :meth:`beat` to start a new period (the ticker: each time it runs; a step timer: as each
    step starts). Once a period has lasted ``overdue_s``, the thread samples where the loop thread is every
    ``period_s`` until the next beat; :meth:`sample_for` names the place most samples of a period found.
    While the loop keeps beating, the thread sleeps until the current period would be overdue (each wake-up
    of an idle process costs the kernel more than the check).
    """

    MAX_SAMPLES = 64

    def __init__(self, loop_thread_id: int, overdue_s: float, period_s: float,
                 clock: Callable[[], float] = time.perf_counter, depth: int = 4) -> None:
        self.loop_thread_id = loop_thread_id
        self.depth = depth
        """Frames a sample names (see :func:`describe_frame`)."""
        self.overdue_s = overdue_s
        self.period_s = period_s
        self._clock = clock
        self._beat = 0
        self._beat_s = clock()
        self._samples: tuple[int, list[str]] = (0, [])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracecanary-lag-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Let the thread end (at its next wake-up; not waited for: this runs on the event loop)."""
        self._stop.set()

    def beat(self) -> int:
        """Start a new period; returns its number."""
        self._beat += 1
        self._beat_s = self._clock()
        return self._beat

    def sample_for(self, beat: int) -> str | None:
        """Where the loop thread was during period ``beat`` (the place most samples found), if sampled."""
        period, samples = self._samples
        if period != beat or not samples:
            return None
        by_place: dict[str, list[str]] = {}
        for sample in samples:
            by_place.setdefault(_LINE.sub("", sample), []).append(sample)
        top = max(by_place.values(), key=len)
        share = f" ({len(top)} of {len(samples)} samples)" if len(samples) > 1 else ""
        return top[0] + share

    def _run(self) -> None:
        wait_s = self.overdue_s
        while not self._stop.wait(wait_s):
            beat, beat_s = self._beat, self._beat_s
            since_s = self._clock() - beat_s
            if since_s < self.overdue_s:  # sleep until this period would be overdue, not every period_s
                wait_s = max(self.period_s, self.overdue_s - since_s)
                continue
            wait_s = self.period_s
            frame = sys._current_frames().get(self.loop_thread_id)
            sample = IDLE if _is_idle(frame) else describe_frame(frame, self.depth)
            del frame  # a frame keeps its locals alive
            period, samples = self._samples
            if period != beat:
                self._samples = (beat, [sample])
            elif len(samples) < self.MAX_SAMPLES:
                samples.append(sample)


@dataclass(frozen=True, slots=True)
class Stall:
    """A tick that came late: how late, the GC time within it, and where the loop was (when sampled)."""

    lag_s: float
    gc_s: float
    gc_generation: int | None
    """The oldest generation collected during the stall (None: no collection)."""
    where: str | None

    def cause(self) -> str:
        """What held the loop: a GC generation when collecting took most of the stall, else where it was."""
        if self.gc_generation is not None and self.gc_s >= self.lag_s / 2:
            return f"gc gen{self.gc_generation}"
        return self.where or "unknown (not sampled)"


class LagMonitor:
    """Measures the event loop's lag continuously; run it as a task of the loop it watches.

    ``max_lag_s`` and ``stalls`` (ticks over the threshold) are kept for benchmarks and tests.
    """

    def __init__(self, *, interval_s: float = LAG_INTERVAL_S, threshold_s: float = LAG_THRESHOLD_S,
                 observe: Callable[[float], None] | None = None, warn_interval_s: float = 10.0,
                 on_stall: Callable[[Stall], None] | None = None, sample: bool = True) -> None:
        self.interval_s = interval_s
        self.threshold_s = threshold_s
        self.observe = observe
        """Called with every tick's lag in seconds (the metric)."""
        self.warn_interval_s = warn_interval_s
        self.on_stall = on_stall
        """Called with every stall over the threshold (besides the warning)."""
        self.sample = sample
        self.max_lag_s = 0.0
        self.stalls = 0
        self._warned_s = -float("inf")
        self._held_back = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled."""
        sampler = None
        if self.sample:
            sampler = StallSampler(threading.get_ident(), self.interval_s + self.threshold_s / 2,
                                   max(0.001, self.threshold_s / 4))
            sampler.start()
        try:
            with GcPauses() as pauses:
                task_status.started()
                while True:
                    t0 = time.perf_counter()
                    await anyio.sleep(self.interval_s)
                    lag_s = max(0.0, time.perf_counter() - t0 - self.interval_s)
                    where = None
                    if sampler is not None:
                        where = sampler.sample_for(sampler.beat() - 1)
                    self._tick(lag_s, pauses.take(), where)
        finally:
            if sampler is not None:
                sampler.stop()

    def _tick(self, lag_s: float, gcs: list[GcPause], where: str | None) -> None:
        if self.observe is not None:
            self.observe(lag_s)
        self.max_lag_s = max(self.max_lag_s, lag_s)
        if lag_s <= self.threshold_s:
            return
        stall = Stall(lag_s, sum(p.duration_s for p in gcs), max((p.generation for p in gcs), default=None), where)
        self.stalls += 1
        if self.on_stall is not None:
            self.on_stall(stall)
        now = time.monotonic()
        if now - self._warned_s < self.warn_interval_s:
            self._held_back += 1
            return
        more = f" held_back={self._held_back}" if self._held_back else ""
        log.warning("event loop stalled lag_ms=%.0f threshold_ms=%.0f gc_ms=%.0f cause=%r%s",
                    lag_s * 1e3, self.threshold_s * 1e3, stall.gc_s * 1e3, stall.cause(), more)
        self._warned_s, self._held_back = now, 0


GC_GEN0_THRESHOLD = 10_000
"""Young-generation collection threshold once the engine runs (CPython's default: 700)."""


def tune_gc() -> None:
    """Make the cyclic GC cheap for a long-running engine (idempotent, process-wide).

    Startup objects (modules, configs, compiled expectations) live forever: ``gc.freeze()`` moves
    them out of every later collection, whose cost (and pause on the event loop) scales with what it
    scans. A run allocates thousands of short-lived containers that refcounting frees; collecting the
    young generation every 700 allocations instead of every 10 000 costs ~10 % of the CPU and tail
    latency (measured with benchmarks/e2e.py).
    """
    gc.freeze()
    threshold = gc.get_threshold()
    if threshold[0] and threshold[0] < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, *threshold[1:])
