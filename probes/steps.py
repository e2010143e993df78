"""The steps probe: an ordered list of actions sharing one trace, with captures and teardown.

Each step is one action: ``http``, ``github_webhook``, ``kafka``, ``slack_mention`` (the request
shapes of those kinds) or ``wait``. After a step, ``ctx.steps[name]`` holds ``{status, headers,
json, body, outputs, <captures>}`` so later steps template ``{{ steps.create.json.id }}``.
``teardown:`` steps run after the runner has judged the expectations (``ProbeSpec.teardown``),
always — after a failure, an error or a cancellation — in a shielded scope with their own deadline;
each failure is a finding of its own.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import anyio
from pydantic import (
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from tracecanary.assertions.response import (
    ResponseExpectation,
    judge_response,
    select_json,
    validate_json_path,
)
from tracecanary.assertions.units import Duration
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.errors import ProbeError, TracecanaryError
from tracecanary.model import StrictModel, cross_field_rule
from tracecanary.probes.base import FireResult, ProbeContext, ProbeSpec
from tracecanary.probes.github import GithubDelivery
from tracecanary.probes.http import HttpRequest
from tracecanary.probes.kafka import KafkaMessage

ACTIONS = ("http", "github_webhook", "kafka", "slack_mention", "wait")


class Capture(StrictModel):
    """Pull one value out of a step's response: a JSONPath, a header, or a regex over the body."""

    json_: str | None = Field(None, alias="json", description="JSONPath into the response JSON.")
    header: str | None = Field(None, description="Response header name.")
    regex: str | None = Field(None, description="Regex over the body; group 1 when it has groups.")
    required: bool = Field(True, description="A missing value fails the step.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"json": value} if isinstance(value, str) else value

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # The shorthand `id: "$.id"` (a JSONPath) is as valid in a file as the mapping.
        return {"anyOf": [{"type": "string", "description": "JSONPath into the response JSON."}, handler(core)]}

    _one = cross_field_rule(
        lambda fields: None if sum(fields.get(n) is not None for n in ("json_", "header", "regex")) == 1
        else "a capture takes exactly one of json, header, regex")

    @field_validator("json_")
    @classmethod
    def _json_path(cls, value: str | None) -> str | None:
        return value if value is None else validate_json_path(value)

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"invalid regex {value!r}: {e}") from e
        return value

    def extract(self, record: dict[str, Any]) -> tuple[bool, Any]:
        """(found, value) from a step record."""
        if self.json_ is not None:
            values = select_json(self.json_, record.get("json")) if record.get("json") is not None else []
            return (bool(values), values[0] if values else None)
        if self.header is not None:
            headers = {k.lower(): v for k, v in (record.get("headers") or {}).items()}
            return (self.header.lower() in headers, headers.get(self.header.lower()))
        m = re.search(self.regex or "", record.get("body") or "")
        if m is None:
            return (False, None)
        return (True, m.group(1) if m.groups() else m.group(0))


def _one_action(fields: Mapping[str, Any]) -> str | None:
    given = [a for a in ACTIONS if fields.get(a) is not None]
    return None if len(given) == 1 else \
        f"a step takes exactly one of {', '.join(ACTIONS)}; got {', '.join(given) or 'none'}"


def _slack_spec(fields: Mapping[Any, Any]) -> ProbeSpec:
    from tracecanary.probes.registry import PROBES  # the registry imports this module

    return PROBES["slack_mention"].model_validate({"id": "step", "kind": "slack_mention", **fields})


def _slack_mention_problem(fields: Mapping[str, Any]) -> str | None:
    given = fields.get("slack_mention")
    if not isinstance(given, Mapping):
        return None  # absent, or not a mapping (a field error)
    try:
        _slack_spec(given)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"slack_mention.{where}: {first['msg']}"
    return None


class Step(StrictModel):
    """One action: exactly one of http, github_webhook, kafka, slack_mention, wait."""

    name: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Key under steps.<name>.")
    http: HttpRequest | None = Field(None, description="Send an HTTP request.")
    github_webhook: GithubDelivery | None = Field(None, description="Deliver a GitHub event.")
    kafka: KafkaMessage | None = Field(None, description="Publish a Kafka message.")
    slack_mention: dict[str, Any] | None = Field(None, description="A slack_mention probe's fields.")
    wait: Duration | None = Field(None, description="Pause this long (bounded by the run's deadline).")
    capture: dict[str, Capture] = Field(default_factory=dict, description="name → capture into steps.<name>.")
    expect: ResponseExpectation | None = Field(None, description="This step's response (default: any 2xx).")
    requires: str | None = Field(None, description="Skip this step unless the named step ran (for teardown).")
    _slack: ProbeSpec | None = PrivateAttr(None)

    _one_action = cross_field_rule(_one_action)
    _slack_fields = cross_field_rule(_slack_mention_problem)
    _wait = cross_field_rule(
        lambda fields: "a wait step has no response to capture or expect"
        if (fields.get("capture") or fields.get("expect") is not None) and fields.get("wait") is not None else None)

    @property
    def label(self) -> str:
        return self.name or next(a for a in ACTIONS if getattr(self, a) is not None)

    @property
    def responds(self) -> bool:
        return self.wait is None and self.kafka is None

    async def act(self, ctx: ProbeContext) -> FireResult:
        """Run the action once."""
        if self.wait is not None:
            await anyio.sleep(min(self.wait, ctx.remaining_s()))
            return FireResult()
        if self.http is not None:
            return await self.http.run(ctx)
        if self.github_webhook is not None:
            return await self.github_webhook.run(ctx)
        if self.kafka is not None:
            return await self.kafka.run(ctx)
        assert self.slack_mention is not None
        if self._slack is None:  # built once, on first use: it keeps its own pacing state
            self._slack = _slack_spec(self.slack_mention)
        return await self._slack.fire(ctx)


def record_of(result: FireResult) -> dict[str, Any]:
    """What ``ctx.steps[name]`` holds for a step's result."""
    resp = result.response
    return {
        "status": resp.status if resp else None, "headers": dict(resp.headers) if resp else {},
        "json": resp.json if resp else None, "body": resp.body_text if resp else "",
        "latency_s": resp.latency_s if resp else None, "outputs": dict(result.outputs),
    }


async def run_step(ctx: ProbeContext, step: Step, path: str, *, judge: bool) -> tuple[FireResult, list[Finding]]:
    """Run one step, record it under ``ctx.steps`` and return its result and failures."""
    ctx.log("step start", step=step.label)
    try:
        result = await step.act(ctx)
    except ProbeError as e:
        raise ProbeError(f"{path} ({step.label}): {e}") from e
    record = record_of(result)
    findings = [f.model_copy(update={"path": f"{path}.{f.path}" if f.path else path}) for f in result.findings]
    if judge and step.responds:
        findings += [f.model_copy(update={"path": f"{path}.{f.path}", "message": f"{step.label}: {f.message}"})
                     for f in judge_response(step.expect, result.response.to_dict() if result.response else None)]
    for key, capture in step.capture.items():
        found, value = capture.extract(record)
        record[key] = value
        if not found and capture.required:
            findings.append(Finding(
                type="step.capture", path=f"{path}.capture.{key}", expected=capture.model_dump(exclude_none=True),
                observed=None, message=f"{step.label}: capture {key!r} found nothing in the response",
            ))
    if step.name:
        ctx.steps[step.name] = record
    return result, findings


async def run_teardown(ctx: ProbeContext, steps: list[Step], timeout_s: float, path: str = "teardown") -> list[Finding]:
    """Run every teardown step (shielded, own deadline); each failure becomes a finding."""
    findings: list[Finding] = []
    with anyio.CancelScope(shield=True):
        tctx = dataclasses.replace(ctx, deadline_s=anyio.current_time() + timeout_s)
        with anyio.move_on_after(timeout_s) as scope:
            for i, step in enumerate(steps):
                where = f"{path}[{i}]"
                if step.requires is not None and step.requires not in ctx.steps:
                    ctx.log("teardown step skipped", step=step.label, requires=step.requires)
                    continue
                try:
                    _, failed = await run_step(tctx, step, where, judge=True)
                except TracecanaryError as e:
                    failed = [Finding(type="teardown", path=where, message=str(e), expected="success", observed=None)]
                findings += [f.model_copy(update={"type": "teardown"}) for f in failed]
        if scope.cancelled_caught:
            findings.append(Finding(type="teardown", path=path, message=f"teardown did not finish within {timeout_s:g}s",
                                    expected=timeout_s, observed=None))
    for f in findings:
        ctx.log("teardown failed", path=f.path, reason=f.message)
    return findings


def _duplicate_names(steps: Any) -> str | None:
    """Across the steps, validated (``Step``) or as written (mappings)."""
    if not isinstance(steps, list):
        return None
    names = [s.get("name") if isinstance(s, Mapping) else getattr(s, "name", None) for s in steps]
    counts = Counter(n for n in names if isinstance(n, str) and n)
    dupes = sorted(n for n, times in counts.items() if times > 1)
    return f"duplicate step name(s): {', '.join(dupes)}" if dupes else None


class StepsProbe(ProbeSpec):
    """Several actions in order sharing one trace (create → trigger → check), then teardown."""

    kind: Literal["steps"] = "steps"
    steps: list[Step] = Field(min_length=1, description="The actions, in order.")
    teardown_: list[Step] = Field(default_factory=list, alias="teardown", description="Always-run cleanup.")
    teardown_timeout: Duration = Field(30.0, description="Deadline for all teardown steps together.")

    _unique_names = cross_field_rule(lambda fields: _duplicate_names(fields.get("steps")), at="steps")

    async def fire(self, ctx: ProbeContext) -> FireResult:
        last_responder = max((i for i, s in enumerate(self.steps) if s.responds), default=-1)
        findings: list[Finding] = []
        final = FireResult()
        for i, step in enumerate(self.steps):
            # The last response is the run's response, judged by the runner against expect.response.
            judge = i != last_responder or step.expect is not None
            result, failed = await run_step(ctx, step, f"steps[{i}]", judge=judge)
            findings += failed
            if result.outputs:
                final.outputs[step.name or f"steps[{i}]"] = result.outputs
            if step.responds:
                final.response = result.response
            if any(f.severity == Verdict.FAIL for f in failed):
                # This step's response was judged here; handing it on would judge it twice.
                final.response = None
                ctx.log("steps stopped", step=step.label)
                break
        final.findings = findings
        return final

    async def teardown(self, ctx: ProbeContext) -> list[Finding]:
        if not self.teardown_:
            return []
        return await run_teardown(ctx, self.teardown_, self.teardown_timeout)
