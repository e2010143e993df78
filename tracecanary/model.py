"""StrictModel: the base of every config model (probes, daemon settings, integrations, alerts).

``Credential`` marks the fields whose values are credentials (tokens, passwords, signing secrets,
request headers): ``credential_values`` collects them from a loaded config, and the daemon masks them
wherever data leaves the process (``daemon/config/secrets.py``). They show as ``writeOnly`` in the
JSON Schema.
``cross_field_rule`` (from ``tracecanary.assertions.crossfield``) reports a rule across fields in the
same pass as the field errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from tracecanary.assertions.crossfield import cross_field_rule

__all__ = ["CREDENTIAL", "HEADERS_CREDENTIAL", "PUBLIC_HEADERS", "Credential", "StrictModel", "credential_values",
           "cross_field_rule"]


class StrictModel(BaseModel):
    """Unknown keys are errors; values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(frozen=True)
class Credential:
    """``Annotated[str | None, CREDENTIAL]``: every string in the field's value is a credential.

    For a mapping (request headers), ``public_keys`` names the keys (case-insensitive) whose values are
    not credentials (``Content-Type``, ``Accept`` …), so masking them would only hide ordinary words.
    """

    public_keys: frozenset[str] = frozenset()

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler.resolve_ref_schema(handler(schema))
        out["writeOnly"] = True
        return out


CREDENTIAL = Credential()
"""The marker for a field whose whole value is a credential."""

PUBLIC_HEADERS = frozenset({
    "accept", "accept-encoding", "accept-language", "cache-control", "connection", "content-encoding",
    "content-language", "content-type", "user-agent", "x-github-event", "x-request-id",
})
"""Request headers whose values are never credentials (a header field's other values are)."""

HEADERS_CREDENTIAL = Credential(PUBLIC_HEADERS)
"""The marker for a request-headers mapping: every value but those of ``PUBLIC_HEADERS``."""

_MAX_DEPTH = 32


def credential_values(value: Any) -> Iterator[str]:
    """Every string held by a ``Credential`` field anywhere in ``value`` (models, lists, mappings)."""
    yield from _walk(value, 0)


def _walk(value: Any, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            marker = next((m for m in info.metadata if isinstance(m, Credential)), None)
            child = getattr(value, name, None)
            if marker is not None:
                yield from _strings(child, marker.public_keys, depth + 1)
            else:
                yield from _walk(child, depth + 1)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _walk(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v, depth + 1)


def _strings(value: Any, public_keys: frozenset[str], depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _strings(getattr(value, name, None), frozenset(), depth + 1)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not (isinstance(k, str) and k.lower() in public_keys):
                yield from _strings(v, frozenset(), depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v, frozenset(), depth + 1)
