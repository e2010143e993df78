"""A run's expectations after its trigger, awaited together: the trace (judged as spans arrive or pulled
from a trace backend), the side-effect watchers and the metrics checks. Any exception in one of them becomes
an ``error`` finding of that expectation (``internal_error``), never the daemon's failure."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Span as OtelSpan
from opentelemetry.trace import Tracer

from tracecanary.assertions.metrics import MetricCheck
from tracecanary.assertions.side_effects import SideEffect
from tracecanary.assertions.spans import Span
from tracecanary.assertions.telemetry import no_telemetry
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.run.judge import TraceOutcome, watch_trace
from tracecanary.daemon.run.preflight import BeforeTrigger
from tracecanary.daemon.store.base import RunRecord
from tracecanary.daemon.watchers.base import WatchContext
from tracecanary.daemon.watchers.metrics import Baseline, watch_metrics
from tracecanary.daemon.watchers.registry import WATCHERS
from tracecanary.errors import ProbeError
from tracecanary.probes.base import ProbeContext, ProbeSpec
from tracecanary.probes.templating import render_spec

if TYPE_CHECKING:
    from tracecanary.daemon.run.runner import RunnerDeps

log = logging.getLogger("tracecanary.runner")


async def await_expectations(deps: RunnerDeps, probe: ProbeSpec, ctx: ProbeContext, run: RunRecord, root: Span,
                             pre: BeforeTrigger) -> None:
    """The run's expectations after its trigger, concurrently: the trace, each side effect, each metrics
    check; their findings go onto ``run`` in a stable order (trace, side effects by index, metrics)."""
    outcome: list[TraceOutcome] = []
    effects: list[tuple[int, SideEffect, list[Finding], list[Any]]] = []
    metrics: list[tuple[int, list[Finding]]] = []

    async def trace_task() -> None:
        assert probe.expect.trace is not None
        with self_span(deps.self_tracer, ctx, "tracecanary judge trace", source=probe.expect.trace.source) as span:
            try:
                outcome.append(await watch_trace(
                    probe.expect.trace, ctx, deps.buffer, root, sentry_source=deps.sentry_source,
                    on_correlation=deps.announce_correlation,
                    pull_sources=deps.pull_sources,
                ))
            except Exception as e:
                outcome.append(TraceOutcome([internal_error("expect.trace", e, probe.id, run.run_id)], None))
            if span is not None:
                span.set_attribute("tracecanary.findings", len(outcome[0].findings))
                span.set_attribute("tracecanary.spans", len(outcome[0].spans))

    async def effect_task(i: int, effect: SideEffect) -> None:
        watcher = WATCHERS.get(effect.kind)
        if watcher is None:
            effects.append((i, effect, [Finding(
                type="error", severity=Verdict.ERROR, path=f"expect.side_effects[{i}]",
                message=f"no watcher for side effect {effect.kind!r}",
            )], []))
            return
        try:
            # Every string of the effect (matchers too) is rendered per run here, once, like the request.
            spec = render_spec(effect.spec, ctx.render)
        except ProbeError as e:
            effects.append((i, effect, [Finding(
                type="error", severity=Verdict.ERROR, path=f"expect.side_effects[{i}].{effect.kind}",
                message=f"side effect {effect.kind}: bad template: {e}",
            )], []))
            return
        wctx = WatchContext(probe=ctx, services=deps.services, outputs=run.outputs,
                            poll_interval_s=deps.poll_interval_s)
        with self_span(deps.self_tracer, ctx, f"tracecanary watch {effect.kind}", index=i):
            try:
                found = await watcher(spec, wctx)
            except Exception as e:
                found = [internal_error(f"expect.side_effects[{i}]", e, probe.id, run.run_id)]
        effects.append((i, effect, [f if f.path else f.model_copy(update={"path": f"expect.side_effects[{i}]"})
                                    for f in found], wctx.observed))

    async def metrics_task(i: int, check: MetricCheck, baseline: Baseline | None) -> None:
        wctx = WatchContext(probe=ctx, services=deps.services, outputs=run.outputs,
                            poll_interval_s=deps.poll_interval_s)
        with self_span(deps.self_tracer, ctx, "tracecanary watch metrics", index=i):
            try:
                metrics.append((i, await watch_metrics(check, wctx, baseline, path=f"expect.metrics[{i}]")))
            except Exception as e:
                metrics.append((i, [internal_error(f"expect.metrics[{i}]", e, probe.id, run.run_id)]))

    if not probe.expect.side_effects and not pre.metrics:  # the trace alone: no task group (a task less)
        if probe.expect.trace is not None:
            await trace_task()
    else:
        async with anyio.create_task_group() as tg:
            if probe.expect.trace is not None:
                tg.start_soon(trace_task)
            for i, effect in enumerate(probe.expect.side_effects):
                tg.start_soon(effect_task, i, effect)
            for i, check, baseline in pre.metrics:
                tg.start_soon(metrics_task, i, check, baseline)
    if outcome:
        run.findings.extend(outcome[0].findings)
        run.trace_report = outcome[0].report
        run.spans = outcome[0].spans
        run.span_count = len(outcome[0].spans)
        run.time_to_verdict_s = outcome[0].time_to_verdict_s
        if outcome[0].outputs:  # {{ outputs.NAME }} from here on (teardown); kept on the run
            ctx.outputs.update(outcome[0].outputs)
            run.outputs["trace"] = dict(outcome[0].outputs)
    for i, effect, found, seen in sorted(effects, key=lambda t: t[0]):
        run.findings.extend(found)
        run.side_effects.append({"index": i, "kind": effect.kind, "findings": [f.message for f in found],
                                 "observed": seen})
    run.findings.extend(f for _, found in sorted(metrics, key=lambda t: t[0]) for f in found)
    if outcome and outcome[0].silence is not None:  # every finding is in: unknown, or the fail stands
        run.findings = no_telemetry(run.findings, outcome[0].silence)


@contextmanager
def self_span(tracer: Tracer | None, ctx: ProbeContext, name: str, **attributes: str | int) -> Iterator[OtelSpan | None]:
    """A span of the daemon's own work under the probe's root span (exported, never judged)."""
    if tracer is None or ctx.root_span is None:
        yield None
        return
    parent = otel_trace.set_span_in_context(ctx.root_span)
    attrs = {f"tracecanary.{k}": v for k, v in attributes.items()}
    with tracer.start_as_current_span(name, context=parent, attributes=attrs) as span:
        yield span


def internal_error(path: str, exc: Exception, probe_id: str, run_id: str) -> Finding:
    """An unexpected exception becomes an ``error`` finding; it is logged and reported to Sentry."""
    log.error("internal error path=%s probe=%s run_id=%s", path, probe_id, run_id, exc_info=exc)
    try:
        from tracecanary.daemon.observe.sentry import capture_daemon_exception

        capture_daemon_exception(exc, probe_id, run_id)
    except Exception:
        log.debug("sentry capture failed", exc_info=True)
    return Finding(type="error.internal", severity=Verdict.ERROR, path=path,
                   message=f"internal error: {type(exc).__name__}: {exc}")
