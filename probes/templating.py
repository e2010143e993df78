"""Per-run templating: ``{{ run_id }}``, ``{{ steps.create.json.id }}`` in a Jinja2 *sandbox*.

Templates come from config files that operators write, but they are rendered with data the system
under test returned (captures), so the sandbox refuses attribute access to internals.
"""

from __future__ import annotations

import uuid
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tracecanary.errors import ProbeError


class Templates:
    """Renders ``{{ }}`` in strings, recursively through dicts and lists."""

    def __init__(self) -> None:
        self.env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self.env.globals["random_uuid"] = lambda: str(uuid.uuid4())
        self._cache: dict[str, Any] = {}

    def render_str(self, text: str, variables: dict[str, Any]) -> str:
        if "{{" not in text and "{%" not in text:
            return text
        try:
            template = self._cache.get(text)
            if template is None:
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
