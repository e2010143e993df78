"""Reading Tracetest resource files with the line of every key, and what the converter reports.

Tracetest's resources (kubeshop/tracetest ``api/tests.yaml``, ``api/testsuites.yaml``, ``api/config.yaml``)
are YAML documents ``{type: Test | TestSuite | Transaction | PollingProfile | VariableSet | …, spec: {…}}``,
one or more per file (``---``). Mappings and lists come back as :class:`LMap`/:class:`LList`, which carry
the line of the node and of each entry, so every omission names ``file:line``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from tracecanary.errors import TracecanaryError

VARIABLE = re.compile(r"\$\{(?:env|var):([A-Za-z_][A-Za-z0-9_]*)\}")
"""Tracetest's variable references: ``${env:X}`` (environments, before v0.13) and ``${var:X}`` (variable sets)."""
_LEFTOVER = re.compile(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\})")


class UnreadableInputError(TracecanaryError):
    """An input that is not a Tracetest resource file (missing, not YAML, no ``type``/``spec``)."""


class LMap(dict[str, Any]):
    """A YAML mapping with its line and the line of each key."""

    line: int = 0
    lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


class LList(list[Any]):
    """A YAML sequence with its line and the line of each item."""

    line: int = 0
    lines: list[int]

    def line_of(self, index: int) -> int:
        return self.lines[index] if 0 <= index < len(self.lines) else self.line


def line_of(value: Any, default: int) -> int:
    """The line of a located value (a mapping or list), else ``default``."""
    return value.line if isinstance(value, LMap | LList) else default


def _located(node: yaml.Node, constructor: SafeConstructor) -> Any:
    if isinstance(node, yaml.MappingNode):
        m = LMap()
        m.line, m.lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = str(constructor.construct_object(key_node, deep=True))
            m[key] = _located(value_node, constructor)
            m.lines[key] = key_node.start_mark.line + 1
        return m
    if isinstance(node, yaml.SequenceNode):
        seq = LList(_located(v, constructor) for v in node.value)
        seq.line, seq.lines = node.start_mark.line + 1, [v.start_mark.line + 1 for v in node.value]
        return seq
    return constructor.construct_object(node, deep=True)


@dataclass(frozen=True)
class Resource:
    """One Tracetest document: its ``type``, its ``spec`` and where it is."""

    path: Path
    line: int
    type: str
    spec: LMap


def read_resources(path: Path) -> list[Resource]:
    """Every document of a Tracetest file; raises :class:`UnreadableInputError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UnreadableInputError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from e
    try:
        nodes = [n for n in yaml.compose_all(text, Loader=yaml.SafeLoader) if n is not None]
    except yaml.YAMLError as e:
        raise UnreadableInputError(f"{path}: invalid YAML: {e}") from e
    if not nodes:
        raise UnreadableInputError(f"{path}: empty file")
    out = []
    for node in nodes:
        doc = _located(node, SafeConstructor())
        if not isinstance(doc, LMap) or not isinstance(doc.get("type"), str) or not isinstance(doc.get("spec"), LMap):
            raise UnreadableInputError(f"{path}:{node.start_mark.line + 1}: not a Tracetest resource "
                                       "(expected a mapping with type: and spec:)")
        out.append(Resource(path, doc.line, doc["type"], doc["spec"]))
    return out


@dataclass(frozen=True)
class Omission:
    """Something that was not converted: where and why."""

    path: Path
    line: int
    why: str

    def __str__(self) -> str:
        return f"{shown(self.path)}:{self.line}: {self.why}"


def shown(path: Path) -> str:
    """A path as the user would write it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


BARE_VARIABLE = re.compile(r"""(?<![\w${:'"])(?:env|var):([A-Za-z_][A-Za-z0-9_]*)""")
"""A variable an assertion's expression names without ``${}``: ``attr:test_id = var:TEST_ID``."""


def variables(text: str, *, expression: bool = False) -> tuple[str, set[str]]:
    """``${env:X}``/``${var:X}`` → ``${X}``; in an assertion (``expression``) a bare ``var:X``/``env:X``
    operand too, as the quoted string ``"${X}"``. Returns the text and the names it uses."""
    names = set(VARIABLE.findall(text))
    out = VARIABLE.sub(lambda m: "${" + m.group(1) + "}", text)
    if expression:
        names |= set(BARE_VARIABLE.findall(out))
        out = BARE_VARIABLE.sub(lambda m: '"${' + m.group(1) + '}"', out)
    return out, names


def leftover_expression(text: str) -> bool:
    """Whether a ``${…}`` that is not a plain variable (a Tracetest expression) remains."""
    return bool(_LEFTOVER.search(text))


__all__ = ["LList", "LMap", "Omission", "Resource", "UnreadableInputError", "leftover_expression", "line_of",
           "read_resources", "shown", "variables"]
