"""Per-run templating: ``{{ run_id }}``, ``{{ steps.create.json.id }}`` in a Jinja2 *sandbox*.

Templates come from config files that operators write, but they are rendered with data the system
under test returned (captures), so the sandbox refuses attribute access to internals.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ValidationError

from tracecanary.assertions.units import parse_duration_s
from tracecanary.errors import ProbeError

MAX_CACHED = 4096
"""Compiled templates kept (config strings; the cache is dropped when it grows past this)."""
M = TypeVar("M", bound=BaseModel)
_SINGLE_EXPR = re.compile(r"^\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}$", re.S)


def _now_plus(duration: str | float = 0) -> str:
    """ISO 8601 UTC time ``duration`` from now (``now_plus('1m')``), for APIs that take a run time."""
    return (datetime.now(UTC) + timedelta(seconds=parse_duration_s(duration))).isoformat()


class Templates:
    """Renders ``{{ }}`` in strings, recursively through dicts and lists."""

    def __init__(self) -> None:
        self.env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self.env.globals["random_uuid"] = lambda: str(uuid.uuid4())
        self.env.globals["now_plus"] = _now_plus
        self.env.globals["unix_time"] = lambda: int(time.time())
        self._cache: dict[str, Any] = {}
        self._expr_cache: dict[str, Any] = {}

    def render_str(self, text: str, variables: dict[str, Any]) -> str:
        if "{{" not in text and "{%" not in text:
            return text
        try:
            template = self._cache.get(text)
            if template is None:
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                template = self._cache[text] = self.env.from_string(text)
            return str(template.render(variables))
        except TemplateError as e:
            raise ProbeError(f"template {text!r}: {e}") from e

    def render(self, value: Any, variables: dict[str, Any]) -> Any:
        if isinstance(value, str):
            return self.render_str(value, variables)
        if isinstance(value, dict):
            return {self.render(k, variables): self.render(v, variables) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.render(v, variables) for v in value]
        return value

    def render_native(self, value: Any, variables: dict[str, Any]) -> Any:
        """Like ``render``, but a string that is one whole ``{{ expr }}`` keeps the value's type.

        For JSON bodies and payloads: ``{"id": "{{ steps.create.json.id }}"}`` sends the id as the
        number (or object) it was, not as its text.
        """
        if isinstance(value, str):
            m = _SINGLE_EXPR.match(value.strip())
            if m is None:
                return self.render_str(value, variables)
            return self._eval(m.group("expr").strip(), value, variables)
        if isinstance(value, dict):
            return {self.render(k, variables): self.render_native(v, variables) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.render_native(v, variables) for v in value]
        return value

    def _eval(self, expr: str, text: str, variables: dict[str, Any]) -> Any:
        try:
            compiled = self._expr_cache.get(expr)
            if compiled is None:
                if len(self._expr_cache) >= MAX_CACHED:
                    self._expr_cache.clear()
                compiled = self._expr_cache[expr] = self.env.compile_expression(expr, undefined_to_none=False)
            result = compiled(**variables)
            if isinstance(result, Undefined):
                str(result)  # StrictUndefined raises UndefinedError naming the missing variable
        except TemplateError as e:
            raise ProbeError(f"template {text!r}: {e}") from e
        return result


def render_spec(spec: M, render: Callable[[Any], Any]) -> M:
    """``spec`` (a side effect) with ``{{ … }}`` rendered in every string it holds — matchers included.

    ``render`` is the run's ``ProbeContext.render``. Values render as text (a number a template
    produces is compared numerically by ``equals``/``gt``/…), then the result is validated again, so
    a template that renders into something the field does not accept is a clear error. The runner
    calls this once per side effect before its watcher starts; watchers judge what they are given.
    """
    raw = spec.model_dump(by_alias=True, exclude_unset=True)
    rendered = render(raw)
    if rendered == raw:
        return spec
    try:
        return type(spec).model_validate(rendered)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise ProbeError(f"{where}: {first['msg']} after rendering templates (got {first.get('input')!r})") from e
