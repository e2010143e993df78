"""YAML documents that remember where each value came from, and the error lines that name it.

``compose`` parses a file keeping every value's line and expanding ``${VAR}``, ``${VAR:-default}`` and
``${file:/path}`` from the given environment; ``render_loc``/``line_of`` turn a location into
``config/demo.yaml:14 probes[orders-webhook].expect…`` for error messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Loc = tuple[str | int, ...]
_ENV_RE = re.compile(r"\$\{([^}]*)\}")


@dataclass
class Doc:
    """One parsed file: its data and the line of every location in it."""

    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)


class _Loader(yaml.SafeLoader):
    pass


def compose(path: str, text: str, errors: list[str], environ: Mapping[str, str]) -> Doc | None:
    """Parse one YAML file keeping each value's line, ``${…}`` expanded from ``environ``; None if invalid."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        errors.append(f"{path}{line}: invalid YAML: {problem}")
        return None
    doc = Doc(path=path, data=None)
    if node is None:
        doc.data = {}
        return doc
    env_errors: list[tuple[Loc, str]] = []
    doc.data = _construct(node, (), doc, env_errors, environ)
    errors.extend(f"{path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}: {msg}" for loc, msg in env_errors)
    return doc


def _construct(
    node: yaml.Node, loc: Loc, doc: Doc, errors: list[tuple[Loc, str]], environ: Mapping[str, str]
) -> Any:
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
            out[key] = _construct(value_node, child, doc, errors, environ)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*loc, i), doc, errors, environ) for i, v in enumerate(node.value)]
    value = _Loader("").construct_object(node)  # type: ignore[arg-type]
    if isinstance(value, str) and "${" in value:
        try:
            value = expand_env(value, environ)
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
def render_loc(loc: Loc, data: Any) -> str:
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


def data_loc(data: Any, loc: tuple[Any, ...]) -> Loc:
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
        elif isinstance(cursor, dict) and part in (cursor.get("type"), cursor.get("kind")):
            continue  # a discriminated union's tag (an alert channel's type, a probe's kind)
        elif isinstance(cursor, dict) and isinstance(part, str) and not part.startswith(("function", "union")):
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


def message(err: Any) -> str:
    """A pydantic error's message as the config error line says it."""
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


def pydantic_errors(e: ValidationError, doc: Doc, prefix: Loc) -> list[str]:
    """``file:line path: message`` for each error of validating the value at ``prefix``."""
    out = []
    for err in e.errors():
        loc = (*prefix, *data_loc(_value_at(doc.data, prefix), err["loc"]))
        out.append(f"{doc.path}:{line_of(doc, loc)} {render_loc(loc, doc.data)}: {message(err)}")
    return out


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data
