"""One ProbeRun: fire → await expectations concurrently → verdict → record → hooks.

Shared by the daemon and ``check``. Each attempt (retries included) is its own stored run with its
own run id and trace id; ``run_probe`` returns every attempt's record. Results are written in a
shielded scope so cancellation (shutdown drain, SIGTERM) can never lose one: a cancelled run is
recorded ``aborted`` with the reason.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import aiohttp
import anyio
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Span as OtelSpan
from opentelemetry.trace import Status, Tracer
from opentelemetry.trace import StatusCode as OtelStatus

from tracecanary.assertions.response import judge_response
from tracecanary.assertions.spans import Span, SpanKind, StatusCode
from tracecanary.assertions.verdict import Finding, Verdict, verdict_of
from tracecanary.daemon.config.links import LinkRenderer
from tracecanary.daemon.config.secrets import Secrets
from tracecanary.daemon.run.expectations import await_expectations, internal_error
from tracecanary.daemon.run.hooks import RunHook
from tracecanary.daemon.run.ids import minting, new_run_id
from tracecanary.daemon.run.preflight import before_trigger
from tracecanary.daemon.run.retries import SHUTDOWN_REASON, RetryWaits
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.pull import PullSource
from tracecanary.daemon.spans.sentry import SentryTraceSource
from tracecanary.daemon.store.base import RunRecord, RunStatus, Store, StoreFault
from tracecanary.daemon.watchers.base import Services
from tracecanary.errors import ProbeError
from tracecanary.integrations import Integrations
from tracecanary.probes.base import FireResult, ProbeContext, ProbeResources, ProbeSpec, RunLog, TraceContext
from tracecanary.probes.templating import Templates

log = logging.getLogger("tracecanary.runner")


@dataclass
class RunnerDeps:
    """What the runner needs, built once by the daemon (or by ``check``)."""

    store: Store
    buffer: TraceBuffer
    session: aiohttp.ClientSession
    integrations: Integrations = field(default_factory=Integrations)
    hooks: list[RunHook] = field(default_factory=list)
    services: Services = field(default_factory=Services)
    tracer: Tracer | None = None
    """OpenTelemetry tracer for probe root and client spans (their spans reach the buffer via a sink).
    None: runs get random trace ids and no root span of their own."""
    max_concurrent_runs: int = 64
    poll_interval_s: float = 2.0
    links: LinkRenderer | None = None
    """Renders each run's trace links once, into ``run.links`` (alerts and the dashboard read them there)."""
    sentry_source: SentryTraceSource | None = None
    """Spans pulled from Sentry for ``expect.trace.source: sentry`` (None when Sentry is not configured)."""
    pull_sources: dict[str, PullSource] = field(default_factory=dict)
    """The other pull sources by ``expect.trace.source`` name (``jaeger``, ``tempo``), each when configured."""
    self_tracer: Tracer | None = None
    """Tracer for the daemon's own work (judging, watching): exported, never judged."""
    resources: ProbeResources = field(default_factory=ProbeResources)
    """Long-lived clients probes share across runs (Kafka producers), closed by the engine."""
    secrets: Secrets = field(default_factory=Secrets)
    """Masked out of every run record before it is stored or handed to a hook (alerts, reports)."""
    mint_trace_id: Callable[[], str] | None = None
    """Where each run's trace id comes from (mode kafka: one landing on an owned partition); None: random."""
    announce_correlation: Callable[[str, str, str], None] | None = None
    """Told ``(trace id, attribute, value)`` a run waits for (mode kafka: other members forward matches)."""
    environ: Mapping[str, str] | None = None
    """Where ``requires.env`` looks (None: the process environment)."""


class Runner:
    """Runs probes: one attempt at a time per call, retries included, bounded by a global semaphore."""

    def __init__(self, deps: RunnerDeps) -> None:
        self.deps = deps
        self.templates = Templates()
        self._limit = anyio.Semaphore(deps.max_concurrent_runs)
        self.in_flight: dict[str, RunRecord] = {}
        self._scopes: dict[str, tuple[str, anyio.CancelScope]] = {}
        self._abort_reasons: dict[str, str] = {}
        self._changed = anyio.Event()
        self._retries = RetryWaits(self._signal)
        self._chains = 0

    async def run_probe(
        self, probe: ProbeSpec, *, first_run_id: str | None = None, retry_delay_override_s: float | None = None
    ) -> list[RunRecord]:
        """Run a probe with its retries; returns every attempt's record, oldest first (the last is final).

        ``first_run_id`` is the first attempt's run id when the caller minted it (the scheduler does,
        so "run now" can answer with it before the run starts).
        """
        with self._active():
            return await self._chain(probe, first_run_id or new_run_id(), 1, retry_delay_override_s)

    async def resume_chain(self, probe: ProbeSpec, pending: RunRecord) -> list[RunRecord]:
        """Continue a chain a previous process left waiting for its retry (``Store.pending_retries``):
        wait until the retry is due, then run the remaining attempts; returns the new attempts."""
        with self._active():
            if pending.attempt > probe.retries.count:
                await self.end_chain(probe, pending, f"the probe now has retries.count={probe.retries.count}")
                return []
            if not await self._retries.wait(pending, self._due_ns(probe, pending), probe.timeout,
                                            partial(self.end_chain, probe, pending)):
                return []
            return await self._chain(probe, pending.first_run_id, pending.attempt + 1, None)

    @contextmanager
    def _active(self) -> Iterator[None]:
        """A chain runs (attempts and the waits between them): ``wait_idle`` waits for it."""
        self._chains += 1
        try:
            yield
        finally:
            self._chains -= 1
            self._signal()

    async def _chain(self, probe: ProbeSpec, first_run_id: str, start: int,
                     retry_delay_override_s: float | None) -> list[RunRecord]:
        attempts = probe.retries.count + 1
        delay_s = probe.retries.delay if retry_delay_override_s is None else retry_delay_override_s
        runs: list[RunRecord] = []
        for attempt in range(start, attempts + 1):
            run = await self.run_attempt(
                probe, attempt=attempt, first_run_id=first_run_id, run_id=first_run_id if attempt == 1 else None,
                last_attempt=attempt == attempts, retry_delay_s=delay_s,
            )
            runs.append(run)
            if run.final or not await self._retries.wait(run, self._due_ns(probe, run), probe.timeout,
                                                         partial(self.end_chain, probe, run)):
                break
        return runs

    @staticmethod
    def _due_ns(probe: ProbeSpec, run: RunRecord) -> int:
        if run.retry_at_ns is not None:
            return run.retry_at_ns
        return (run.finished_ns or run.started_ns) + int(probe.retries.delay * 1e9)  # stored before retry_at_ns

    async def end_chain(self, probe: ProbeSpec | None, run: RunRecord, reason: str) -> None:
        """End a chain whose retry will not run: its last attempt becomes final with ``reason`` (stored,
        then the run hooks, so alerts see the failure). ``probe`` None (gone from the config): stored only."""
        run.final, run.retry_at_ns, run.retry_aborted = True, None, reason
        severity = run.verdict if run.verdict in (Verdict.FAIL, Verdict.ERROR) else Verdict.FAIL
        run.findings.append(Finding(type="retry.not_run", severity=severity,
                                    message=f"the chain ended after attempt {run.attempt} without its retry: "
                                            f"{reason}"))
        with anyio.CancelScope(shield=True):
            await self.deps.store.finish_run(run)
            if probe is not None:
                await self._call_hooks(probe, run, finished=True)
        log.warning("retry chain ended probe=%s first_run_id=%s run_id=%s attempt=%d verdict=%s reason=%s",
                    run.probe_id, run.first_run_id, run.run_id, run.attempt,
                    run.verdict.value if run.verdict else "-", reason)

    def end_retries(self, deadline_wall_s: float, reason: str = SHUTDOWN_REASON) -> int:
        """For the shutdown drain: chains whose retry could not finish (due + timeout) by
        ``deadline_wall_s`` end now (and from now on); the others run their retry. How many ended now."""
        return self._retries.end_due_after(deadline_wall_s, reason)

    @property
    def waiting_retries(self) -> int:
        """Chains sleeping until their next attempt."""
        return len(self._retries)

    async def run_attempt(
        self, probe: ProbeSpec, *, attempt: int = 1, first_run_id: str | None = None, run_id: str | None = None,
        last_attempt: bool = True, retry_delay_s: float | None = None,
    ) -> RunRecord:
        """One attempt under the global concurrency limit; ``run.final`` says whether a retry follows
        (then due ``retry_delay_s`` after it ends: ``run.retry_at_ns``)."""
        delay_s = probe.retries.delay if retry_delay_s is None else retry_delay_s
        async with self._limit:
            return await self._attempt(probe, attempt, run_id or new_run_id(), first_run_id, last_attempt, delay_s)

    async def _attempt(
        self, probe: ProbeSpec, attempt: int, run_id: str, first_run_id: str | None, last_attempt: bool,
        retry_delay_s: float,
    ) -> RunRecord:
        deps = self.deps
        tctx, root_span = self._open_root(probe, run_id, attempt)
        trigger_ns = time.time_ns()
        run = RunRecord(
            run_id=run_id, probe_id=probe.id, kind=probe.kind, attempt=attempt,
            first_run_id=first_run_id or run_id, trace_id=tctx.trace_id, started_ns=trigger_ns,
        )
        if deps.links is not None:
            run.links = dict(deps.links(tctx.trace_id, run_id, probe.id))
        runlog = RunLog()
        ctx = ProbeContext(
            probe_id=probe.id, run_id=run_id, attempt=attempt, first_run_id=run.first_run_id, trace=tctx,
            session=deps.session, templates=self.templates, integrations=deps.integrations, inject=probe.inject,
            log=runlog, trigger_ns=trigger_ns, deadline_s=anyio.current_time() + probe.timeout,
            tracer=deps.tracer, root_span=root_span, resources=deps.resources,
        )
        with anyio.CancelScope(shield=True):
            deps.secrets.mask_in_place(run)
            await deps.store.insert_run(run)
            await self._call_hooks(probe, run, finished=False)
        self.in_flight[run_id] = run
        # The run's root span is the current span of this task (and its children): logs carry its trace id.
        token = otel_context.attach(otel_trace.set_span_in_context(root_span)) if root_span is not None else None
        try:
            with anyio.CancelScope() as scope:
                self._scopes[run_id] = (probe.id, scope)
                await self._execute(probe, ctx, run)
            self._scopes.pop(run_id, None)
            reason = self._abort_reasons.pop(run_id, None)
            if scope.cancelled_caught and reason is not None:
                run.status, run.verdict, run.abort_reason = RunStatus.ABORTED, None, reason
                runlog("run aborted", reason=reason)
            elif run.status is RunStatus.RUNNING:  # not skipped
                run.status = RunStatus.FINISHED
        except anyio.get_cancelled_exc_class():
            run.status, run.verdict, run.abort_reason = RunStatus.ABORTED, None, "shutdown"
            runlog("run aborted", reason="shutdown")
            raise
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._finish(probe, ctx, run, runlog, last_attempt, retry_delay_s)
                finally:
                    if token is not None:
                        otel_context.detach(token)
                    self.in_flight.pop(run_id, None)
                    self._scopes.pop(run_id, None)
                    self._abort_reasons.pop(run_id, None)
                    self._signal()
        return run

    def abort(self, probe_ids: Collection[str], reason: str) -> int:
        """Abort the in-flight runs of these probes: recorded ``aborted`` with ``reason``, no verdict."""
        n = 0
        for run_id, (probe_id, scope) in list(self._scopes.items()):
            if probe_id in probe_ids:
                self._abort_reasons[run_id] = reason
                scope.cancel()
                n += 1
        return n

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_idle(self) -> None:
        """Return once no run is in flight and no retry chain is going (the shutdown drain)."""
        while self.in_flight or self._chains:
            await self._changed.wait()

    def _open_root(self, probe: ProbeSpec, run_id: str, attempt: int) -> tuple[TraceContext, OtelSpan | None]:
        """The run's trace identity and its root span (ended by ``_finish``); no span without a tracer."""
        tracer, mint = self.deps.tracer, self.deps.mint_trace_id
        if tracer is None:
            return TraceContext(mint() if mint else secrets.token_hex(16), secrets.token_hex(8)), None
        with minting(mint):
            span = tracer.start_span(
                f"tracecanary probe {probe.id}", attributes={
                    "tracecanary.probe_id": probe.id, "tracecanary.run_id": run_id,
                    "tracecanary.attempt": attempt, "tracecanary.kind": probe.kind,
                },
            )
        sc = span.get_span_context()
        return TraceContext(format(sc.trace_id, "032x"), format(sc.span_id, "016x")), span

    async def _execute(self, probe: ProbeSpec, ctx: ProbeContext, run: RunRecord) -> None:
        root = Span(
            trace_id=ctx.trace.trace_id, span_id=ctx.trace.span_id, parent_span_id=None,
            name=f"tracecanary probe {probe.id}", kind=SpanKind.INTERNAL, start_ns=ctx.trigger_ns,
            end_ns=ctx.trigger_ns, service="tracecanary",
        )
        try:
            pre = await before_trigger(probe, ctx, self.deps.session, self.deps.environ)
        except Exception as e:  # a bug in the preflight costs one run
            run.findings.append(internal_error("preflight", e, probe.id, run.run_id))
            return
        if pre.skip_reason is not None:
            run.status, run.abort_reason = RunStatus.SKIPPED, pre.skip_reason
            return
        run.findings.extend(pre.findings)
        try:
            with anyio.fail_after(max(0.001, ctx.remaining_s())):
                result = await probe.fire(ctx)
        except ProbeError as e:
            run.findings.append(Finding(type="error", severity=Verdict.ERROR, message=str(e)))
            result = FireResult()
        except TimeoutError:
            run.findings.append(Finding(
                type="error", severity=Verdict.ERROR,
                message=f"trigger did not complete within the probe's timeout {probe.timeout:g}s",
            ))
            result = FireResult()
        except Exception as e:  # a bug in a probe kind must cost one run, never the daemon
            run.findings.append(internal_error("probe.fire", e, probe.id, run.run_id))
            result = FireResult()
        run.outputs = dict(result.outputs)
        run.findings.extend(result.findings)
        run.response = result.response.to_dict() if result.response is not None else None
        if any(f.severity is Verdict.ERROR for f in run.findings) or not probe.judges_run:
            return
        run.findings.extend(judge_response(probe.expect.response, run.response))
        await await_expectations(self.deps, probe, ctx, run, root, pre)

    async def _finish(
        self, probe: ProbeSpec, ctx: ProbeContext, run: RunRecord, runlog: RunLog, last_attempt: bool,
        retry_delay_s: float,
    ) -> None:
        try:
            with anyio.fail_after(30):
                run.findings.extend(await probe.teardown(ctx))
        except Exception as e:
            run.findings.append(Finding(type="teardown", severity=Verdict.FAIL, message=f"teardown failed: {e}"))
        if run.status is RunStatus.FINISHED:
            run.verdict = verdict_of(run.findings)
        run.final = (last_attempt or run.status in (RunStatus.ABORTED, RunStatus.SKIPPED)
                     or (run.verdict is not None and run.verdict.ok))
        run.finished_ns = time.time_ns()
        run.retry_at_ns = None if run.final else run.finished_ns + int(retry_delay_s * 1e9)
        # The judge saw the probe's root span before it ended; store it with its real end and status.
        run.spans = [
            replace(s, end_ns=run.finished_ns,
                    status_code=StatusCode.OK if run.verdict is not None and run.verdict.ok else StatusCode.ERROR)
            if s.span_id == ctx.trace.span_id and s.trace_id == ctx.trace.trace_id else s
            for s in run.spans
        ]
        if ctx.root_span is not None:
            ok = run.verdict is not None and run.verdict.ok
            ctx.root_span.set_attribute("tracecanary.verdict", run.verdict.value if run.verdict else run.status.value)
            skipped = run.status is RunStatus.SKIPPED
            ctx.root_span.set_status(Status(OtelStatus.OK if ok or skipped else OtelStatus.ERROR))
            ctx.root_span.end()
        # Failed runs keep their whole log; passing runs keep the tail (blackbox_exporter's habit).
        run.log = runlog.text() if run.verdict is not Verdict.PASS else runlog.text()[-4000:]
        self.deps.secrets.mask_in_place(run)  # one place: the store, the hooks (alerts) and reports see this
        try:
            await self.deps.store.finish_run(run)  # the engine's guard keeps it when the store fails
        except Exception:
            log.exception("store write failed run_id=%s", run.run_id)
            raise
        await self._call_hooks(probe, run, finished=True)
        log.info("run finished probe=%s run_id=%s attempt=%d status=%s verdict=%s",
                 probe.id, run.run_id, run.attempt, run.status.value, run.verdict.value if run.verdict else "-")

    async def _call_hooks(self, probe: ProbeSpec, run: RunRecord, *, finished: bool) -> None:
        for hook in self.deps.hooks:
            call = hook.on_run_finished if finished else hook.on_run_started
            try:
                await call(probe, run)
            except StoreFault as e:  # reported once by the store's guard; one line per hook here
                log.error("hook %s failed hook=%s run_id=%s: the store fails: %s", call.__name__,
                          type(hook).__name__, run.run_id, e)
            except Exception:
                log.exception("hook %s failed hook=%s run_id=%s", call.__name__, type(hook).__name__,
                              run.run_id)


def selected(probes: Sequence[ProbeSpec], globs: Sequence[str]) -> list[ProbeSpec]:
    """Probes whose id or a tag matches any glob (all when no glob is given)."""
    import fnmatch

    if not globs:
        return list(probes)
    return [p for p in probes if any(fnmatch.fnmatchcase(p.id, g) or any(fnmatch.fnmatchcase(t, g) for t in p.tags)
                                     for g in globs)]
