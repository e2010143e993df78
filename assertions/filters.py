"""Tracetest's value filters: ``attr:KEY | json_path '$.id' | get_index 0 = "143"``.

Each filter takes the value the one before it produced (the span attribute first) and returns a new
one, as Tracetest's expression engine does (``server/expression/filters/*.go``):

- ``json_path 'PATH'``: the attribute read as JSON, then JSONPath: no match → no value, one → that
  value, several → a list. A single object or array result is written as compact JSON (Tracetest
  prints Go maps, ``map[a:1]``, which nobody compares against), numbers without a needless ``.0``.
- ``regex 'RE'``: every match (one → that string; none → an empty list).
- ``regex_group 'RE'``: every capture group of every match, flattened (one → that string).
- ``get_index N`` (or ``last``): one item of a list (a single value is a list of one).
- ``length``: items of a list, or characters of a string.
- ``type``: ``array``, ``nil``, ``number``, ``duration``, ``json`` or ``string`` (Tracetest's type names).

A filter that cannot apply (JSON that does not parse, an index out of range) raises :class:`FilterError`;
the assertion then fails with that message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracecanary.assertions.response import select_json, validate_json_path


class FilterError(ValueError):
    """A filter could not be applied to the value it got (or was written wrong)."""


@dataclass(frozen=True)
class Filter:
    """One ``| name [argument]`` step."""

    name: str
    arg: str | None

    def text(self) -> str:
        return self.name if self.arg is None else f"{self.name} {self.arg!r}"


_ARGS = {"json_path": True, "regex": True, "regex_group": True, "get_index": True, "length": False, "type": False}
FILTER_NAMES = tuple(_ARGS)
_COMPARISONS = {"=", "!=", "<", "<=", ">", ">=", "contains", "not-contains"}
_NAME = re.compile(r"\s*\|\s*([a-z_]+)")
_ARG = re.compile(r"""\s+(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([^\s|'"]+))""")


def parse_filters(text: str) -> tuple[tuple[Filter, ...], str]:
    """Leading ``| name [arg]`` steps of ``text``: (the filters, the rest of the text)."""
    filters: list[Filter] = []
    pos = 0
    while (m := _NAME.match(text, pos)) is not None:
        name, pos = m.group(1), m.end()
        if name not in _ARGS:
            raise FilterError(f"unknown filter {name!r} (one of {', '.join(FILTER_NAMES)})")
        arg = None
        if _ARGS[name]:
            a = _ARG.match(text, pos)
            if a is None or a.group(3) in _COMPARISONS:
                raise FilterError(f"filter {name} needs an argument")
            arg, pos = next(g for g in a.groups() if g is not None), a.end()
        _check(name, arg)
        filters.append(Filter(name, arg))
    return tuple(filters), text[pos:]


def _check(name: str, arg: str | None) -> None:
    try:
        if name == "json_path" and arg is not None:
            validate_json_path(arg)
        elif name in ("regex", "regex_group") and arg is not None:
            re.compile(arg)
        elif name == "get_index" and arg != "last":
            int(str(arg))
    except (ValueError, re.error) as e:
        raise FilterError(f"filter {name} {arg!r}: {e}") from e


def apply_filters(value: Any, filters: Sequence[Filter]) -> tuple[bool, Any]:
    """(present, value) after the filters; raises FilterError when one cannot apply."""
    present = True
    for f in filters:
        present, value = _apply(f, value if present else None, present)
    return present, value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


def _apply(f: Filter, value: Any, present: bool) -> tuple[bool, Any]:
    if f.name == "type":
        return True, _type(value, present)
    if f.name == "length":
        if not present:
            return True, 0
        if isinstance(value, list | tuple):
            return True, len(value)
        if isinstance(value, str):
            return True, len(value)
        raise FilterError(f"length: expected an array or a string, got {_type(value, present)}")
    if f.name == "get_index":
        items = list(value) if isinstance(value, list | tuple) else ([] if not present else [value])
        index = len(items) - 1 if f.arg == "last" else int(str(f.arg))
        if not 0 <= index < len(items):
            raise FilterError(f"get_index: index out of boundaries: {index} out of {len(items)}")
        return True, items[index]
    if isinstance(value, list | tuple):
        raise FilterError(f"{f.name}: cannot process an array")
    if not present:
        raise FilterError(f"{f.name}: no value to read")
    if f.name == "json_path":
        try:
            document = json.loads(value) if isinstance(value, str) else value
        except ValueError as e:
            raise FilterError(f"json_path: invalid JSON input: {e}") from e
        found = select_json(str(f.arg), document)
        if not found:
            return False, None
        return True, _text(found[0]) if len(found) == 1 else [_text(v) for v in found]
    pattern = re.compile(str(f.arg))
    if f.name == "regex":
        hits = [m.group(0) for m in pattern.finditer(_text(value))]
    else:
        hits = [g or "" for m in pattern.finditer(_text(value)) for g in m.groups()]
    return True, hits[0] if len(hits) == 1 else hits


def _type(value: Any, present: bool) -> str:
    if isinstance(value, list | tuple) and not (len(value) == 2 and value[0] == "duration"):
        return "array"
    if not present or value is None:
        return "nil"
    if isinstance(value, tuple):
        return "duration"
    text = _text(value)
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return "number"
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h)", text):
        return "duration"
    try:
        if isinstance(json.loads(text), dict):
            return "json"
    except ValueError:
        pass
    return "string"


__all__ = ["FILTER_NAMES", "Filter", "FilterError", "apply_filters", "parse_filters"]
