"""YAML documents that remember where each value came from, and the error lines that name it.

``compose`` parses a file keeping every value's line and expanding ``${VAR}``, ``${VAR:-default}`` and
``${file:/path}`` from the given environment; ``render_loc``/``line_of`` turn a location into
``config/demo.yaml:14 probes[orders-webhook].expect…`` for error messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Loc = tuple[str | int, ...]
_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_VALUES = 100_000
"""Values one file may hold once YAML aliases are expanded (an alias bomb stops here, not in memory)."""
MAX_DEPTH = 128
"""How deeply one file may nest mappings and lists."""
ADDRESSES: frozenset[Loc] = frozenset({
    ("daemon", "listen"), ("daemon", "public_url"), ("daemon", "otlp", "http"), ("daemon", "otlp", "grpc"),
})
"""The daemon's own addresses: a ``${VAR}`` there is no secret (masked, every alert's dashboard link would break)."""


@dataclass
class Doc:
    """One parsed file: its data, the line of every location in it, and the values ``${…}`` put in it."""

    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    substituted: list[str] = field(default_factory=list)
    """Values that came from the environment or a file (``${VAR}``, ``${file:…}``): secrets by provenance."""
    unresolved: set[Loc] = field(default_factory=set)
    """Locations whose ``${…}`` could not be expanded (reported once; later errors there are dropped)."""
    unset: list[Unset] = field(default_factory=list)
    """Values naming an unset variable: errors unless a ``requires.env`` names it (``load.py`` decides)."""


@dataclass(frozen=True)
class Unset:
    """A value whose ``${NAME}`` is not set, kept as written until ``requires.env`` excuses it or not."""

    loc: Loc
    name: str
    text: str


class UnsetVariableError(ValueError):
    """``${NAME}`` without a default names a variable the environment does not set."""

    def __init__(self, name: str) -> None:
        super().__init__(f"environment variable {name} is not set (use ${{{name}:-default}} for a default)")
        self.name = name


class _Loader(yaml.SafeLoader):
    pass


class _Stop(Exception):
    """The file cannot be built into data (too many values, too deep): one error, then stop."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def compose(path: str, text: str, errors: list[str], environ: Mapping[str, str]) -> Doc | None:
    """Parse one YAML file keeping each value's line, ``${…}`` expanded from ``environ``; None if invalid."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        errors.append(_yaml_error(path, text, e))
        return None
    except RecursionError:
        errors.append(f"{path}:1: invalid YAML: nested too deeply (more than {MAX_DEPTH} levels)")
        return None
    if node is None:
        errors.append(f"{path}:1: empty file: expected a mapping with probes:, daemon:, integrations:, …")
        return None
    doc = Doc(path=path, data=None)
    env_errors: list[tuple[Loc, str]] = []
    builder = _Builder(doc, env_errors, environ)
    try:
        doc.data = builder.build(node, (), 0)
    except _Stop as stop:
        errors.append(f"{path}:{stop.line}: {stop.message}")
        return None
    errors.extend(f"{path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}: {msg}" for loc, msg in env_errors)
    doc.unresolved = {loc for loc, _ in env_errors}
    return doc


def _yaml_error(path: str, text: str, e: yaml.YAMLError) -> str:
    """One line: ``file:line: invalid YAML: problem`` (a reader error is a file that is not text)."""
    mark = getattr(e, "problem_mark", None)
    position = getattr(e, "position", None)
    if mark is not None:
        line = f":{mark.line + 1}"
    elif isinstance(position, int):
        line = f":{text.count(chr(10), 0, position) + 1}"
    else:
        line = ""
    if isinstance(e, yaml.reader.ReaderError):
        code = e.character if isinstance(e.character, int) else ord(e.character)
        return f"{path}{line}: not a text file: character #x{code:04x} is not allowed in YAML"
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    if context and not str(context).startswith("while "):
        problem = f"{context}, {problem}"  # "expected a single document in the stream, but found another"
    return f"{path}{line}: invalid YAML: {problem}"


class _Builder:
    """Builds plain data from a YAML node graph, counting values so aliases cannot expand without bound."""

    def __init__(self, doc: Doc, errors: list[tuple[Loc, str]], environ: Mapping[str, str]) -> None:
        self.doc, self.errors, self.environ = doc, errors, environ
        self.values = 0

    def build(self, node: yaml.Node, loc: Loc, depth: int) -> Any:
        line = node.start_mark.line + 1
        self.values += 1
        if self.values > MAX_VALUES:
            raise _Stop(line, f"more than {MAX_VALUES} values once YAML aliases are expanded (an alias bomb?)")
        if depth > MAX_DEPTH:
            raise _Stop(line, f"nested deeper than {MAX_DEPTH} levels")
        self.doc.lines.setdefault(loc, line)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*loc, i), depth + 1) for i, v in enumerate(node.value)]
        try:
            value = _Loader("").construct_object(node)  # type: ignore[arg-type]
        except yaml.YAMLError as e:
            self.errors.append((loc, f"invalid YAML value: {getattr(e, 'problem', None) or e}"))
            return None
        if isinstance(value, str) and "${" in value:
            try:
                value = expand_env(value, self.environ, None if loc in ADDRESSES else self.doc.substituted)
            except UnsetVariableError as e:
                self.doc.unset.append(Unset(loc, e.name, value))
            except ValueError as e:
                self.errors.append((loc, str(e)))
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                what = "a mapping" if isinstance(key_node, yaml.MappingNode) else "a list"
                self.doc.lines.setdefault(loc, key_node.start_mark.line + 1)
                self.errors.append((loc, f"a key must be a string, got {what} (line {key_node.start_mark.line + 1})"))
                continue
            key = key_node.value  # the key as written: `200:` and `on:` stay the strings "200" and "on"
            child = (*loc, key)
            if key in out:
                self.errors.append((child, f"duplicate key {key!r}"))
            self.doc.lines[child] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, child, depth + 1)
        return out


def expand_env(text: str, environ: Mapping[str, str] | None = None, found: list[str] | None = None) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``${file:/path}`` and ``${public:VAR}``; ``$${`` escapes ``${``.

    Each value taken from the environment or a file (not a default, not a ``public:`` one) is
    appended to ``found``: those are the config's secrets by provenance.
    """
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("file:"):
            p = Path(expr[5:])
            try:
                value = p.read_text().strip()
            except OSError as e:
                raise ValueError(f"cannot read secret file {str(p)!r}: {e.strerror}") from e
            except UnicodeDecodeError as e:
                raise ValueError(f"cannot read secret file {str(p)!r}: not UTF-8 text") from e
            if found is not None:
                found.append(value)
            return value
        public = expr.startswith("public:")
        name, sep, default = expr.removeprefix("public:").partition(":-")
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid variable reference ${{{expr}}}")
        if name in env:
            if found is not None and not public:
                found.append(env[name])
            return env[name]
        if sep:
            return default
        raise UnsetVariableError(name)

    parts = text.split("$${")
    return "${".join(_ENV_RE.sub(sub, p) for p in parts)


# --- paths ---------------------------------------------------------------------------------------
def render_loc(loc: Loc, data: Any) -> str:
    """``('probes', 0, 'expect', 'trace', 'tree', 0, 'span')`` → ``probes[orders-webhook].expect…``."""
    out = ""
    cursor: Any = data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            label: str | int = part
            if i == 1 and loc[0] == "probes" and isinstance(cursor, list) and part < len(cursor):
                item = cursor[part]
                if isinstance(item, dict) and _one_line(item.get("id")):
                    label = item["id"]
            out += f"[{label}]"
        elif not _one_line(part):
            out += f"[{part!r}]"  # a key with a line break or a control character: one error, one line
        else:
            out += f".{part}" if out else str(part)
        if isinstance(cursor, dict):
            cursor = cursor.get(part)
        elif isinstance(cursor, list) and isinstance(part, int) and part < len(cursor):
            cursor = cursor[part]
        else:
            cursor = None
    return out


def _one_line(text: Any) -> bool:
    return isinstance(text, str) and 0 < len(text) <= 200 and text.isprintable()


_TYPE_PARTS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes", "tuple", "set"})
_FIELD_RE = re.compile(r"[a-z_][a-z0-9_]*")


def data_loc(data: Any, loc: tuple[Any, ...]) -> Loc:
    """Keep the parts of a pydantic error location that exist in the data (drop union tags and the
    type names of union members), so an error inside a channel names the field, not ``webhook``."""
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
        elif isinstance(cursor, dict) and part in (cursor.get("type"), cursor.get("kind")):
            continue  # a discriminated union's tag: the data's own `type: webhook`
        elif isinstance(cursor, dict) and isinstance(part, str) and _FIELD_RE.fullmatch(part) \
                and part not in _TYPE_PARTS:
            out.append(part)  # a missing field: name it, point at its parent's line
            cursor = None
        else:
            continue
    return tuple(out)


def line_of(doc: Doc, loc: Loc) -> int:
    """The line of ``loc``, or of its nearest ancestor present in the file."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in doc.lines:
            return doc.lines[loc[:n]]
    return 1


_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "a whole number",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list", "set_type": "a list", "none_required": "null",
    "datetime_parsing": "a date and time (ISO 8601)", "datetime_type": "a date and time (ISO 8601)",
}
_MAX_SHOWN = 80


def shown(value: Any) -> str:
    """An offending value as an error message quotes it (long text cut, containers named)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 4] + "…" + text[-3:]


def message(err: Any) -> str:
    """A pydantic error's message as the config error line says it, quoting the offending value."""
    kind, msg, value = err["type"], str(err["msg"]), err.get("input")
    if kind == "extra_forbidden":
        return f"unknown key {err['loc'][-1]!r}"
    if kind in ("missing", "union_tag_not_found"):
        return "required field missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        known = ", ".join(sorted(t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")))
        return f"unknown {str(ctx.get('discriminator', 'type')).strip(chr(39))} {ctx.get('tag')!r} (known: {known})"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown(value)}"
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if msg.startswith("Input should be "):
        msg = "expected " + msg[len("Input should be "):]
    quoted = shown(value)
    if kind in ("value_error", "assertion_error"):
        return msg  # our validators quote the value themselves
    if isinstance(value, dict | list | tuple) or quoted in msg:
        return msg
    return f"{msg}, got {quoted}"


def error_loc(err: Any, data: Any, prefix: Loc) -> Loc:
    """Where a pydantic error points in the file (a union's missing tag points at the tag field)."""
    loc = (*prefix, *data_loc(_value_at(data, prefix), err["loc"]))
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        disc = str((err.get("ctx") or {}).get("discriminator", "'type'")).strip("'")
        loc = (*loc, disc)
    return loc


def located(errors: Iterable[Any], data: Any, prefix: Loc) -> list[tuple[Loc, Any]]:
    """Each error with where it points in the file. A smart union member's "expected <type>" is left
    out when another member took the value's type and says what is wrong inside it: ``count: {gte: 3,
    lte: 1}`` is an empty range, not also "expected an integer, got a mapping"."""
    found = []
    for err in errors:
        loc = error_loc(err, data, prefix)
        refused = err["type"] in _EXPECTED and len(err["loc"]) > 0 \
            and error_loc({**err, "loc": err["loc"][:-1]}, data, prefix) == loc  # its last part: a member's name
        found.append((loc, err, refused))
    taken = {loc[:n] for loc, _, refused in found if not refused for n in range(len(loc) + 1)}
    return [(loc, err) for loc, err, refused in found if not (refused and loc in taken)]


def pydantic_errors(e: ValidationError, doc: Doc, prefix: Loc) -> list[str]:
    """``file:line path: message`` for each error of validating the value at ``prefix``.

    Errors at a location whose ``${…}`` did not resolve are dropped (that one is reported already), and
    a smart union's per-member complaints about one value are folded into one line.
    """
    by_loc: dict[Loc, list[str]] = {}
    for loc, err in located(e.errors(), doc.data, prefix):
        if any(loc[:len(bad)] == bad for bad in doc.unresolved):
            continue
        text = message(err)
        if text not in by_loc.setdefault(loc, []):
            by_loc[loc].append(text)
    out = []
    for loc, texts in by_loc.items():
        for text in _fold(texts):
            out.append(f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}: {text}")
    return out


def _fold(texts: list[str]) -> list[str]:
    """``expected an integer, got 'x'`` + ``expected a list, got 'x'`` → ``expected an integer or a list, got 'x'``."""
    parsed = [re.fullmatch(r"expected (.*), got (.*)", t) for t in texts]
    if len(texts) < 2 or not all(parsed) or len({m.group(2) for m in parsed if m}) != 1:
        return texts
    wants = [m.group(1) for m in parsed if m]
    got = parsed[0].group(2) if parsed[0] else ""
    return [f"expected {', '.join(wants[:-1])} or {wants[-1]}, got {got}"]


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data
