"""HTTP response expectations: status, JSON fields present, JSON values, headers, body, latency."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any

from jsonpath_ng.ext.parser import parse as jsonpath_parse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from tracecanary.assertions.match import check, coerce_matcher
from tracecanary.assertions.units import Duration, format_duration
from tracecanary.assertions.verdict import Finding, Verdict


def _valid_matcher(value: Any) -> Any:
    """A matcher whose regex does not compile is a config error, not a failing run."""
    if value is not None:
        try:
            coerce_matcher(value)
        except ValidationError as e:
            raise ValueError("; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())) from e
    return value


MatcherSpec = Annotated[Any, AfterValidator(_valid_matcher)]
"""A literal (equals) or an operator map, checked at load."""


class DegradedResponse(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_latency: Duration | None = Field(None, description="Over this the run is degraded (still a pass).")


class ResponseExpectation(BaseModel):
    """What the trigger's response must look like."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    status: int | list[int] | str | None = Field(
        None, description="200, [200, 202], or a range \"200-299\"; default: any 2xx."
    )
    json_fields: list[str] = Field(default_factory=list, description="JSON paths that must be present.")
    json_: dict[str, MatcherSpec] = Field(default_factory=dict, alias="json", description="JSONPath → matcher.")
    headers: dict[str, MatcherSpec] = Field(default_factory=dict, description="Header name → matcher.")
    body: MatcherSpec = Field(None, description="Matcher for the body text (e.g. {matches: regex}).")
    max_latency: Duration | None = Field(None, description="Hard latency bound: over it the run fails.")
    degraded: DegradedResponse | None = None

    @field_validator("json_fields")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        return [validate_json_path(p) for p in value]

    @field_validator("json_")
    @classmethod
    def _json_paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            validate_json_path(path)
        return value

    @field_validator("status")
    @classmethod
    def _status(cls, value: int | list[int] | str | None) -> int | list[int] | str | None:
        return validate_status(value)

    def status_holds(self, status: int) -> bool:
        """Whether the response's ``status`` satisfies ``status`` (a kind with other codes, gRPC's, overrides
        this, ``describe_status`` and ``show_status``)."""
        return status_ok(self.status, status)

    def describe_status(self) -> str:
        """The expected status in a finding."""
        return _describe_status(self.status)

    def show_status(self, status: int) -> str:
        """An observed status in a finding."""
        return str(status)


# --- judgement ---------------------------------------------------------------------------------
@lru_cache(maxsize=1024)
def _compiled_path(path: str) -> Any:
    text = path.strip()
    if not text.startswith("$"):
        text = "$." + text if not text.startswith("[") else "$" + text
    try:
        return jsonpath_parse(text)
    except Exception as e:  # jsonpath-ng raises bare Exception subclasses from its lexer/parser
        raise ValueError(f"invalid JSONPath {path!r}: {e}") from e


def select_json(path: str, document: Any) -> list[Any]:
    """Values at ``path`` (JSONPath; ``a.b[0]`` is read as ``$.a.b[0]``) in ``document``."""
    return [m.value for m in _compiled_path(path).find(document)]


def validate_json_path(path: str) -> str:
    """Raise ValueError for an unparsable JSONPath (config validation uses the same parser)."""
    _compiled_path(path)
    return path


_STATUS_HELP = 'expected a status 100-599: 200, [200, 202], "200-299" or "2xx"'


def validate_status(spec: int | list[int] | str | None) -> int | list[int] | str | None:
    """Raise ValueError unless ``spec`` names real HTTP statuses (``9xx`` and ``42`` are mistakes)."""
    if spec is None:
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"invalid status {spec!r}: {_STATUS_HELP}")
    codes: list[int] = []
    if isinstance(spec, int):
        codes = [spec]
    elif isinstance(spec, list):
        codes = list(spec)
    else:
        text = spec.strip().lower()
        m = re.fullmatch(r"([1-5])xx|(\d{3})-(\d{3})|(\d{3})", text)
        if m is None:
            raise ValueError(f"invalid status {spec!r}: {_STATUS_HELP}")
        if m.group(2):
            lo, hi = int(m.group(2)), int(m.group(3))
            if lo > hi:
                raise ValueError(f"invalid status {spec!r}: the range is empty ({lo} > {hi})")
            codes = [lo, hi]
        elif m.group(4):
            codes = [int(m.group(4))]
    for code in codes:
        if not 100 <= code <= 599:
            raise ValueError(f"invalid status {spec!r}: {_STATUS_HELP}")
    return spec


def status_ok(spec: int | list[int] | str | None, status: int) -> bool:
    """Whether ``status`` satisfies ``200``, ``[200, 202]``, ``"200-299"``, ``"2xx"`` (None: any 2xx)."""
    if spec is None:
        return 200 <= status < 300
    if isinstance(spec, int):
        return status == spec
    if isinstance(spec, list):
        return status in spec
    text = spec.strip().lower()
    if len(text) == 3 and text.endswith("xx") and text[0].isdigit():
        return status // 100 == int(text[0])
    if "-" in text:
        lo, _, hi = text.partition("-")
        return int(lo) <= status <= int(hi)
    return status == int(text)


BODY_EXCERPT_BYTES = 200
"""How much of a response body a status finding quotes."""


def body_excerpt(body: str, limit_bytes: int = BODY_EXCERPT_BYTES) -> str:
    """The first ``limit_bytes`` bytes of ``body`` (UTF-8), never cutting a character in half; ``…`` when cut."""
    raw = body.encode("utf-8", errors="replace")
    if len(raw) <= limit_bytes:
        return body
    return raw[:limit_bytes].decode("utf-8", errors="ignore") + "…"


def _describe_status(spec: int | list[int] | str | None) -> str:
    return "any 2xx" if spec is None else str(spec)


def _finding(type_: str, path: str, message: str, expected: Any, observed: Any, **kw: Any) -> Finding:
    return Finding(type=type_, path=path, message=message, expected=expected, observed=observed, **kw)


def _judge_json(exp: ResponseExpectation, doc: Any, has_json: bool) -> list[Finding]:
    out: list[Finding] = []
    for path in exp.json_fields:
        if not has_json or not select_json(path, doc):
            out.append(_finding(
                "response.missing_data", f"expect.response.json_fields[{path}]",
                f"response JSON lacks {path!r}" if has_json else f"response is not JSON; {path!r} missing",
                path, None if not has_json else sorted(doc) if isinstance(doc, dict) else type(doc).__name__,
            ))
    for path, matcher in exp.json_.items():
        values = select_json(path, doc) if has_json else []
        observed = values[0] if len(values) == 1 else values or None  # a wildcard's matches: the list of them
        why = check(matcher, observed, present=bool(values))
        if why is not None:
            out.append(_finding(
                "response.json", f"expect.response.json[{path}]", f"response JSON {path}: {why}",
                matcher, observed,
            ))
    return out


def _judge_headers_body(exp: ResponseExpectation, response: Mapping[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    headers = {str(k).lower(): v for k, v in (response.get("headers") or {}).items()}
    for name, matcher in exp.headers.items():
        present = name.lower() in headers
        observed = headers.get(name.lower())
        why = check(matcher, observed, present=present)
        if why is not None:
            out.append(_finding(
                "response.header", f"expect.response.headers[{name}]", f"response header {name}: {why}",
                matcher, observed,
            ))
    if exp.body is not None:
        body = response.get("body") or ""
        why = check(exp.body, body)
        if why is not None:
            out.append(_finding("response.body", "expect.response.body", f"response body: {why}", exp.body, body_excerpt(body)))
    return out


def _judge_latency(exp: ResponseExpectation, latency_s: float) -> list[Finding]:
    if exp.max_latency is not None and latency_s > exp.max_latency:
        return [_finding(
            "response.latency", "expect.response.max_latency",
            f"response took {format_duration(latency_s)}, limit {format_duration(exp.max_latency)}",
            exp.max_latency, latency_s,
        )]
    soft = exp.degraded.max_latency if exp.degraded is not None else None
    if soft is not None and latency_s > soft:
        return [_finding(
            "response.latency", "expect.response.degraded.max_latency",
            f"response took {format_duration(latency_s)}, degraded over {format_duration(soft)}",
            soft, latency_s, severity=Verdict.DEGRADED,
        )]
    return []


def judge_response(exp: ResponseExpectation | None, response: Mapping[str, Any] | None) -> list[Finding]:
    """Findings for ``response`` (``ResponseSummary.to_dict()``) against ``exp`` (None: any 2xx)."""
    if response is None or response.get("status") is None:
        if exp is None:
            return []
        return [_finding("response.status", "expect.response", "no response was received",
                         exp.describe_status(), None)]
    exp = exp or ResponseExpectation()
    status = int(response["status"])
    out: list[Finding] = []
    if not exp.status_holds(status):
        body = body_excerpt(str(response.get("body") or ""))
        message = f"status {exp.show_status(status)}, expected {exp.describe_status()}"
        out.append(_finding(
            "response.status", "expect.response.status",
            f"{message}; body: {json.dumps(body, ensure_ascii=False)}" if body else f"{message}; empty body",
            exp.describe_status(), status, details={"body": body},
        ))
    doc = response.get("json")
    out += _judge_json(exp, doc, doc is not None)
    out += _judge_headers_body(exp, response)
    out += _judge_latency(exp, float(response.get("latency_s") or 0.0))
    return out
