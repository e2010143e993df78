"""Metrics-expectation figures: parsing a service's exposition with prometheus_client's parser (the cost of
one scrape: 2k, 10k and 50k samples) whole, and as a check reads it (only the lines of the metrics it
names, ``only_metrics``), and judging a delta and a histogram p95 against the samples.

    python benchmarks/metrics_read.py [--quick]

The exposition is prometheus_client's own output (``generate_latest``) of counters and histograms with
route/method/code labels, as a web service exposes them.
"""

from __future__ import annotations

import argparse
import statistics
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tracecanary.assertions.metrics import MetricCheck, judge_metric
from tracecanary.daemon.watchers.metrics import parse_exposition

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def exposition(n_routes: int) -> str:
    """Counters and histograms for ``n_routes`` × 2 methods × 2 codes: ~ 17 samples per label set."""
    registry = CollectorRegistry()
    requests = Counter("http_requests", "Requests.", ["route", "method", "code"], registry=registry)
    duration = Histogram("http_request_duration_seconds", "Time.", ["route", "method", "code"],
                         buckets=BUCKETS_S, registry=registry)
    for r in range(n_routes):
        for method in ("GET", "POST"):
            for code in ("200", "500"):
                requests.labels(f"/r{r}", method, code).inc(r)
                duration.labels(f"/r{r}", method, code).observe(0.02 * (r % 7))
    return generate_latest(registry).decode()


def best_ms(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    return min(times) if repeat < 5 else statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (CI)")
    args = parser.parse_args()
    sizes = (30,) if args.quick else (30, 150, 750)
    repeat = 2 if args.quick else 7
    delta = MetricCheck.model_validate({"scrape": "http://x/metrics", "delta": {
        "metric": 'http_requests_total{route="/r7", code=~"2.."}', "gte": 1}})
    p95 = MetricCheck.model_validate({"scrape": "http://x/metrics", "value": {
        "metric": 'http_request_duration_seconds{route="/r7"}', "quantile": 0.95, "lte": 1}})
    for routes in sizes:
        text = exposition(routes)
        samples = parse_exposition(text)
        parse_ms = best_ms(lambda t=text: parse_exposition(t), repeat)
        named_ms = best_ms(lambda t=text, n=delta.metric_names(): parse_exposition(t, names=n), repeat)
        delta_ms = best_ms(lambda s=samples: judge_metric(delta, s, s, window_closed=True), repeat)
        p95_ms = best_ms(lambda s=samples: judge_metric(p95, s, s, window_closed=True), repeat)
        print(f"{len(samples):>6} samples ({len(text) / 1024:.0f} KiB): parse {parse_ms:7.1f} ms "
              f"({len(samples) / parse_ms:.0f} samples/ms), one metric's lines {named_ms:6.1f} ms, "
              f"judge delta {delta_ms:6.2f} ms, "
              f"judge p95 {p95_ms:6.2f} ms")


if __name__ == "__main__":
    main()
