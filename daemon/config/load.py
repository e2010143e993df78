"""Load YAML suites and daemon settings into typed models; every error names file:line and path.

``load_config(path)`` takes a file or a directory (all ``*.yaml``/``*.yml`` merged, sorted by name)
and either returns a ``Config`` or raises ``ConfigError`` listing every problem at once:

    config/demo.yaml:14 probes[orders-webhook].expect.trace.tree[0].span: …

``${VAR}`` / ``${VAR:-default}`` expand from ``environ`` (default ``os.environ``) and ``${file:/path}``
reads a secret file, at load; ``{{ … }}`` templates are left for the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from tracecanary.assertions.units import Duration, parse_duration_s
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.config.links import LinkSettings
from tracecanary.daemon.config.settings import DaemonSettings, ExtraSections
from tracecanary.daemon.config.yaml_doc import (
    Doc,
    Loc,
    compose,
    data_loc,
    expand_env,
    line_of,
    message,
    pydantic_errors,
    render_loc,
)
from tracecanary.errors import ConfigError
from tracecanary.integrations import Integrations
from tracecanary.model import StrictModel
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.registry import PROBES


# --- the model -----------------------------------------------------------------------------------
class Config(BaseModel):
    """A whole configuration: probes plus daemon settings, integrations, links and alerts."""

    model_config = {"arbitrary_types_allowed": True}

    probes: list[ProbeSpec] = Field(default_factory=list)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    integrations: Integrations = Field(default_factory=Integrations)
    extra: ExtraSections = Field(default_factory=ExtraSections)
    sources: list[str] = Field(default_factory=list)

    def probe(self, probe_id: str) -> ProbeSpec:
        for p in self.probes:
            if p.id == probe_id:
                return p
        raise KeyError(probe_id)

    def secrets(self) -> list[str]:
        """The credential values set in this config (masked wherever they would reach Sentry)."""
        i, d = self.integrations, self.daemon
        return [v for v in (i.slack.user_token, i.slack.bot_token, i.slack.app_token, i.github.token,
                            i.sentry.token, d.api_token, d.otlp.token) if v]


class _SuiteFile(StrictModel):
    """The top level of a suite file (probes are validated one by one against their kind)."""

    probes: list[Any] = Field(default_factory=list)
    daemon: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    links: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    demo: dict[str, Any] | None = None


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not found:
            raise ConfigError([f"{path}: no *.yaml files in directory"])
        return found
    if not path.exists():
        raise ConfigError([f"{path}: no such file or directory"])
    return [path]


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Load a file or directory; raise ConfigError with every problem (file:line path: message).

    ``${VAR}`` references resolve from ``environ`` (default ``os.environ``).
    """
    errors: list[str] = []
    docs = _read(Path(path), os.environ if environ is None else environ, errors)
    sections: dict[str, tuple[Doc, Any]] = {}
    probes: list[tuple[Doc, int, ProbeSpec]] = []
    for doc in docs:
        if not isinstance(doc.data, dict):
            errors.append(f"{doc.path}:1: expected a mapping with probes:, daemon:, integrations:, …")
            continue
        try:
            _SuiteFile.model_validate(doc.data)
        except ValidationError as e:
            errors.extend(pydantic_errors(e, doc, ()))
            continue
        for key in ("daemon", "integrations", "links", "alerts", "demo"):
            if doc.data.get(key) is not None:
                if key in sections:
                    errors.append(f"{doc.path}:{line_of(doc, (key,))} {key}: also set in {sections[key][0].path}; "
                                  "set each section in one file")
                else:
                    sections[key] = (doc, doc.data[key])
        for i, raw in enumerate(doc.data.get("probes") or []):
            spec = _load_probe(doc, i, raw, errors)
            if spec is not None:
                probes.append((doc, i, spec))
    cfg_kwargs: dict[str, Any] = {}
    for key, model in (("daemon", DaemonSettings), ("integrations", Integrations)):
        if key in sections:
            doc, raw = sections[key]
            try:
                cfg_kwargs[key] = model.model_validate(raw)
            except ValidationError as e:
                errors.extend(pydantic_errors(e, doc, (key,)))
    extra = _extra_sections(sections, errors)
    integrations = cfg_kwargs.get("integrations", Integrations())
    errors.extend(_cross_checks(probes, extra, sections, integrations if "integrations" not in sections
                                or "integrations" in cfg_kwargs else None))
    if errors:
        raise ConfigError(sorted(errors, key=_error_order))
    return Config(
        probes=[p for _, _, p in probes], extra=extra, sources=[d.path for d in docs], **cfg_kwargs
    )


def _read(path: Path, environ: Mapping[str, str], errors: list[str]) -> list[Doc]:
    docs: list[Doc] = []
    for f in _files(path):
        try:
            text = f.read_text()
        except OSError as e:
            errors.append(f"{f}: cannot read: {e.strerror}")
            continue
        doc = compose(str(f), text, errors, environ)
        if doc is not None:
            docs.append(doc)
    return docs


def _extra_sections(sections: dict[str, tuple[Doc, Any]], errors: list[str]) -> ExtraSections:
    """``links:``, ``alerts:`` and ``demo:`` validated together (alerts refer to each other)."""
    extra_raw = {k: sections[k][1] for k in ("links", "alerts", "demo") if k in sections}
    if not extra_raw:
        return ExtraSections()
    try:
        return ExtraSections.model_validate(extra_raw)
    except ValidationError as e:
        for err in e.errors():
            top = str(err["loc"][0])
            doc = sections[top][0]
            loc = (top, *data_loc(sections[top][1], err["loc"][1:]))
            errors.append(f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}: {message(err)}")
        return ExtraSections()


def _error_order(line: str) -> tuple[str, int]:
    m = re.match(r"^(.*?):(\d+)[ :]", line)
    return (m.group(1), int(m.group(2))) if m else (line, 0)


def _load_probe(doc: Doc, i: int, raw: Any, errors: list[str]) -> ProbeSpec | None:
    loc: Loc = ("probes", i)
    where = f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}"
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping")
        return None
    kind = raw.get("kind")
    if kind not in PROBES:
        kloc = (*loc, "kind")
        known = ", ".join(sorted(PROBES))
        what = f"unknown probe kind {kind!r}" if kind is not None else "kind is required"
        errors.append(f"{doc.path}:{line_of(doc, kloc)} {render_loc(kloc, doc.data)}: {what} (known: {known})")
        return None
    try:
        return PROBES[kind].model_validate(raw)
    except ValidationError as e:
        errors.extend(pydantic_errors(e, doc, loc))
        return None


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


def _cross_checks(
    probes: list[tuple[Doc, int, ProbeSpec]], extra: ExtraSections, sections: dict[str, tuple[Doc, Any]],
    integrations: Integrations | None,
) -> list[str]:
    """Errors across sections; channel credentials only when ``integrations`` validated (else unknown)."""
    errors: list[str] = []
    seen: dict[str, tuple[Doc, int]] = {}
    for doc, i, spec in probes:
        loc: Loc = ("probes", i)
        if spec.id in seen:
            first_doc, first_i = seen[spec.id]
            errors.append(
                f"{doc.path}:{line_of(doc, (*loc, 'id'))} {render_loc((*loc, 'id'), doc.data)}: duplicate probe id "
                f"{spec.id!r} (first defined at {first_doc.path}:{line_of(first_doc, ('probes', first_i, 'id'))})"
            )
        else:
            seen[spec.id] = (doc, i)
        # A probe with neither every nor cron is allowed: it runs only on demand (check, the API).
        for wloc, raw_within in _walk_within(doc.data["probes"][i].get("expect"), (*loc, "expect")):
            try:
                within_s = parse_duration_s(raw_within)
            except ValueError:
                continue  # already reported by the model
            if within_s > spec.timeout:
                errors.append(
                    f"{doc.path}:{line_of(doc, wloc)} {render_loc(wloc, doc.data)}: within {raw_within} is longer "
                    f"than the probe's timeout {_fmt_s(spec.timeout)}"
                )
        if spec.alert is not None and spec.alert.policy not in extra.policy_names():
            aloc = (*loc, "alert", "policy")
            known = ", ".join(sorted(extra.policy_names())) or "none defined"
            errors.append(
                f"{doc.path}:{line_of(doc, aloc)} {render_loc(aloc, doc.data)}: unknown alert policy "
                f"{spec.alert.policy!r} (known: {known})"
            )
    if "alerts" in sections:
        doc, _ = sections["alerts"]
        for loc, message in extra.reference_errors(integrations):
            full = ("alerts", *loc)
            errors.append(f"{doc.path}:{line_of(doc, full)} {render_loc(full, doc.data)}: {message}")
    return errors


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g}s"


def schema() -> dict[str, Any]:
    """The JSON Schema of a suite file, generated from the models (written to config/schema.json)."""
    from typing import Annotated, Union

    from pydantic import TypeAdapter

    probe_union = Annotated[Union[tuple(PROBES.values())], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007

    class SuiteFileSchema(StrictModel):
        """A tracecanary suite file: probes and (in any one file of a directory) daemon settings."""

        probes: list[probe_union] = Field(default_factory=list)  # type: ignore[valid-type]
        daemon: DaemonSettings | None = None
        integrations: Integrations | None = None
        links: LinkSettings | None = None
        alerts: AlertsSettings | None = None
        demo: dict[str, Any] | None = None

    doc = TypeAdapter(SuiteFileSchema).json_schema(mode="validation")
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "tracecanary suite"
    return doc


__all__ = ["Config", "ConfigError", "Duration", "expand_env", "load_config", "schema"]
