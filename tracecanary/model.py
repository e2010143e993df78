"""StrictModel: the base of every config model (probes, daemon settings, integrations, alerts).

``Credential`` marks the fields whose values are credentials (tokens, passwords, signing secrets,
request headers): ``credential_values`` collects them from a loaded config, and the daemon masks them
wherever data leaves the process (``daemon/config/secrets.py``). They show as ``writeOnly`` in the
JSON Schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    GetJsonSchemaHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, ErrorDetails, InitErrorDetails


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


def cross_field_rule(check: Callable[[Mapping[str, Any]], str | None]) -> Any:
    """A model validator for a rule across fields, checked on the mapping as written.

    Pydantic skips ``mode="after"`` validators once any field failed, so such a rule would show only
    after the field errors are fixed; this one reports its message beside them, in the same pass.
    Use as ``_rule = cross_field_rule(lambda raw: "…" if … else None)`` in the class body.
    """

    def validate(cls: type[BaseModel], data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        problem = check(data) if isinstance(data, Mapping) else None
        try:
            result = handler(data)
        except ValidationError as e:
            if problem is None:
                raise
            details: list[InitErrorDetails] = [_init_details(err) for err in e.errors()]
            details.append({"type": "value_error", "loc": (), "input": data, "ctx": {"error": ValueError(problem)}})
            raise ValidationError.from_exception_data(e.title, details) from None
        if problem is not None:
            raise ValueError(problem)
        return result

    return model_validator(mode="wrap")(classmethod(validate))  # type: ignore[arg-type]


def _init_details(err: ErrorDetails) -> InitErrorDetails:
    out: InitErrorDetails = {"type": err["type"], "loc": err["loc"], "input": err["input"]}
    if "ctx" in err:
        out["ctx"] = err["ctx"]
    return out
