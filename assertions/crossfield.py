"""Rules across the fields of a config model, reported in the same pass as the field errors.

Pydantic skips ``mode="after"`` model validators once any field failed, so a rule written that way
shows only after the field errors are fixed. ``cross_field_rule`` checks its rule beside the fields
and reports its message together with theirs. It lives here because ``assertions`` imports nothing of
ours; ``tracecanary.model`` re-exports it for every other config model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, get_args

from pydantic import BaseModel, ValidationError, ValidatorFunctionWrapHandler, model_validator
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType

Rule = Callable[[Mapping[str, Any]], str | None]
"""Fields by (Python) name → the rule's message, or None when it holds."""

_KNOWN_ERRORS = frozenset(get_args(ErrorType))


def cross_field_rule(check: Rule, *, at: str | None = None) -> Any:
    """A model validator for a rule across fields (or across the items of one field).

    ``check`` gets the fields that were given, by Python name (``json_``, not ``json``): their
    validated values when every field validated, else the values as written — any type may arrive
    then, so the rule reads them defensively and stays silent on what it cannot judge. A message it
    returns is an error at the model (or at field ``at``) beside the field errors, in one pass.
    Use as ``_rule = cross_field_rule(lambda v: "…" if … else None)`` in the class body.
    """

    def validate(cls: type[BaseModel], data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            result = handler(data)
        except ValidationError as e:
            problem = check(_as_written(cls, data)) if isinstance(data, Mapping) else None
            if problem is None:
                raise
            details = [*(_init_details(err) for err in e.errors()), _problem(problem, at, data)]
            raise ValidationError.from_exception_data(e.title, details) from None
        if isinstance(result, BaseModel):
            problem = check({name: getattr(result, name) for name in result.model_fields_set})
            if problem is not None:
                raise ValidationError.from_exception_data(cls.__name__, [_problem(problem, at, data)])
        return result

    return model_validator(mode="wrap")(classmethod(validate))  # type: ignore[arg-type]


def _as_written(cls: type[BaseModel], data: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        for key in (info.alias, name):
            if key is not None and key in data:
                out[name] = data[key]
                break
    return out


def _problem(message: str, at: str | None, data: Any) -> InitErrorDetails:
    given = data.get(at) if at is not None and isinstance(data, Mapping) else data
    return {"type": "value_error", "loc": (at,) if at is not None else (), "input": given,
            "ctx": {"error": ValueError(message)}}


def _init_details(err: ErrorDetails) -> InitErrorDetails:
    kind = err["type"]
    if kind not in _KNOWN_ERRORS:  # a validator's own PydanticCustomError: keep its message as it was
        return {"type": PydanticCustomError(kind, err["msg"]), "loc": err["loc"], "input": err["input"]}
    out: InitErrorDetails = {"type": kind, "loc": err["loc"], "input": err["input"]}
    if "ctx" in err:
        out["ctx"] = err["ctx"]
    return out
