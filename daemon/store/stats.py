"""Aggregates over stored runs for the dashboard: uptime and duration percentiles per probe and range.

What counts: *judged* runs — final attempts, finished, with a verdict. ``up`` = pass or degraded,
``down`` = fail or error, ``unknown`` apart (no evidence either way: it is in neither side of the
uptime ratio). Durations go into a fixed histogram (:data:`DURATION_BINS_S`), so percentiles merge
across buckets and backends; a percentile is interpolated inside its bin (error below the bin's width).

Backends keep rollups per complete hour and per complete UTC day, filled lazily from the runs and
invalidated when a run of that bucket is written; :func:`plan` splits a range into day buckets, hour
buckets and raw edges, so 30 days over 500 probes read ~15k rollup rows, not a million runs. The SQL
here is portable (SQLite, PostgreSQL): ``CASE`` and integer arithmetic only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunStatus

HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
DURATION_BINS_S: tuple[float, ...] = tuple(float(f"{0.001 * 1.25**k:.3g}") for k in range(60))
"""Upper bounds of the duration histogram's bins: 1 ms to ~11 min, each 25% wider than the last (so an
interpolated percentile is off by well under 25%); one more bin holds everything longer."""
N_BINS = len(DURATION_BINS_S) + 1
RANGES_NS: dict[str, int] = {"1h": HOUR_NS, "24h": DAY_NS, "7d": 7 * DAY_NS, "30d": 30 * DAY_NS}
"""The ranges the dashboard offers."""
CHART_BUCKETS_NS: dict[str, int] = {"1h": 5 * 60 * 10**9, "24h": HOUR_NS, "7d": 6 * HOUR_NS, "30d": DAY_NS}
"""Chart bucket per range (12, 24, 28 and 30 bars)."""


@dataclass
class RunStats:
    """Judged runs of one probe (and one bucket): verdict classes and the duration histogram."""

    up: int = 0
    down: int = 0
    unknown: int = 0
    bins: list[int] = field(default_factory=lambda: [0] * N_BINS)

    @property
    def runs(self) -> int:
        return self.up + self.down + self.unknown

    @property
    def uptime(self) -> float | None:
        """up / (up + down); None without such runs."""
        judged = self.up + self.down
        return self.up / judged if judged else None

    def add(self, bin_index: int, up: int, down: int, unknown: int) -> None:
        self.up, self.down, self.unknown = self.up + up, self.down + down, self.unknown + unknown
        self.bins[bin_index] += up + down + unknown

    def merge(self, other: RunStats) -> None:
        self.up, self.down, self.unknown = self.up + other.up, self.down + other.down, self.unknown + other.unknown
        self.bins = [a + b for a, b in zip(self.bins, other.bins, strict=True)]

    def quantile_s(self, q: float) -> float | None:
        """The q-quantile of the durations (nearest rank, interpolated inside its bin); None without runs."""
        total = sum(self.bins)
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for i, n in enumerate(self.bins):
            if n and seen + n >= rank:
                lo = DURATION_BINS_S[i - 1] if i else 0.0
                if i >= len(DURATION_BINS_S):
                    return lo
                return lo + (DURATION_BINS_S[i] - lo) * (rank - seen) / n
            seen += n
        return None


class RunHead(NamedTuple):
    """A run as the status strip shows it (no findings, spans or payloads); a tuple: cheap by the thousand."""

    run_id: str
    probe_id: str
    status: RunStatus
    verdict: Verdict | None
    final: bool
    started_ns: int
    finished_ns: int | None


Grain = Literal["hour", "day"]
GRAIN_NS: dict[Grain, int] = {"hour": HOUR_NS, "day": DAY_NS}


@dataclass(frozen=True)
class Segment:
    """A piece of a range: read from the rollup of ``grain`` (whole buckets) or from the runs (None)."""

    grain: Grain | None
    lo_ns: int
    hi_ns: int


def _ceil(ns: int, step: int) -> int:
    return -(-ns // step) * step


def plan(since_ns: int, until_ns: int, *, days: bool = True) -> list[Segment]:
    """Split [since, until) into whole UTC days, whole hours and raw edges (``days=False``: hours only)."""
    if until_ns <= since_ns:
        return []
    h_lo, h_hi = _ceil(since_ns, HOUR_NS), until_ns // HOUR_NS * HOUR_NS
    if h_lo >= h_hi:
        return [Segment(None, since_ns, until_ns)]
    out = [Segment(None, since_ns, h_lo)] if since_ns < h_lo else []
    d_lo, d_hi = _ceil(h_lo, DAY_NS), h_hi // DAY_NS * DAY_NS
    if days and d_lo < d_hi:
        out += [Segment("hour", h_lo, d_lo)] if h_lo < d_lo else []
        out.append(Segment("day", d_lo, d_hi))
        out += [Segment("hour", d_hi, h_hi)] if d_hi < h_hi else []
    else:
        out.append(Segment("hour", h_lo, h_hi))
    if h_hi < until_ns:
        out.append(Segment(None, h_hi, until_ns))
    return out


def missing_ranges(grain_ns: int, lo_ns: int, hi_ns: int, filled: set[int]) -> list[tuple[int, int]]:
    """Contiguous runs of buckets in [lo, hi) not in ``filled``, as [start, end) pairs."""
    out: list[tuple[int, int]] = []
    for b in range(lo_ns, hi_ns, grain_ns):
        if b in filled:
            continue
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + grain_ns)
        else:
            out.append((b, b + grain_ns))
    return out


def segments(since_ns: int, until_ns: int, bucket_ns: int | None) -> list[Segment]:
    """Where each piece of the range is read from: overview sums use day rollups; charts with whole-hour
    buckets use hour rollups (``since`` must then be hour-aligned); finer buckets read the runs."""
    if bucket_ns is None:
        return plan(since_ns, until_ns)
    if bucket_ns <= 0:
        raise ValueError(f"bucket_ns must be positive, not {bucket_ns}")
    if bucket_ns % HOUR_NS:
        return [Segment(None, since_ns, until_ns)]
    if since_ns % HOUR_NS:
        raise ValueError("with whole-hour buckets, since_ns must be a multiple of an hour")
    return plan(since_ns, until_ns, days=False)


FILL_CHUNK_NS = 2 * DAY_NS
"""Rollups are filled at most two days of runs at a time (~70k runs at 500 probes every 40 min): a cold
30-day fill does not hold the store (SQLite's one connection, a PostgreSQL call's deadline) for seconds."""


def chunks(gaps: list[tuple[int, int, int]], span_ns: int = FILL_CHUNK_NS) -> list[list[tuple[int, int, int]]]:
    """The missing (grain, lo, hi) runs cut into fills of at most ``span_ns`` (a whole bucket at least)."""
    pieces: list[tuple[int, int, int]] = []
    for g, lo, hi in gaps:
        step = max(g, span_ns // g * g)
        pieces += [(g, a, min(a + step, hi)) for a in range(lo, hi, step)]
    return [[p] for p in pieces]


# --- portable SQL -------------------------------------------------------------------------------------
def judged_where(true: str = "1") -> str:
    """Rows that count (``true``: the backend's literal for the ``final`` column)."""
    return f"final = {true} AND status = 'finished' AND verdict IS NOT NULL"


BIN_CASE = "CASE " + " ".join(
    f"WHEN finished_ns - started_ns < {int(b * 1e9)} THEN {i}" for i, b in enumerate(DURATION_BINS_S)
) + f" ELSE {len(DURATION_BINS_S)} END"
"""The duration bin of a run row."""
CLASS_SUMS = (
    "SUM(CASE WHEN verdict IN ('pass', 'degraded') THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN verdict IN ('fail', 'error') THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN verdict = 'unknown' THEN 1 ELSE 0 END)"
)



def fill_sql(true: str = "1", param: str = "?", runs: str = "runs") -> str:
    """Insert one grain's rollup rows for [lo, hi): parameters grain, grain, grain, lo, hi. ``runs``: the
    table as the backend names it (SQLite: with ``INDEXED BY runs_by_start``, or its planner takes the
    status index and reads every finished run)."""
    p = param
    return (
        f"INSERT INTO run_rollup (grain_ns, bucket_ns, probe_id, bin, up, down, unknown) "
        f"SELECT CAST({p} AS BIGINT), (started_ns / {p}) * {p} AS b, probe_id, bin, {CLASS_SUMS.replace('verdict', 'v')} "
        f"FROM (SELECT started_ns, probe_id, verdict AS v, {BIN_CASE} AS bin FROM {runs} "
        f"WHERE {judged_where(true)} AND started_ns >= {p} AND started_ns < {p}) AS r "
        f"GROUP BY b, probe_id, bin"
    )


def rollup_select(by_probe: bool, bucket: bool, param: str = "?") -> str:
    """Sums of a grain's rollup over [lo, hi): parameters [since, size,] grain, lo, hi[, probe]."""
    p = param
    key = f"(bucket_ns - {p}) / {p}" if bucket else "0"
    where = f"grain_ns = {p} AND bucket_ns >= {p} AND bucket_ns < {p}"
    if by_probe:
        where += f" AND probe_id = {p}"
    return (f"SELECT probe_id, {key} AS k, bin, SUM(up), SUM(down), SUM(unknown) FROM run_rollup "
            f"WHERE {where} GROUP BY probe_id, k, bin")


def raw_select(by_probe: bool, bucket: bool, true: str = "1", param: str = "?", runs: str = "runs") -> str:
    """The same sums straight from the runs over [lo, hi): parameters [since, size,] lo, hi[, probe]."""
    p = param
    key = f"(started_ns - {p}) / {p}" if bucket else "0"
    where = f"{judged_where(true)} AND started_ns >= {p} AND started_ns < {p}"
    if by_probe:
        where += f" AND probe_id = {p}"
    return (f"SELECT probe_id, k, bin, {CLASS_SUMS.replace('verdict', 'v')} FROM (SELECT probe_id, "
            f"{key} AS k, verdict AS v, {BIN_CASE} AS bin FROM {runs} WHERE {where}) AS r GROUP BY probe_id, k, bin")


class RollupCache:
    """Sums of rollup segments already read, kept until a rollup changes (a late write or retention
    invalidated a filled bucket, or a fill): whole buckets do not change otherwise, so a warm overview
    reads only its raw edges. Bounded; the oldest entry goes first."""

    def __init__(self, max_entries: int = 256) -> None:
        self._entries: dict[tuple[object, ...], dict[tuple[str, int], RunStats]] = {}
        self._max = max_entries

    def get(self, key: tuple[object, ...]) -> dict[tuple[str, int], RunStats] | None:
        return self._entries.get(key)

    def put(self, key: tuple[object, ...], value: dict[tuple[str, int], RunStats]) -> None:
        if len(self._entries) >= self._max:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = value

    def clear(self) -> None:
        self._entries.clear()


def merge_into(out: dict[tuple[str, int], RunStats], part: dict[tuple[str, int], RunStats]) -> None:
    """Add one segment's sums into the result (``part`` is left as it is: it may be cached)."""
    for key, stats in part.items():
        out.setdefault(key, RunStats()).merge(stats)


INVALIDATE = ("DELETE FROM run_rollup_filled WHERE (grain_ns = ? AND bucket_ns = ?) OR "
              "(grain_ns = ? AND bucket_ns = ?)")
"""A run written: its hour and day are re-read from the runs at the next aggregate."""
MISSING = "SELECT bucket_ns FROM run_rollup_filled WHERE grain_ns = ? AND bucket_ns >= ? AND bucket_ns < ?"
CLEAR_RANGE = "DELETE FROM run_rollup WHERE grain_ns = ? AND bucket_ns >= ? AND bucket_ns < ?"
HEAD_COLUMNS = "run_id, probe_id, status, verdict, final, started_ns, finished_ns"
_STATUS = {s.value: s for s in RunStatus}
_VERDICT: dict[str | None, Verdict | None] = {None: None, **{v.value: v for v in Verdict}}


def invalidate_args(started_ns: int) -> tuple[int, int, int, int]:
    """:data:`INVALIDATE`'s parameters for a run of this start."""
    return (HOUR_NS, started_ns // HOUR_NS * HOUR_NS, DAY_NS, started_ns // DAY_NS * DAY_NS)


def head(r: Any) -> RunHead:
    """A row of :data:`HEAD_COLUMNS` as a RunHead."""
    return RunHead(r[0], r[1], _STATUS[r[2]], _VERDICT[r[3]], bool(r[4]), r[5], r[6])


def collect(rows: list[tuple[str, int, int, int, int, int]], out: dict[tuple[str, int], RunStats]) -> None:
    """Add summed rows (probe, bucket index, bin, up, down, unknown) into ``out``."""
    for probe_id, k, b, up, down, unknown in rows:
        out.setdefault((probe_id, int(k)), RunStats()).add(int(b), int(up or 0), int(down or 0), int(unknown or 0))
