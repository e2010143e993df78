"""The probe page's charts as server-side SVG data: uptime per bucket (bars) and p50/p95 duration (lines).

Nothing is fetched or drawn in the browser: the template writes ``<rect>`` and ``<polyline>`` elements
from these numbers, so the charts show with JavaScript off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracecanary.daemon.store.stats import CHART_BUCKETS_NS, RANGES_NS, RunStats
from tracecanary.daemon.web.dashboard.summary import iso_ns

CHART_W, CHART_H, PAD_TOP = 720, 140, 14


@dataclass(frozen=True)
class Window:
    """A chart's time axis: ``n`` buckets of ``bucket_ns`` from ``since_ns`` (the last one holds now)."""

    since_ns: int
    bucket_ns: int
    n: int


def window(range_key: str, now_ns: int) -> Window:
    """Buckets aligned to their size (whole hours for hour rollups), the current one last."""
    bucket = CHART_BUCKETS_NS[range_key]
    align = min(bucket, 3600 * 10**9)
    n = RANGES_NS[range_key] // bucket
    end = (now_ns // align + 1) * align
    return Window(end - n * bucket, bucket, n)


@dataclass
class Chart:
    w: int = CHART_W
    h: int = CHART_H
    bars: list[dict[str, object]] = field(default_factory=list)
    lines: dict[str, str] = field(default_factory=dict)
    """Polyline points per series (p50, p95)."""
    dots: list[dict[str, object]] = field(default_factory=list)
    top: str = ""
    first: str = ""
    last: str = ""


def _secs(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _tone(uptime: float | None) -> str:
    if uptime is None:
        return "t-unknown"
    return "t-ok" if uptime >= 0.999 else "t-warn" if uptime >= 0.9 else "t-bad"


def uptime_chart(buckets: dict[int, RunStats], win: Window) -> Chart:
    """A bar per bucket: height = share of judged runs that passed; a grey stub where nothing ran."""
    chart = Chart(first=iso_ns(win.since_ns), last=iso_ns(win.since_ns + win.n * win.bucket_ns), top="100%")
    step = CHART_W / win.n
    for i in range(win.n):
        s = buckets.get(i)
        up = s.uptime if s else None
        height = (CHART_H - PAD_TOP) * up if up is not None else 2.0
        when = iso_ns(win.since_ns + i * win.bucket_ns)
        title = f"{when}: {100 * up:.1f}% of {s.up + s.down} runs" if s and up is not None else f"{when}: no runs"
        chart.bars.append({"x": round(i * step + 1, 2), "w": round(max(step - 2, 1), 2),
                           "y": round(CHART_H - 1 - height, 2), "h": round(max(height, 1.0), 2),
                           "tone": _tone(up) if s else "t-none", "title": title})
    return chart


def latency_chart(buckets: dict[int, RunStats], win: Window) -> Chart:
    """p50 and p95 duration per bucket as two lines (points only where runs were judged)."""
    points = {i: (s.quantile_s(0.5), s.quantile_s(0.95)) for i, s in buckets.items() if s.runs}
    top = max((p95 or 0.0 for _, p95 in points.values()), default=0.0) or 1.0
    chart = Chart(first=iso_ns(win.since_ns), last=iso_ns(win.since_ns + win.n * win.bucket_ns), top=_secs(top))
    step = CHART_W / win.n
    for name, idx in (("p50", 0), ("p95", 1)):
        coords = []
        for i in sorted(points):
            v = points[i][idx]
            if v is None:
                continue
            x, y = round((i + 0.5) * step, 2), round(CHART_H - 1 - (CHART_H - PAD_TOP) * v / top, 2)
            coords.append(f"{x},{y}")
            chart.dots.append({"x": x, "y": y, "series": name,
                               "title": f"{iso_ns(win.since_ns + i * win.bucket_ns)} {name} {_secs(v)}"})
        chart.lines[name] = " ".join(coords)
    return chart
