"""The probe contract: ProbeSpec (config model + behaviour), ProbeContext, FireResult.

A probe kind is a pydantic model subclassing ``ProbeSpec`` with ``kind: Literal["…"]`` and an
``async fire(ctx)``. It is registered once in ``probes/registry.py``; the config discriminator is
derived from that registry. ``probes/http.py`` is the reference kind.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, StringConstraints, field_validator

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.metrics import MetricCheck
from tracecanary.assertions.response import ResponseExpectation
from tracecanary.assertions.side_effects import SideEffect
from tracecanary.assertions.units import CronExpression, Duration, Timezone
from tracecanary.assertions.verdict import Finding
from tracecanary.model import StrictModel, cross_field_rule
from tracecanary.probes.requires import Requires

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer

    from tracecanary.integrations import Integrations
    from tracecanary.probes.kafka import KafkaProducers
    from tracecanary.probes.passive import PassiveWindows
    from tracecanary.probes.templating import Templates


class Retries(StrictModel):
    """Re-run a failed probe before declaring the verdict final; each attempt is its own run."""

    count: int = Field(0, ge=0, le=10, description="Extra attempts after a failure.")
    delay: Duration = Field(0.0, description="Wait between attempts.")


class Inject(StrictModel):
    """Which trace headers outgoing requests carry (switch off for targets that reject unknown headers)."""

    traceparent: bool = True
    tracestate: bool = True
    baggage: bool = True
    sentry_trace: bool = True


class AlertRef(StrictModel):
    """Which alert policy judges this probe's verdicts."""

    policy: str = Field("default", description="Name under alerts.policies.")


class Expect(StrictModel):
    """What a run must produce: a response, a trace, side effects, movements of its own metrics."""

    response: ResponseExpectation | None = None
    trace: TraceExpectation | None = None
    side_effects: list[SideEffect] = Field(default_factory=list)
    metrics: list[MetricCheck] = Field(default_factory=list, description="Checks against the system's "
                                       "Prometheus metrics (docs/probes.md, Metrics expectations).")


def parse_fraction(value: Any, what: str) -> float:
    """A percentage (``"10%"``) or a plain fraction (``0.1``) as a fraction; ValueError naming ``what``
    otherwise. The caller checks the bounds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError as e:
            raise ValueError(f"invalid {what} {value!r}: expected a percentage like 10%") from e
    raise ValueError(f"invalid {what} {value!r}: expected a percentage like 10%")


def _parse_jitter(value: Any) -> float:
    frac = parse_fraction(value, "jitter")
    if not 0 <= frac <= 1:
        raise ValueError(f"invalid jitter {value!r}: must be between 0% and 100%")
    return frac


_JitterInput = Annotated[str, StringConstraints(pattern=r"^\s*\d+(\.\d+)?\s*%\s*$")] | Annotated[float, Field(ge=0, le=1)]


class ProbeSpec(StrictModel):
    """Fields every probe kind shares: identity, schedule, deadline, retries, expectations."""

    id: str = Field(description="Unique id: lowercase letters, digits and '-'.")
    kind: str
    description: str = ""
    every: Duration | None = Field(None, description="Interval between runs, e.g. 60s.")
    cron: CronExpression | None = Field(None, description="Cron schedule, e.g. \"0 8 * * *\" (with timezone).")
    timezone: Timezone = Field("UTC", description="IANA timezone for cron.")
    jitter: Annotated[float, BeforeValidator(_parse_jitter, json_schema_input_type=_JitterInput)] = Field(
        0.1, description="Random phase as a fraction of the interval, written 10%.")
    start_at: datetime | None = Field(None, description="Do not run before this time.")
    pause: bool = Field(False, description="Keep the probe loaded but do not schedule it.")
    overlap: Literal["skip", "queue", "allow"] = Field("skip", description="When a run is still going.")
    timeout: Duration = Field(60.0, description="Deadline for the whole run, from the trigger.")
    retries: Retries = Field(default_factory=Retries)
    tags: list[str] = Field(default_factory=list)
    inject: Inject = Field(default_factory=Inject)
    expect: Expect = Field(default_factory=Expect)
    requires: Requires = Field(default_factory=Requires, description="Preconditions: when one is unmet the run "
                               "is recorded as skipped with the reason (never a failure, never alerted).")
    alert: AlertRef | None = None

    judges_run: ClassVar[bool] = True
    """Whether the runner judges the run's own response, trace and side effects after ``fire``
    (``kind: passive`` judges other traces, in the daemon's passive judge)."""

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,99}", value):
            raise ValueError(f"invalid probe id {value!r}: use lowercase letters, digits and '-' (at most 100)")
        return value

    _schedule = cross_field_rule(
        lambda raw: "set either every or cron, not both"
        if raw.get("every") is not None and raw.get("cron") is not None else None)

    @field_validator("every")
    @classmethod
    def _positive_every(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError(f"every must be positive, got {value:g}s")
        return value

    async def fire(self, ctx: ProbeContext) -> FireResult:
        """Trigger the system under test once; raise ProbeError when it cannot be triggered."""
        raise NotImplementedError

    async def teardown(self, ctx: ProbeContext) -> list[Finding]:
        """Clean up after the run (delete what ``fire`` created); findings of its own.

        The runner calls it exactly once per run, after expectations settle, whether ``fire``
        succeeded, failed or was cancelled. Implementations shield themselves and bound their
        own time, so the caller may be in a cancelled scope. Default: nothing to clean up.
        """
        return []


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The W3C identity of one run: its trace id and the probe's root span id."""

    trace_id: str
    span_id: str
    sampled: bool = True

    def traceparent(self, span_id: str | None = None) -> str:
        return f"00-{self.trace_id}-{span_id or self.span_id}-{'01' if self.sampled else '00'}"


@dataclass
class ResponseSummary:
    """What a trigger's response looked like (stored with the run, judged by assertions/response)."""

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body_text: str = ""
    json: Any = None
    latency_s: float = 0.0
    method: str = ""
    url: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": dict(self.headers),
            "body": self.body_text[:4096],
            "json": self.json,
            "latency_s": self.latency_s,
            "method": self.method,
            "url": self.url,
        }


@dataclass
class FireResult:
    """What ``fire`` returns: the response (if any), findings of its own, outputs to record."""

    response: ResponseSummary | None = None
    findings: list[Finding] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)


class RunLog:
    """A per-run buffered log, stored with the result (failed runs keep it)."""

    def __init__(self, limit: int = 2000) -> None:
        self.lines: list[str] = []
        self._limit = limit
        self._t0 = time.monotonic()

    def __call__(self, message: str, **fields: Any) -> None:
        if len(self.lines) >= self._limit:
            return
        kv = " ".join(f"{k}={v!r}" for k, v in fields.items())
        self.lines.append(f"+{time.monotonic() - self._t0:8.3f}s {message}{' ' + kv if kv else ''}")

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True, slots=True)
class ProbeResources:
    """Long-lived clients shared across runs: owned (and closed at shutdown) by the engine.

    One field per kind of client; a probe kind that needs one reads its field and copes with None
    (no cache: a short-lived client for its one run).
    """

    kafka_producers: KafkaProducers | None = None
    """Started Kafka producers, one per bootstrap address (``probes/kafka.py``)."""
    passive: PassiveWindows | None = None
    """The daemon's passive judge: the counts each ``kind: passive`` run judges (``probes/passive.py``)."""


@dataclass
class ProbeContext:
    """Everything a probe needs for one run. Built by the runner; probes never build their own."""

    probe_id: str
    run_id: str
    attempt: int
    first_run_id: str
    trace: TraceContext
    session: aiohttp.ClientSession
    templates: Templates
    integrations: Integrations
    inject: Inject
    log: RunLog
    trigger_ns: int
    deadline_s: float
    """anyio monotonic deadline of the whole run."""
    steps: MutableMapping[str, Any] = field(default_factory=dict)
    tracer: Tracer | None = None
    """An OpenTelemetry tracer whose spans land in the run's buffer and the telemetry exporter."""
    root_span: OtelSpan | None = None
    resources: ProbeResources = field(default_factory=ProbeResources)
    """Long-lived clients shared across runs and owned by the engine (Kafka producers)."""
    outputs: MutableMapping[str, Any] = field(default_factory=dict)
    """``expect.trace.outputs`` once the trace is judged: ``{{ outputs.NAME }}`` (teardown)."""

    def template_vars(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "probe_id": self.probe_id,
            "trace_id": self.trace.trace_id,
            "span_id": self.trace.span_id,
            "traceparent": self.trace.traceparent(),
            "attempt": self.attempt,
            "steps": self.steps,
            "outputs": self.outputs,
            "now": datetime.now().astimezone().isoformat(),
        }

    def render(self, value: Any) -> Any:
        """Render ``{{ … }}`` in every string inside ``value`` with this run's variables."""
        # The variables (a clock read, a traceparent) are built only when something is templated.
        return self.templates.render(value, self.template_vars() if _templated(value) else {})

    def trace_headers(self, span_id: str | None = None) -> dict[str, str]:
        """traceparent, tracestate, baggage and sentry-trace for an outgoing request/message."""
        sid = span_id or self.trace.span_id
        headers: dict[str, str] = {}
        if self.inject.traceparent:
            headers["traceparent"] = self.trace.traceparent(sid)
        if self.inject.tracestate:
            headers["tracestate"] = f"tracecanary={self.run_id}"
        if self.inject.baggage:
            members = [
                f"tracecanary.probe_id={self.probe_id}",
                f"tracecanary.run_id={self.run_id}",
            ]
            if self.inject.sentry_trace:
                members += [f"sentry-trace_id={self.trace.trace_id}",
                            f"sentry-sampled={'true' if self.trace.sampled else 'false'}"]
                org_id = self.integrations.sentry.resolved_org_id()
                if org_id:
                    # sentry-sdk with strict_trace_continuation starts a new trace without it.
                    members.append(f"sentry-org_id={org_id}")
            headers["baggage"] = ",".join(members)
        if self.inject.sentry_trace:
            headers["sentry-trace"] = f"{self.trace.trace_id}-{sid}-{'1' if self.trace.sampled else '0'}"
        return headers

    def with_trace_headers(self, headers: Mapping[str, str], span_id: str | None = None) -> dict[str, str]:
        """``headers`` (a request's or message's own) plus :meth:`trace_headers`: a ``baggage`` or
        ``tracestate`` the config set is merged with ours member by member, never replaced
        (``probes/propagation.py``); ``traceparent``/``sentry-trace`` are the run's."""
        from tracecanary.probes.propagation import merge_trace_headers

        merged = merge_trace_headers(headers, self.trace_headers(span_id))
        if merged.kept_theirs:
            self.log("baggage: the request's own value kept", keys=merged.kept_theirs)
        if merged.dropped_ours:
            self.log("baggage: full (64 members / 8192 bytes); ours left out", keys=merged.dropped_ours)
        return merged.headers

    @contextmanager
    def client_span(self, name: str, kind: str = "client", **attributes: Any) -> Iterator[str]:
        """Open a child span of the probe's root span; yields its hex span id for header injection."""
        if self.tracer is None or self.root_span is None:
            yield self.trace.span_id
            return
        from opentelemetry import trace as otel_trace

        kinds = {
            "client": otel_trace.SpanKind.CLIENT,
            "producer": otel_trace.SpanKind.PRODUCER,
            "internal": otel_trace.SpanKind.INTERNAL,
        }
        parent = otel_trace.set_span_in_context(self.root_span)
        with self.tracer.start_as_current_span(
            name, context=parent, kind=kinds[kind], attributes=attributes
        ) as span:
            yield format(span.get_span_context().span_id, "016x")

    def remaining_s(self) -> float:
        import anyio

        return max(0.0, self.deadline_s - anyio.current_time())


def _templated(value: Any) -> bool:
    """Whether ``value`` holds a ``{{ }}``/``{% %}`` template anywhere (keys included)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_templated(k) or _templated(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_templated(v) for v in value)
    return False
