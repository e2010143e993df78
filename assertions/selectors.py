"""The Tracetest dialect: selectors and assertions, for users who already write Tracetest specs.

Selectors: ``span[name="x" service.name="y"]`` (AND by space inside ``[]``), ``A, B`` (OR),
``span[db.statement contains "SELECT"]``, ``span[...] span[...]`` (descendant chaining) and the
pseudo-classes ``:first``, ``:last``, ``:nth_child(n)`` (by start time). An empty selector selects
every span. Assertions: ``attr:http.status_code = 200``, ``attr:tracetest.span.duration < 500ms``,
``attr:tracetest.selected_spans.count >= 1``, and the short forms ``duration < 50ms`` and
``count >= 1``; operators ``= != < <= > >= contains not-contains``; Tracetest's filters between key and
operator (``attr:payload | json_path '$.id' = "143"``, ``assertions/filters.py``). Every selected span must
satisfy an assertion; ``count`` assertions judge the selection's size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tracecanary.assertions.filters import Filter, FilterError, apply_filters, parse_filters
from tracecanary.assertions.spans import Span
from tracecanary.assertions.units import InvalidDurationError, format_duration, parse_duration_s


class SelectorSyntaxError(ValueError):
    """A selector or assertion that does not parse; the message quotes it and says where."""


@dataclass(frozen=True)
class Cond:
    key: str
    op: str
    value: Any


@dataclass(frozen=True)
class Step:
    conds: tuple[Cond, ...]
    pseudo: tuple[tuple[str, int], ...]  # ("first"|"last"|"nth_child", n)


@dataclass(frozen=True)
class Assertion:
    text: str
    key: str
    op: str
    value: Any
    filters: tuple[Filter, ...] = ()


_OPS = ("not-contains", "contains", "<=", ">=", "!=", "=", "<", ">")
_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|([^\s\]"\']+))')
_COUNT_KEYS = {"count", "tracetest.selected_spans.count"}
_DURATION_KEYS = {"duration", "tracetest.span.duration"}


def _literal(raw: str, quoted: bool) -> Any:
    if quoted:
        return raw
    if raw in ("true", "false"):
        return raw == "true"
    try:
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        pass
    try:
        return ("duration", parse_duration_s(raw))
    except InvalidDurationError:
        return raw


def _parse_conds(body: str, text: str) -> tuple[Cond, ...]:
    conds: list[Cond] = []
    rest = body.strip()
    pat = re.compile(r'([A-Za-z_][\w.\-]*)\s*(' + "|".join(re.escape(o) for o in _OPS) + r')\s*')
    while rest:
        m = pat.match(rest)
        if not m:
            raise SelectorSyntaxError(f"selector {text!r}: expected attribute operator value at {rest!r}")
        rest = rest[m.end():]
        t = _TOKEN.match(rest)
        if not t or t.end() == 0:
            raise SelectorSyntaxError(f"selector {text!r}: missing value after {m.group(0).strip()!r}")
        quoted = t.group(3) is None
        raw = t.group(1) if t.group(1) is not None else t.group(2) if t.group(2) is not None else t.group(3)
        conds.append(Cond(m.group(1), m.group(2), _literal(raw, quoted)))
        rest = rest[t.end():].strip()
    return tuple(conds)


_STEP = re.compile(r'\s*span(?:\[((?:[^\]"]|"(?:[^"\\]|\\.)*")*)\])?((?::(?:first|last|nth_child\(\s*\d+\s*\)))*)')


@lru_cache(maxsize=1024)
def parse_selector(text: str) -> tuple[tuple[Step, ...], ...]:
    """OR-groups of descendant-chained steps; ``()`` (no groups) selects every span."""
    if not text.strip():
        return ()
    groups: list[tuple[Step, ...]] = []
    rest = text
    steps: list[Step] = []
    while True:
        m = _STEP.match(rest)
        if not m or m.end() == 0:
            raise SelectorSyntaxError(f"selector {text!r}: expected span[...] at {rest.strip()!r}")
        pseudo = tuple(("nth_child", int(p[10:-1].strip())) if p.startswith("nth_child") else (p, 0)
                       for p in re.findall(r":(first|last|nth_child\(\s*\d+\s*\))", m.group(2) or ""))
        steps.append(Step(_parse_conds(m.group(1) or "", text), pseudo))
        rest = rest[m.end():]
        stripped = rest.strip()
        if not stripped:
            groups.append(tuple(steps))
            return tuple(groups)
        if stripped.startswith(","):
            groups.append(tuple(steps))
            steps = []
            rest = stripped[1:]
        elif not rest[:1].isspace():
            raise SelectorSyntaxError(f"selector {text!r}: unexpected {stripped!r}")


@lru_cache(maxsize=1024)
def parse_assertion(text: str) -> Assertion:
    """``[attr:]key [| filter …] op value``; raises SelectorSyntaxError naming the assertion."""
    m = re.match(r'^\s*(?:attr:)?([A-Za-z_][\w.\-]*)', text)
    try:
        filters, rest = parse_filters(text[m.end():]) if m else ((), "")
    except FilterError as e:
        raise SelectorSyntaxError(f"assertion {text!r}: {e}") from e
    tail = re.match(r'^\s+(' + "|".join(re.escape(o) for o in _OPS) + r')\s+(.+?)\s*$', rest) if m else None
    if not m or not tail:
        raise SelectorSyntaxError(f"assertion {text!r}: expected '[attr:]key [| filter …] operator value', e.g. "
                                  "'attr:http.status_code = 200'")
    raw = tail.group(2)
    if "${" in raw:
        raise SelectorSyntaxError(f"assertion {text!r}: expressions are not supported")
    t = _TOKEN.fullmatch(raw)
    quoted = bool(t and t.group(3) is None)
    value = _literal(raw[1:-1] if quoted else raw, quoted)
    return Assertion(text, m.group(1), tail.group(1), value, filters)


def _span_type(span: Span) -> str:
    a = span.attributes
    if "http.method" in a or "http.request.method" in a:
        return "http"
    if "db.system" in a:
        return "database"
    if "messaging.system" in a:
        return "messaging"
    if "rpc.system" in a:
        return "rpc"
    return "general"


def span_value(span: Span, key: str) -> tuple[bool, Any]:
    """(present, value) of a selector/assertion key on a span."""
    if key in ("name", "tracetest.span.name"):
        return True, span.name
    if key in ("kind", "tracetest.span.kind"):
        return True, span.kind.name.lower()
    if key in ("service.name",) and span.service:
        return True, span.service
    if key in ("status", "tracetest.span.status"):
        return True, span.status_code.name.lower()
    if key in _DURATION_KEYS:
        return True, ("duration", span.duration_s)
    if key == "tracetest.span.type":
        return True, _span_type(span)
    if key in span.attributes:
        return True, span.attributes[key]
    if key in span.resource:
        return True, span.resource[key]
    return False, None


def _num(v: Any) -> float | None:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "duration":
        return float(v[1])
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def compare(observed: Any, op: str, expected: Any, *, duration_key: bool = False) -> bool:
    if duration_key and isinstance(expected, int | float) and not isinstance(expected, bool):
        expected = ("duration", expected / 1e9)  # Tracetest durations without a unit are nanoseconds
    if isinstance(observed, list) and op in ("contains", "not-contains"):  # a filter's list: membership
        hit = any(compare(item, "=", expected) for item in observed)
        return hit if op == "contains" else not hit
    if op in ("contains", "not-contains"):
        hit = str(_plain(expected)) in str(_plain(observed))
        return hit if op == "contains" else not hit
    a, b = _num(observed), _num(expected)
    if a is not None and b is not None:
        return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    o, e = str(_plain(observed)), str(_plain(expected))
    if isinstance(observed, bool) or isinstance(expected, bool):
        o, e = o.lower(), e.lower()
    return {"=": o == e, "!=": o != e, "<": o < e, "<=": o <= e, ">": o > e, ">=": o >= e}[op]


def _plain(v: Any) -> Any:
    return v[1] if isinstance(v, tuple) and len(v) == 2 and v[0] == "duration" else v


def _show(v: Any) -> str:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "duration":
        return format_duration(float(v[1]))
    return repr(v)


def _step_matches(step: Step, span: Span) -> bool:
    for c in step.conds:
        present, value = span_value(span, c.key)
        if not present or not compare(value, c.op, c.value, duration_key=c.key in _DURATION_KEYS):
            return False
    return True


def _pseudo(step: Step, ids: list[Span]) -> list[Span]:
    for name, n in step.pseudo:
        ids = sorted(ids, key=lambda s: (s.start_ns, s.span_id))
        if name == "first":
            ids = ids[:1]
        elif name == "last":
            ids = ids[-1:]
        else:
            ids = ids[n - 1:n] if n >= 1 else []
    return ids


def select(selector: str, spans: Sequence[Span]) -> list[Span]:
    """The spans a selector picks, by start time."""
    groups = parse_selector(selector)
    if not groups:
        return sorted(spans, key=lambda s: (s.start_ns, s.span_id))
    by_id = {s.span_id: s for s in spans}
    chosen: dict[str, Span] = {}
    for steps in groups:
        current = _pseudo(steps[0], [s for s in spans if _step_matches(steps[0], s)])
        for step in steps[1:]:
            anchors = {s.span_id for s in current}
            below = []
            for s in spans:
                p = by_id.get(s.parent_span_id or "")
                hops = 0
                while p is not None and hops < 10_000:
                    if p.span_id in anchors:
                        below.append(s)
                        break
                    p = by_id.get(p.parent_span_id or "")
                    hops += 1
            current = _pseudo(step, [s for s in below if _step_matches(step, s)])
        chosen.update((s.span_id, s) for s in current)
    return sorted(chosen.values(), key=lambda s: (s.start_ns, s.span_id))


def run_check(selector: str, assertions: Sequence[str], spans: Sequence[Span]) -> list[str]:
    """Failure messages (expected vs observed) for one check; empty when every assertion holds."""
    picked = select(selector, spans)
    where = f"selector {selector!r}" if selector else "all spans"
    out: list[str] = []
    for text in assertions:
        a = parse_assertion(text)
        if a.key in _COUNT_KEYS:
            if not compare(len(picked), a.op, a.value):
                out.append(f"{text}: {where} selected {len(picked)} span(s), expected {a.op} {_show(a.value)}")
            continue
        if not picked:
            out.append(f"{text}: {where} selected no spans")
            continue
        bad = []
        for s in picked:
            present, value = span_value(s, a.key)
            try:
                present, value = apply_filters(value, a.filters) if present and a.filters else (present, value)
            except FilterError as e:
                bad.append(f"{s.label()}: {e}")
                continue
            ok = present and compare(value, a.op, a.value, duration_key=a.key in _DURATION_KEYS and not a.filters)
            if not ok:
                shown = a.key + "".join(f" | {f.text()}" for f in a.filters)
                bad.append(f"{s.label()} has {_show(value) if present else 'no ' + shown}")
        if bad:
            out.append(f"{text}: {len(bad)} of {len(picked)} selected span(s) fail: " + "; ".join(bad[:3]))
    return out
