"""Checks across a whole config, run on the raw data so a probe that failed its own validation is still
checked (one pass reports every error): duplicate ids, ``within`` longer than the timeout, unknown
alert policies and channels, GitHub webhook settings, and every ``{{ … }}`` template compiled with the
sandbox the runs render it with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2 import meta
from pydantic import TypeAdapter, ValidationError

from tracecanary.assertions.units import parse_duration_s
from tracecanary.daemon.alerts.policy import ChannelConfig
from tracecanary.daemon.config.yaml_doc import Doc, Loc, line_of, render_loc
from tracecanary.integrations import Integrations
from tracecanary.probes.templating import Templates

if TYPE_CHECKING:
    from tracecanary.probes.base import ProbeSpec

TEMPLATE_VARIABLES = frozenset({"run_id", "probe_id", "trace_id", "span_id", "traceparent", "attempt", "steps", "outputs", "now"})
"""What a probe's templates may name (``ProbeContext.template_vars``; a test keeps the two equal)."""
UNTEMPLATED = frozenset({"description", "tags"})
"""Probe fields never rendered: text there may hold ``{{`` as it is."""
DEFAULT_TIMEOUT_S = 60.0


@dataclass
class RawProbe:
    """One entry of a file's ``probes:`` list, as written."""

    doc: Doc
    index: int
    data: Any

    @property
    def loc(self) -> Loc:
        return ("probes", self.index)

    def where(self, *loc: str | int) -> str:
        """``file:line path`` of a location inside this probe."""
        full = (*self.loc, *loc)
        return f"{self.doc.path}:{line_of(self.doc, full)} {render_loc(full, self.doc.data)}"


def cross_checks(loaded: list[tuple[RawProbe, ProbeSpec | None]], sections: dict[str, tuple[Doc, Any]]) -> list[str]:
    """Errors that need more than one value: ids across files, ``within`` vs timeout, policy names."""
    errors: list[str] = []
    seen: dict[str, RawProbe] = {}
    policies = _policy_names(sections)
    for raw, spec in loaded:
        if not isinstance(raw.data, dict):
            continue
        pid = raw.data.get("id")
        if isinstance(pid, str):
            if pid in seen:
                first = seen[pid]
                errors.append(f"{raw.where('id')}: duplicate probe id {pid!r} (first defined at "
                              f"{first.doc.path}:{line_of(first.doc, (*first.loc, 'id'))})")
            else:
                seen[pid] = raw
        errors.extend(_within_errors(raw, spec))
        alert = raw.data.get("alert")
        policy = alert.get("policy", "default") if isinstance(alert, dict) else None
        if isinstance(policy, str) and policy not in policies:
            known = ", ".join(sorted(policies)) or "none defined"
            errors.append(f"{raw.where('alert', 'policy')}: unknown alert policy {policy!r} (known: {known})")
    errors.extend(_channel_reference_errors(sections))
    errors.extend(_github_errors(sections))
    errors.extend(_prometheus_errors(loaded, sections))
    return errors


def _prometheus_errors(loaded: list[tuple[RawProbe, ProbeSpec | None]],
                       sections: dict[str, tuple[Doc, Any]]) -> Iterator[str]:
    """A ``query:`` metrics check needs ``integrations.prometheus.url`` to send it to."""
    integrations = sections["integrations"][1] if "integrations" in sections else None
    prometheus = integrations.get("prometheus") if isinstance(integrations, dict) else None
    if isinstance(prometheus, dict) and prometheus.get("url"):
        return
    for raw, _ in loaded:
        expect = raw.data.get("expect") if isinstance(raw.data, dict) else None
        checks = expect.get("metrics") if isinstance(expect, dict) else None
        for j, check in enumerate(checks if isinstance(checks, list) else []):
            if isinstance(check, dict) and check.get("query") is not None:
                yield (f"{raw.where('expect', 'metrics', j, 'query')}: a query needs integrations.prometheus.url "
                       "(the Prometheus server to send it to)")


def _timeout_s(raw: RawProbe, spec: ProbeSpec | None) -> float | None:
    if spec is not None:
        return spec.timeout
    try:
        return parse_duration_s(raw.data.get("timeout", DEFAULT_TIMEOUT_S))
    except ValueError:
        return None  # reported by the model


def _within_errors(raw: RawProbe, spec: ProbeSpec | None) -> Iterator[str]:
    timeout_s = _timeout_s(raw, spec)
    if timeout_s is None:
        return
    for wloc, raw_within in _walk_within(raw.data.get("expect"), ("expect",)):
        try:
            within_s = parse_duration_s(raw_within)
        except ValueError:
            continue  # reported by the model
        if within_s > timeout_s:
            yield (f"{raw.where(*wloc)}: within {raw_within} is longer than the probe's timeout "
                   f"{timeout_s:g}s")


def _walk_within(value: Any, loc: Loc) -> list[tuple[Loc, Any]]:
    found: list[tuple[Loc, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "within":
                found.append(((*loc, k), v))
            found.extend(_walk_within(v, (*loc, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(_walk_within(v, (*loc, i)))
    return found


def _alerts(sections: dict[str, tuple[Doc, Any]]) -> tuple[Doc, dict[str, Any]] | None:
    if "alerts" not in sections:
        return None
    doc, alerts = sections["alerts"]
    return (doc, alerts) if isinstance(alerts, dict) else None


def _policy_names(sections: dict[str, tuple[Doc, Any]]) -> set[str]:
    """Policies as written (even when the alerts section has errors of its own); none: ``default``."""
    found = _alerts(sections)
    policies = found[1].get("policies") if found else None
    names = {k for k in policies if isinstance(k, str)} if isinstance(policies, dict) else set()
    return names or {"default"}


def _channel_reference_errors(sections: dict[str, tuple[Doc, Any]]) -> Iterator[str]:
    found = _alerts(sections)
    if found is None:
        return
    doc, alerts = found
    raw_channels, raw_policies = alerts.get("channels"), alerts.get("policies")
    channels: dict[str, Any] = raw_channels if isinstance(raw_channels, dict) else {}
    policies: dict[str, Any] = raw_policies if isinstance(raw_policies, dict) else {}
    known = ", ".join(sorted(channels)) or "none defined"
    for name, policy in policies.items():
        listed = policy.get("channels") if isinstance(policy, dict) else None
        for i, ch in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(ch, str) and ch not in channels:
                loc = ("alerts", "policies", name, "channels", i)
                where = f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}"
                yield f'{where}: unknown channel "{ch}" (known: {known})'


def _github_errors(sections: dict[str, tuple[Doc, Any]]) -> Iterator[str]:
    if "integrations" not in sections:
        return
    doc, integrations = sections["integrations"]
    github = integrations.get("github") if isinstance(integrations, dict) else None
    if isinstance(github, dict) and github.get("allow_unsigned_webhooks") is True and github.get("webhook_secret"):
        loc = ("integrations", "github", "allow_unsigned_webhooks")
        yield (f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}: true has no effect with a "
               "webhook_secret (deliveries are then always verified); remove one of the two")


# --- channel credentials -------------------------------------------------------------------------
_CHANNEL: TypeAdapter[ChannelConfig] = TypeAdapter(ChannelConfig)


def credential_errors(sections: dict[str, tuple[Doc, Any]], integrations: Integrations | None) -> Iterator[str]:
    """Alert channels lacking credentials both in their own settings and in ``integrations:``
    (``integrations`` as validated; None when that section failed).

    Each channel that is valid on its own is checked, against the integrations as far as they are
    valid, so an error elsewhere in ``alerts:`` or ``integrations:`` hides none of these.
    """
    found = _alerts(sections)
    channels = found[1].get("channels") if found else None
    if found is None or not isinstance(channels, dict):
        return
    doc = found[0]
    if integrations is None:
        integrations = _valid_part(sections["integrations"][1]) if "integrations" in sections else Integrations()
    if integrations is None:
        return
    for name, raw in channels.items():
        try:
            channel = _CHANNEL.validate_python(raw)
        except ValidationError:
            continue  # reported with the alerts section
        for problem in channel.problems(integrations):
            key, _, text = problem.partition(": ")
            loc = ("alerts", "channels", name, key)
            yield f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}: {text}"


def _valid_part(raw: Any) -> Integrations | None:
    """``integrations:`` without the keys that failed (each reported already), or None."""
    if not isinstance(raw, dict):
        return None
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for _ in range(3):  # a key dropped may reveal no new error; each round drops at least one
        try:
            return Integrations.model_validate(data)
        except ValidationError as e:
            for err in e.errors():
                section, *rest = err["loc"] or ("",)
                inner = data.get(section)
                if rest and isinstance(inner, dict):
                    inner.pop(rest[0], None)
                else:
                    data.pop(section, None)
    return None


# --- templates -----------------------------------------------------------------------------------
_ENV = Templates().env


def template_errors(raw: RawProbe) -> Iterator[str]:
    """Every ``{{ … }}``/``{% … %}`` string of a probe, compiled now: a syntax error or an unknown
    variable is a config error, not a run that errors at 3 a.m."""
    if not isinstance(raw.data, dict):
        return
    known = TEMPLATE_VARIABLES | set(_ENV.globals)
    for loc, text in _templated_strings(raw.data, ()):
        try:
            ast = _ENV.parse(text)
        except jinja2.TemplateSyntaxError as e:
            yield f"{raw.where(*loc)}: invalid template {text!r}: {e.message}"
            continue
        unknown = sorted(meta.find_undeclared_variables(ast) - known)
        if unknown:
            yield (f"{raw.where(*loc)}: template {text!r} names unknown variable {unknown[0]!r} "
                   f"(known: {', '.join(sorted(TEMPLATE_VARIABLES))})")


def _templated_strings(value: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            yield loc, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if not (loc == () and k in UNTEMPLATED):
                yield from _templated_strings(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _templated_strings(v, (*loc, i))
