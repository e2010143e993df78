"""Load YAML suites and daemon settings into typed models; every error names file:line and path.

``load_config(path)`` takes a file or a directory (all ``*.yaml``/``*.yml`` merged, sorted by name)
and either returns a ``Config`` or raises ``ConfigError`` listing every problem at once:

    config/demo.yaml:14 probes[orders-webhook].expect.trace.tree[0].span: …

``${VAR}`` / ``${VAR:-default}`` expand from the environment and ``${file:/path}`` reads a secret
file, at load; ``{{ … }}`` templates are left for the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from tracecanary.assertions.units import Duration, parse_duration_s
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.config.links import LinkSettings
from tracecanary.daemon.config.settings import DaemonSettings, ExtraSections
from tracecanary.errors import ConfigError
from tracecanary.integrations import Integrations
from tracecanary.model import StrictModel
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.registry import PROBES

Loc = tuple[str | int, ...]
_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_TOP_KEYS = ("probes", "daemon", "integrations", "links", "alerts", "demo")


# --- YAML with line numbers --------------------------------------------------------------------
@dataclass
class _Doc:
    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)


class _Loader(yaml.SafeLoader):
    pass


def _compose(path: str, text: str, errors: list[str]) -> _Doc | None:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        errors.append(f"{path}{line}: invalid YAML: {problem}")
        return None
    doc = _Doc(path=path, data=None)
    if node is None:
        doc.data = {}
        return doc
    env_errors: list[tuple[Loc, str]] = []
    doc.data = _construct(node, (), doc, env_errors)
    errors.extend(f"{path}:{_line(doc, loc)} {_render_loc(loc, doc.data)}: {msg}" for loc, msg in env_errors)
    return doc


def _construct(node: yaml.Node, loc: Loc, doc: _Doc, errors: list[tuple[Loc, str]]) -> Any:
    doc.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _Loader.construct_object(_Loader(""), key_node, deep=True) if not isinstance(
                key_node, yaml.ScalarNode) else key_node.value
            child = (*loc, key)
            if key in out:
                errors.append((child, f"duplicate key {key!r}"))
            doc.lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, doc, errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*loc, i), doc, errors) for i, v in enumerate(node.value)]
    value = _Loader("").construct_object(node)  # type: ignore[arg-type]
    if isinstance(value, str) and "${" in value:
        try:
            value = expand_env(value)
        except ValueError as e:
            errors.append((loc, str(e)))
    return value


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``${file:/path}``; ``$${`` escapes a literal ``${``."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("file:"):
            p = Path(expr[5:])
            try:
                return p.read_text().strip()
            except OSError as e:
                raise ValueError(f"cannot read secret file {str(p)!r}: {e.strerror}") from e
        name, sep, default = expr.partition(":-")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"invalid variable reference ${{{expr}}}")
        if name in env:
            return env[name]
        if sep:
            return default
        raise ValueError(f"environment variable {name} is not set (use ${{{name}:-default}} for a default)")

    parts = text.split("$${")
    return "${".join(_ENV_RE.sub(sub, p) for p in parts)


# --- paths ---------------------------------------------------------------------------------------
def _render_loc(loc: Loc, data: Any) -> str:
    """``('probes', 0, 'expect', 'trace', 'tree', 0, 'span')`` → ``probes[orders-webhook].expect…``."""
    out = ""
    cursor: Any = data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            label: str | int = part
            if i == 1 and loc[0] == "probes" and isinstance(cursor, list) and part < len(cursor):
                item = cursor[part]
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    label = item["id"]
            out += f"[{label}]"
        else:
            out += f".{part}" if out else str(part)
        if isinstance(cursor, dict):
            cursor = cursor.get(part)
        elif isinstance(cursor, list) and isinstance(part, int) and part < len(cursor):
            cursor = cursor[part]
        else:
            cursor = None
    return out


def _data_loc(data: Any, loc: tuple[Any, ...]) -> Loc:
    """Keep the parts of a pydantic error location that exist in the data (drop union tags)."""
    out: list[str | int] = []
    cursor = data
    for part in loc:
        if isinstance(cursor, dict) and part in cursor:
            out.append(part)
            cursor = cursor[part]
        elif isinstance(cursor, list) and isinstance(part, int) and part < len(cursor):
            out.append(part)
            cursor = cursor[part]
        elif isinstance(cursor, dict) and isinstance(part, str) and part.rstrip("_") in cursor:
            out.append(part.rstrip("_"))
            cursor = cursor[part.rstrip("_")]
        elif isinstance(cursor, dict) and isinstance(part, str) and not part.startswith(("function", "union")):
            out.append(part)  # a missing field: name it, point at its parent's line
            cursor = None
        else:
            continue
    return tuple(out)


def _line(doc: _Doc, loc: Loc) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in doc.lines:
            return doc.lines[loc[:n]]
    return 1


def _message(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return f"unknown key {err['loc'][-1]!r}"
    if kind == "missing":
        return "required field missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, "):]
    return str(msg)


def _pydantic_errors(e: ValidationError, doc: _Doc, prefix: Loc, data: Any) -> list[str]:
    out = []
    for err in e.errors():
        loc = (*prefix, *_data_loc(_get(doc.data, prefix), err["loc"]))
        out.append(f"{doc.path}:{_line(doc, loc)} {_render_loc(loc, doc.data)}: {_message(err)}")
    return out


def _get(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


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


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load a file or directory; raise ConfigError with every problem (file:line path: message)."""
    errors: list[str] = []
    docs: list[_Doc] = []
    for f in _files(Path(path)):
        try:
            text = f.read_text()
        except OSError as e:
            errors.append(f"{f}: cannot read: {e.strerror}")
            continue
        doc = _compose(str(f), text, errors)
        if doc is not None:
            docs.append(doc)
    sections: dict[str, tuple[_Doc, Any]] = {}
    probes: list[tuple[_Doc, int, ProbeSpec]] = []
    for doc in docs:
        if not isinstance(doc.data, dict):
            errors.append(f"{doc.path}:1: expected a mapping with probes:, daemon:, integrations:, …")
            continue
        try:
            _SuiteFile.model_validate(doc.data)
        except ValidationError as e:
            errors.extend(_pydantic_errors(e, doc, (), doc.data))
            continue
        for key in ("daemon", "integrations", "links", "alerts", "demo"):
            if doc.data.get(key) is not None:
                if key in sections:
                    errors.append(f"{doc.path}:{_line(doc, (key,))} {key}: also set in {sections[key][0].path}; "
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
                errors.extend(_pydantic_errors(e, doc, (key,), raw))
    extra_raw = {k: sections[k][1] for k in ("links", "alerts", "demo") if k in sections}
    extra = ExtraSections()
    if extra_raw:
        try:
            extra = ExtraSections.model_validate(extra_raw)
        except ValidationError as e:
            for err in e.errors():
                top = str(err["loc"][0])
                doc = sections[top][0]
                loc = (top, *_data_loc(sections[top][1], err["loc"][1:]))
                errors.append(f"{doc.path}:{_line(doc, loc)} {_render_loc(loc, doc.data)}: {_message(err)}")
    errors.extend(_cross_checks(probes, extra, sections))
    if errors:
        raise ConfigError(sorted(errors, key=_error_order))
    return Config(
        probes=[p for _, _, p in probes], extra=extra, sources=[d.path for d in docs], **cfg_kwargs
    )


def _error_order(line: str) -> tuple[str, int]:
    m = re.match(r"^(.*?):(\d+)[ :]", line)
    return (m.group(1), int(m.group(2))) if m else (line, 0)


def _load_probe(doc: _Doc, i: int, raw: Any, errors: list[str]) -> ProbeSpec | None:
    loc: Loc = ("probes", i)
    where = f"{doc.path}:{_line(doc, loc)} {_render_loc(loc, doc.data)}"
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping")
        return None
    kind = raw.get("kind")
    if kind not in PROBES:
        kloc = (*loc, "kind")
        known = ", ".join(sorted(PROBES))
        what = f"unknown probe kind {kind!r}" if kind is not None else "kind is required"
        errors.append(f"{doc.path}:{_line(doc, kloc)} {_render_loc(kloc, doc.data)}: {what} (known: {known})")
        return None
    try:
        return PROBES[kind].model_validate(raw)
    except ValidationError as e:
        errors.extend(_pydantic_errors(e, doc, loc, raw))
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
    probes: list[tuple[_Doc, int, ProbeSpec]], extra: ExtraSections, sections: dict[str, tuple[_Doc, Any]]
) -> list[str]:
    errors: list[str] = []
    seen: dict[str, tuple[_Doc, int]] = {}
    for doc, i, spec in probes:
        loc: Loc = ("probes", i)
        if spec.id in seen:
            first_doc, first_i = seen[spec.id]
            errors.append(
                f"{doc.path}:{_line(doc, (*loc, 'id'))} {_render_loc((*loc, 'id'), doc.data)}: duplicate probe id "
                f"{spec.id!r} (first defined at {first_doc.path}:{_line(first_doc, ('probes', first_i, 'id'))})"
            )
        else:
            seen[spec.id] = (doc, i)
        if spec.every is None and spec.cron is None and not spec.pause:
            pass  # unscheduled probes run only on demand (check, API); that is allowed
        for wloc, raw_within in _walk_within(doc.data["probes"][i].get("expect"), (*loc, "expect")):
            try:
                within_s = parse_duration_s(raw_within)
            except ValueError:
                continue  # already reported by the model
            if within_s > spec.timeout:
                errors.append(
                    f"{doc.path}:{_line(doc, wloc)} {_render_loc(wloc, doc.data)}: within {raw_within} is longer "
                    f"than the probe's timeout {_fmt_s(spec.timeout)}"
                )
        if spec.alert is not None and spec.alert.policy not in extra.policy_names():
            aloc = (*loc, "alert", "policy")
            known = ", ".join(sorted(extra.policy_names())) or "none defined"
            errors.append(
                f"{doc.path}:{_line(doc, aloc)} {_render_loc(aloc, doc.data)}: unknown alert policy "
                f"{spec.alert.policy!r} (known: {known})"
            )
    if "alerts" in sections:
        doc, _ = sections["alerts"]
        for loc, message in extra.reference_errors():
            full = ("alerts", *loc)
            errors.append(f"{doc.path}:{_line(doc, full)} {_render_loc(full, doc.data)}: {message}")
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
