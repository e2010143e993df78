"""The JSON Schema of a suite file (``tracecanary schema`` > ``config/schema.json``), from the models.

It describes files as written, before ``${…}`` expansion: durations and sizes accept their strings
(``30s``, ``64MiB``), and every constrained value (numbers, booleans, patterns, enums) also accepts a
``${VAR}`` reference, so the project's own ``config/demo.yaml`` and ``config/examples/`` validate.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.config.links import LinkSettings
from tracecanary.daemon.config.settings import DaemonSettings
from tracecanary.integrations import Integrations
from tracecanary.model import StrictModel
from tracecanary.probes.registry import PROBES

REFERENCE = "EnvReference"
REFERENCE_SCHEMA = {
    "type": "string",
    "pattern": r"\$\{[^}]+\}",
    "description": "${VAR}, ${VAR:-default}, ${public:VAR} or ${file:/path}: resolved at load.",
}
_META = ("title", "description", "default", "writeOnly", "examples", "deprecated")
_SCALARS = ("integer", "number", "boolean", "null")
_STRING_LIMITS = ("pattern", "enum", "format", "minLength", "maxLength")


def schema() -> dict[str, Any]:
    """The JSON Schema of a suite file, generated from the models (written to config/schema.json)."""
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
    doc = dict(_with_references(doc))
    doc.setdefault("$defs", {})[REFERENCE] = dict(REFERENCE_SCHEMA)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "tracecanary suite"
    return doc


def _constrained(node: dict[str, Any]) -> bool:
    """A value a ``${VAR}`` string would not satisfy (a discriminator's ``const`` stays strict)."""
    if "const" in node or "$ref" in node:
        return False
    kind = node.get("type")
    if kind in _SCALARS and kind != "null":
        return True
    if kind == "string" or (kind is None and "enum" in node):
        return any(k in node for k in _STRING_LIMITS)
    return False


def _with_references(node: Any) -> Any:
    """``node`` with every constrained scalar also accepting a ``${…}`` reference."""
    if isinstance(node, list):
        return [_with_references(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs", "patternProperties"):
            out[key] = {k: _with_references(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "prefixItems", "oneOf", "allOf"):
            out[key] = _with_references(value)
        elif key == "anyOf":
            members = [_with_references_inside(v) for v in value]
            if any(isinstance(m, dict) and _constrained(m) for m in members):
                members.append({"$ref": f"#/$defs/{REFERENCE}"})
            out[key] = members
        else:
            out[key] = value
    if "anyOf" not in out and _constrained(out):
        meta = {k: out.pop(k) for k in _META if k in out}
        return {"anyOf": [out, {"$ref": f"#/$defs/{REFERENCE}"}], **meta}
    return out


def _with_references_inside(node: Any) -> Any:
    """A union member: its inside is processed, the member itself stays (the union gets one reference)."""
    if isinstance(node, dict) and _constrained(node):
        return {k: _with_references(v) if isinstance(v, dict | list) else v for k, v in node.items()}
    return _with_references(node)
