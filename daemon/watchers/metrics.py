"""``expect.metrics``: read the system's Prometheus metrics before the trigger and after it, until judged.

Two sources: ``scrape:`` GETs a text exposition endpoint and parses it with prometheus_client's own
parsers (the Prometheus text format, or OpenMetrics when the endpoint answers with it); ``query:``
sends PromQL to ``integrations.prometheus.url`` + ``/api/v1/query`` (an instant query) and takes its
vector or scalar. Judgement is ``assertions.metrics.judge_metric``; this module only reads.

A read that fails after the trigger (a refused connection, a 5xx, a timeout) is retried after the
watch's backoff until the window closes; a failure that lasts until then is an ``error`` finding
quoting the last error. A baseline that cannot be read before the trigger makes the check an error
at once (a delta without its first value means nothing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import anyio
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from tracecanary.assertions.metrics import MetricCheck, judge_metric, source_failed
from tracecanary.assertions.series import Sample
from tracecanary.assertions.verdict import Finding
from tracecanary.daemon.watchers.base import Attempts, WatchContext
from tracecanary.errors import TracecanaryError
from tracecanary.probes.base import ProbeContext

MAX_BODY_BYTES = 32 * 1024 * 1024
"""An exposition or query answer larger than this is refused (an error finding), never read whole."""
READ_TIMEOUT_S = 5.0
"""One read's deadline (shorter when the window closes sooner)."""
PARSE_IN_THREAD_BYTES = 256 * 1024
"""Expositions larger than this are parsed in a worker thread (the event loop keeps serving)."""
ACCEPT = "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"


class MetricsReadError(TracecanaryError):
    """A metrics source could not be read or understood; the message says why in one line."""


@dataclass(frozen=True)
class Baseline:
    """The read before the trigger: its samples, or why it failed."""

    samples: list[Sample] | None
    error: str | None = None


_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info", "_gcount", "_gsum")


def only_metrics(text: str, names: Sequence[str]) -> str:
    """The exposition's lines that can belong to ``names`` (samples, HELP/TYPE/UNIT), and ``# EOF``.

    Not a parser: a prefix test on each line, so the parser reads the few families a check names
    instead of a service's whole exposition (50k samples take seconds). Base names (``_total``,
    ``_bucket`` … removed) are kept whole, so a family's TYPE line and every sample of it stay."""
    bases = tuple({next((n.removesuffix(s) for s in _SUFFIXES if n.endswith(s)), n) for n in names})
    kept = []
    for line in text.splitlines():
        head = line[7:] if line.startswith(("# HELP ", "# TYPE ", "# UNIT ")) else line
        if head.startswith(bases) or line.startswith("# EOF"):
            kept.append(line)
    return "\n".join(kept) + "\n"


def parse_exposition(text: str, content_type: str = "", names: Sequence[str] | None = None) -> list[Sample]:
    """Samples of a text exposition (Prometheus text format, or OpenMetrics by content type); with
    ``names``, only the lines of those metrics are parsed (:func:`only_metrics`)."""
    if names is not None:
        text = only_metrics(text, names)
    families = (openmetrics_families if "openmetrics" in content_type.lower() else text_string_to_metric_families)
    try:
        return [Sample(s.name, dict(s.labels), float(s.value)) for fam in families(text) for s in fam.samples]
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise MetricsReadError(f"not a Prometheus exposition: {e}") from e


async def _get(ctx: ProbeContext, url: str, timeout_s: float, *, params: dict[str, str] | None = None,
               headers: dict[str, str] | None = None) -> tuple[str, str]:
    try:
        with anyio.fail_after(max(0.05, timeout_s)):
            async with ctx.session.get(url, params=params, headers=headers) as resp:
                body = await resp.content.read(MAX_BODY_BYTES + 1)
                if len(body) > MAX_BODY_BYTES:
                    raise MetricsReadError(f"GET {url}: answer larger than {MAX_BODY_BYTES} bytes")
                text = body.decode("utf-8", errors="replace")
                if resp.status >= 300 and resp.status != 400:  # Prometheus explains a bad query in a 400 body
                    raise MetricsReadError(f"GET {url}: HTTP {resp.status} {text[:200]!r}")
                return text, resp.headers.get("Content-Type", "")
    except TimeoutError as e:
        raise MetricsReadError(f"GET {url}: no answer within {timeout_s:.3g}s") from e
    except aiohttp.ClientError as e:
        raise MetricsReadError(f"GET {url}: {type(e).__name__}: {e}") from e


async def scrape(ctx: ProbeContext, url: str, timeout_s: float, names: Sequence[str] | None = None) -> list[Sample]:
    """GET an exposition endpoint and parse it — only ``names``' lines when given (in a thread when large)."""
    text, content_type = await _get(ctx, url, timeout_s, headers={"Accept": ACCEPT})
    if content_type.lower().startswith(("text/html", "application/json")):  # a login page, an API
        raise MetricsReadError(f"GET {url}: answered {content_type.split(';')[0]}, not a Prometheus exposition")
    if len(text) > PARSE_IN_THREAD_BYTES:
        return await anyio.to_thread.run_sync(parse_exposition, text, content_type, names)
    return parse_exposition(text, content_type, names)


def query_samples(doc: object) -> list[Sample]:
    """Samples of an ``/api/v1/query`` answer (a vector or a scalar); MetricsReadError otherwise."""
    if not isinstance(doc, dict):
        raise MetricsReadError(f"not a Prometheus API answer: {str(doc)[:200]}")
    if doc.get("status") != "success":
        raise MetricsReadError(f"Prometheus refused the query: {doc.get('errorType')}: {doc.get('error')}")
    data = doc.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return [Sample("", {}, float(result[1]))]
    if kind != "vector" or not isinstance(result, list):
        raise MetricsReadError(f"the query returned a {kind}, expected an instant vector or a scalar")
    out = []
    for item in result:
        labels = dict(item.get("metric") or {})
        out.append(Sample(labels.pop("__name__", ""), labels, float(item["value"][1])))
    return out


async def query(ctx: ProbeContext, promql: str, timeout_s: float) -> list[Sample]:
    """One instant query through ``integrations.prometheus``."""
    prom = ctx.integrations.prometheus
    if not prom.url:
        raise MetricsReadError("query: needs integrations.prometheus.url")
    headers = {"Authorization": f"Bearer {prom.token}"} if prom.token else {}
    url = prom.url.rstrip("/") + "/api/v1/query"
    text, _ = await _get(ctx, url, timeout_s, params={"query": promql}, headers=headers)
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise MetricsReadError(f"GET {url}: not JSON: {text[:200]!r}") from e
    return query_samples(doc)


async def read(check: MetricCheck, ctx: ProbeContext, timeout_s: float) -> list[Sample]:
    """The check's source, read once."""
    if check.scrape is not None:
        return await scrape(ctx, check.scrape, timeout_s, check.metric_names())
    assert check.query is not None
    return await query(ctx, check.query, timeout_s)


async def read_baseline(checks: Sequence[MetricCheck], ctx: ProbeContext) -> list[Baseline | None]:
    """Before the trigger: one read per check that needs one (None for the others), concurrently."""
    out: list[Baseline | None] = [None] * len(checks)

    async def one(i: int, check: MetricCheck) -> None:
        try:
            out[i] = Baseline(await read(check, ctx, min(READ_TIMEOUT_S, max(0.5, ctx.remaining_s()))))
        except MetricsReadError as e:
            out[i] = Baseline(None, str(e))

    async with anyio.create_task_group() as tg:
        for i, check in enumerate(checks):
            if check.needs_baseline():
                tg.start_soon(one, i, check)
    return out


async def watch_metrics(check: MetricCheck, wctx: WatchContext, baseline: Baseline | None, *,
                        path: str = "metrics") -> list[Finding]:
    """Read after the trigger every poll interval until the check is judged or its window closes."""
    ctx = wctx.probe
    if baseline is not None and baseline.samples is None:
        return [source_failed(check, baseline.error or "?", path=path, when="before the trigger")]
    before = baseline.samples if baseline is not None else None
    end_s = wctx.window_end_s(check.within if check.within is not None else float("inf"))
    attempts = Attempts(wctx.backoff)
    reads = 0
    last: tuple[list[Sample], float] | None = None
    while True:
        closing = anyio.current_time() >= end_s
        try:
            after = await read(check, ctx, min(READ_TIMEOUT_S, max(0.5, end_s - anyio.current_time())))
        except MetricsReadError as e:
            delay_s = attempts.failed(str(e))
        else:
            attempts.ok()
            reads += 1
            elapsed_s = (time.time_ns() - ctx.trigger_ns) / 1e9
            last = (after, elapsed_s)
            judged = judge_metric(check, before, after, window_closed=closing, elapsed_s=elapsed_s, path=path)
            if judged.final:
                ctx.log("metrics judged", source=check.source, reads=reads, findings=len(judged.findings))
                return judged.findings
            delay_s = wctx.poll_interval_s
        if closing:
            break
        await anyio.sleep(max(0.0, min(delay_s, end_s - anyio.current_time())))
    ctx.log("metrics window closed", source=check.source, reads=reads, error=attempts.last_error)
    if last is None:  # never read after the trigger: nothing to judge
        return [attempts.finding(path, f"reading metrics ({check.source})")]
    # The last read at the window's end failed: judge the last one that worked (its time is in the finding).
    return judge_metric(check, before, last[0], window_closed=True, elapsed_s=last[1], path=path).findings
