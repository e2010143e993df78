"""Tracetest tests → tracecanary probes (``tracecanary import tracetest``).

What converts (Tracetest's ``api/tests.yaml``, ``api/triggers.yaml``, ``api/http.yaml``, ``api/kafka.yaml``,
``api/graphql.yaml``, ``api/config.yaml``, ``api/testsuites.yaml``):

- ``trigger.type: http`` → an ``http`` probe (method, url, headers, body; ``auth`` basic/bearer as
  ``auth``, apiKey as a header or query parameter; ``sslVerification: false`` → ``verify_tls: false``);
  ``graphql`` → an ``http`` POST of ``{query, variables, operationName}``; ``kafka`` → a ``kafka`` probe
  (brokerUrls, topic, messageKey, messageValue, headers); ``grpc`` → a ``grpc`` probe (protobufFile inline
  or read from next to the test and inlined as ``proto``, address, method, request as ``message``, metadata;
  ``auth`` bearer/apiKey/basic as metadata; a streaming or unknown method is listed). traceid and the
  browser/load-test triggers have no probe kind here: such a test is listed, not converted.
- ``specs: [{selector, name, assertions}]`` → ``expect.trace.specs`` unchanged (the judge reads the
  Tracetest dialect with its filters, ``assertions/selectors.py`` and ``filters.py``); an assertion it
  cannot read (``${…}`` expressions) is listed and left out. Specs on the synthetic ``Tracetest trigger``
  span become ``expect.response`` (``tracetest.response.status`` → ``status``, ``tracetest.response.body``
  → ``body``, ``tracetest.response.body | json_path 'P' OP V`` → ``json: {P: matcher}``, its duration →
  ``max_latency``); ``tracetest.selected_spans.count = 1`` and ``span.start_time > 0`` there always hold.
- ``outputs: [{name, selector, value: attr:KEY [| filter …]}]`` → ``expect.trace.outputs`` (``{{ outputs.NAME }}``).
- ``pollingProfile`` → the probe ``timeout`` (the profile's ``periodic.timeout``, when the profile is
  among the inputs); ``skipTraceCollection`` → no trace expectation.
- ``${env:X}`` / ``${var:X}`` → ``${X}`` (read from the environment when the suite loads).
- ``TestSuite`` / ``Transaction``: each step that is a file is converted in order; an output a later
  step reads as a variable is listed (each probe runs on its own here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tracecanary.assertions.expect import TraceOutput
from tracecanary.assertions.selectors import SelectorSyntaxError, parse_assertion, parse_selector
from tracecanary.assertions.units import InvalidDurationError, parse_duration_s
from tracecanary.daemon.cli.tracetest_docs import (
    LList,
    LMap,
    Omission,
    Resource,
    leftover_expression,
    line_of,
    read_resources,
    shown,
    variables,
)
from tracecanary.daemon.cli.tracetest_triggers import TriggerError, convert_trigger

TRIGGER_SPAN = re.compile(r'name\s*=\s*"Tracetest trigger"')
SUITE_TYPES = ("TestSuite", "Transaction")
_IGNORED_KEYS = {"id", "name", "description", "version", "createdAt", "summary", "trigger", "specs", "outputs",
                 "pollingProfile", "skipTraceCollection"}


@dataclass
class Conversion:
    """Probes converted so far, what was left out, and the environment variables they read."""

    source: str = "buffer"
    probes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(comment, probe) in input order."""
    omissions: list[Omission] = field(default_factory=list)
    env: set[str] = field(default_factory=set)
    used: set[str] = field(default_factory=set)
    """The variables the test being converted reads."""
    profiles: dict[str, float] = field(default_factory=dict)
    _ids: set[str] = field(default_factory=set)
    _done: set[tuple[Path, int]] = field(default_factory=set)

    def omit(self, path: Path, line: int, why: str) -> None:
        self.omissions.append(Omission(path, line, why))

    def text(self, value: str, path: Path, line: int, what: str) -> str | None:
        """A string with its variables rewritten; None (and an omission) for a leftover expression."""
        out, names = variables(value, expression=what == "assertion")
        self.env |= names
        self.used |= names
        if leftover_expression(out):
            self.omit(path, line, f"{what}: Tracetest expression in {value!r} has no equivalent")
            return None
        return out

    def unique_id(self, spec: LMap) -> str:
        raw = str(spec.get("name") or spec.get("id") or "tracetest-test")
        slug = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")[:90] or "tracetest-test"
        candidate, n = slug, 2
        while candidate in self._ids:
            candidate, n = f"{slug}-{n}", n + 1
        self._ids.add(candidate)
        return candidate


def convert_files(paths: list[Path], source: str = "buffer") -> Conversion:
    """Convert every Tracetest resource in ``paths`` (test suites pull in their step files)."""
    conv = Conversion(source=source)
    resources = [r for p in paths for r in read_resources(p)]  # unreadable input: raised before anything converts
    for r in resources:
        if r.type == "PollingProfile":
            _profile(conv, r)
    for r in resources:
        _resource(conv, r)
    return conv


def _profile(conv: Conversion, r: Resource) -> None:
    periodic = r.spec.get("periodic")
    timeout = periodic.get("timeout") if isinstance(periodic, LMap) else None
    try:
        conv.profiles[str(r.spec.get("id"))] = parse_duration_s(str(timeout)) if timeout else 60.0
    except InvalidDurationError:
        conv.omit(r.path, line_of(periodic, r.line), f"PollingProfile timeout {timeout!r} is not a duration")


def _resource(conv: Conversion, r: Resource) -> None:
    if r.type == "Test":
        _test(conv, r, set())
    elif r.type in SUITE_TYPES:
        _suite(conv, r)
    elif r.type == "PollingProfile":
        return
    elif r.type in ("VariableSet", "Environment"):
        names = ", ".join(str(v.get("key")) for v in r.spec.get("values") or () if isinstance(v, LMap))
        conv.omit(r.path, r.line, f"{r.type} is not a test: export its values as environment variables ({names})")
    else:
        conv.omit(r.path, r.line, f"{r.type} is not a test (tracecanary has no equivalent resource)")


def _suite(conv: Conversion, r: Resource) -> None:
    steps = r.spec.get("steps")
    if not isinstance(steps, LList):
        conv.omit(r.path, r.line, f"{r.type} without steps")
        return
    outputs: dict[str, str] = {}
    for i, step in enumerate(steps):
        line = steps.line_of(i)
        target = r.path.parent / str(step) if isinstance(step, str) else None
        if target is None or not target.is_file():
            conv.omit(r.path, line, f"step {step!r} is not a test file (a test id on a Tracetest server: "
                                    "export it with `tracetest export test` and pass its file)")
            continue
        for res in read_resources(target):
            if res.type == "Test":
                outputs.update(_test(conv, res, set(outputs), suite=f"{shown(r.path)}:{line}"))


def _test(conv: Conversion, r: Resource, earlier_outputs: set[str], suite: str | None = None) -> dict[str, str]:
    """Convert one test; returns its outputs (name → test name) for the steps after it."""
    key = (r.path.resolve(), r.line)
    spec = r.spec
    names = {str(o.get("name")): str(spec.get("name")) for o in spec.get("outputs") or () if isinstance(o, LMap)}
    if key in conv._done:
        return names  # already converted (given on the command line and as a suite step)
    conv._done.add(key)
    conv.used = set()
    for extra in sorted(set(spec) - _IGNORED_KEYS):
        conv.omit(r.path, spec.line_of(extra), f"test field {extra!r} is not converted")
    try:
        probe = convert_trigger(spec, r.path, conv)
    except TriggerError as e:
        conv.omit(r.path, e.line, f"test {spec.get('name')!r} not converted: {e}")
        return names
    probe = {"id": conv.unique_id(spec), **probe}
    _timeout(conv, r, probe)
    expect = _expectations(conv, r)
    if expect:
        probe["expect"] = expect
    for name in sorted(conv.used & earlier_outputs):
        conv.omit(r.path, spec.line, f"${{{name}}} is an output of an earlier step of {suite}: each probe runs on "
                                     "its own here, so it is read from the environment")
    comment = f"Tracetest test {spec.get('name')!r}" + (f" (id {spec.get('id')})" if spec.get("id") else "")
    comment += f" from {shown(r.path)}:{r.line}"
    desc = str(spec.get("description") or "").strip()
    conv.probes.append((comment + (f"\n{desc}" if desc else ""), probe))
    return names


def _timeout(conv: Conversion, r: Resource, probe: dict[str, Any]) -> None:
    profile = r.spec.get("pollingProfile")
    if profile is None:
        return
    if str(profile) in conv.profiles:
        probe["timeout"] = f"{conv.profiles[str(profile)]:g}s"
    else:
        conv.omit(r.path, r.spec.line_of("pollingProfile"),
                  f"pollingProfile {profile!r} is not among the inputs: the probe keeps the default timeout (60s)")


def _expectations(conv: Conversion, r: Resource) -> dict[str, Any]:
    spec = r.spec
    expect: dict[str, Any] = {}
    trace: dict[str, Any] = {}
    specs, raw_outputs = spec.get("specs") or LList(), spec.get("outputs") or LList()
    for key, value in (("specs", specs), ("outputs", raw_outputs)):
        if not isinstance(value, LList):
            conv.omit(r.path, spec.line_of(key), f"{key} is not a list: not converted")
    specs = specs if isinstance(specs, LList) else LList()
    raw_outputs = raw_outputs if isinstance(raw_outputs, LList) else LList()
    if spec.get("skipTraceCollection") is True:
        for key, value in (("specs", specs), ("outputs", raw_outputs)):
            if value:
                conv.omit(r.path, line_of(value, r.line), f"skipTraceCollection: the {key} are not converted")
        return {}
    response: dict[str, Any] = {}
    kept = []
    for i, item in enumerate(specs):
        converted = _spec(conv, r.path, specs.line_of(i), item, response)
        if converted is not None:
            kept.append(converted)
    outputs = [o for raw in raw_outputs if (o := _output(conv, r.path, line_of(raw, r.line), raw)) is not None]
    if kept:
        trace["specs"] = kept
    if outputs:
        trace["outputs"] = outputs
    if trace and conv.source != "buffer":
        trace = {"source": conv.source, **trace}
    if response:
        expect["response"] = response
    if trace:
        expect["trace"] = trace
    return expect


def _selector(item: LMap) -> str:
    raw = item.get("selector", "")
    return str(raw.get("query", "")) if isinstance(raw, LMap) else str(raw or "")


def _parses(kind: str, text: str) -> str | None:
    """Why the judge cannot read ``text`` (with ``${X}`` standing for a value), or None."""
    probe = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "x", text)
    try:
        parse_selector(probe) if kind == "selector" else parse_assertion(probe)
    except SelectorSyntaxError as e:
        return str(e)
    return None


def _spec(conv: Conversion, path: Path, line: int, item: Any, response: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(item, LMap):
        conv.omit(path, line, "spec is not a mapping")
        return None
    selector = conv.text(_selector(item), path, line, "selector")
    if selector is None:
        return None
    problem = _parses("selector", selector)
    if problem:
        conv.omit(path, line, f"spec {item.get('name')!r}: {problem}")
        return None
    asserts = item.get("assertions") or LList()
    if TRIGGER_SPAN.search(selector):
        for i, text in enumerate(asserts):
            where = asserts.line_of(i) if isinstance(asserts, LList) else line
            _response_assertion(conv, path, where, str(text), response)
        return None
    kept = []
    for i, text in enumerate(asserts):
        where = asserts.line_of(i) if isinstance(asserts, LList) else line
        rewritten = conv.text(str(text), path, where, "assertion")
        if rewritten is None:
            continue
        problem = _parses("assertion", rewritten)
        if problem:
            conv.omit(path, where, problem)
            continue
        kept.append(rewritten)
    if not kept:
        conv.omit(path, line, f"spec {item.get('name')!r}: no assertion left to convert")
        return None
    out: dict[str, Any] = {"selector": selector, "assertions": kept}
    return {"name": str(item["name"]), **out} if item.get("name") else out


_ALWAYS_TRUE = {("tracetest.selected_spans.count", "=", 1), ("tracetest.selected_spans.count", ">", 0),
                ("tracetest.selected_spans.count", ">=", 1), ("tracetest.span.start_time", ">", 0),
                ("tracetest.span.end_time", ">", 0)}
"""Trigger-span assertions that hold for every run here (the probe's request is the one trigger)."""
_MATCHER_OPS = {"contains": "contains", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}
_TRIGGER_HELP = ("only tracetest.response.status =, tracetest.response.body (= != contains not-contains, or "
                 "| json_path with any operator) and tracetest.span.duration < convert (to expect.response)")


def _matcher(op: str, value: Any) -> Any:
    """A Tracetest comparison as a response matcher (``"{}"``/``"[]"`` are the empty object and array)."""
    value = {"{}": {}, "[]": []}.get(value, value) if isinstance(value, str) else value
    if op == "=":
        return value if not isinstance(value, dict | list) else {"equals": value}
    if op == "!=":
        return {"not": {"equals": value}}
    if op == "not-contains":
        return {"not": {"contains": value}}
    return {_MATCHER_OPS[op]: value}


def _response_assertion(conv: Conversion, path: Path, line: int, text: str, response: dict[str, Any]) -> None:
    rewritten = conv.text(text, path, line, "assertion")
    if rewritten is None:
        return
    placeholders: dict[str, str] = {}

    def hold(m: re.Match[str]) -> str:
        placeholders[f"__var{len(placeholders)}__"] = m.group(0)
        return f"__var{len(placeholders) - 1}__"

    try:  # ${X} values stay as written (the suite reads them from the environment)
        a = parse_assertion(re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", hold, rewritten))
    except SelectorSyntaxError as e:
        conv.omit(path, line, f"trigger assertion {text!r}: {e}")
        return
    value = a.value
    for held, original in placeholders.items() if isinstance(value, str) else ():
        value = value.replace(held, original)
    if isinstance(value, tuple):  # a duration literal
        value = text.rsplit(None, 1)[-1]
    filters = [(f.name, f.arg) for f in a.filters]
    if (a.key, a.op, value) in _ALWAYS_TRUE and not filters:
        return
    if a.key == "tracetest.response.status" and a.op == "=" and isinstance(value, int) and not filters:
        response["status"] = value
    elif a.key == "tracetest.response.body" and not filters and a.op in ("=", "!=", "contains", "not-contains"):
        response["body"] = _matcher(a.op, value) if a.op != "=" else str(value)
    elif a.key == "tracetest.response.body" and len(filters) == 1 and filters[0][0] == "json_path":
        json_path, matcher = str(filters[0][1]), _matcher(a.op, value)
        if json_path in response.setdefault("json", {}):
            conv.omit(path, line, f"trigger assertion {text!r}: a second assertion on {json_path} does not convert")
        else:
            response["json"][json_path] = matcher
    elif a.key == "tracetest.span.duration" and a.op in ("<", "<=") and not filters:
        response["max_latency"] = text.rsplit(None, 1)[-1].strip("\"'")
    else:
        conv.omit(path, line, f"trigger assertion {text!r}: {_TRIGGER_HELP}")


def _output_value(value: str) -> str | None:
    """Why an output's ``value`` does not convert (None: it does — attr:KEY, with filters or not)."""
    try:
        TraceOutput(name="x", value=value)
    except ValidationError:
        return "is not attr:KEY [| filter …]"
    return None


def _output(conv: Conversion, path: Path, line: int, raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, LMap) or not raw.get("name"):
        conv.omit(path, line, "output without a name")
        return None
    name, value = str(raw["name"]), str(raw.get("value") or "").strip()
    selector = conv.text(_selector(raw), path, line, f"output {name}")
    if selector is None:
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        conv.omit(path, line, f"output {name!r}: names are letters, digits and _ here")
    elif (problem := _output_value(value)) is not None:
        conv.omit(path, line, f"output {name}: value {value!r} {problem} (filters and expressions "
                              "do not convert)")
    elif TRIGGER_SPAN.search(selector):
        conv.omit(path, line, f"output {name}: the Tracetest trigger span does not exist here (capture from the "
                              "response with a steps probe instead)")
    elif (problem := _parses("selector", selector)) is not None:
        conv.omit(path, line, f"output {name}: {problem}")
    else:
        return {"name": name, "selector": selector, "value": value}
    return None
