"""Propose an ``expect.trace`` document from recorded traces of healthy runs.

The proposal describes the system under test: tracecanary's own spans (the ``tracecanary probe …``
root and its client spans) are left out, so each tree is rooted at the system's entry span (the
server or consumer span that received the probe's request). Structure follows name, service and
kind. Run-specific parts of names (ports, numeric ids, UUIDs, long hex) become ``*`` in a glob
(``POST http://127.0.0.1:*/quote``), or a regex when the name holds glob characters. A node is
required only when every example has it (for repeated siblings: every instance of the parent has
it); repeated siblings become a ``count`` (exact when every example agrees, else a range). Consumer
traces that link back to a span become ``linked`` nodes under it. Attributes are kept only when every
instance agrees and they do not look volatile (ids, timestamps, hosts, ports). The trace's
``max_duration`` is the slowest example's times a margin; if no example has an error span, errors
are forbidden.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

from tracecanary.assertions.spans import Span, SpanKind, StatusCode, is_probe_span

Key = tuple[str, str, int]
"""(the name as proposed — a glob, or ``re:`` and a regex —, service, kind)."""

VOLATILE_KEY = re.compile(
    r"(^|[._])(id|ids|uuid|guid|time|timestamp|date|host|hostname|port|pid|ip|address|addr|peer|"
    r"user_agent|thread|sequence|seq|offset|request_id|trace|span|token|nonce|etag)($|[._])"
    r"|(^|[._])url($|[._])|^http\.target$|^url\.full$|^url\.query$",
    re.IGNORECASE,
)
VOLATILE_VALUE = re.compile(
    r"^[0-9a-f]{16,}$|^[0-9a-f]{8}-[0-9a-f]{4}-|^\d{4}-\d{2}-\d{2}[T ]\d{2}:|^\d{10,}$", re.IGNORECASE
)
MAX_ATTRIBUTES = 8


# Parts of a span name that differ from run to run. A number counts as an id when it is a whole path
# segment, is at least 3 digits long and stands alone, or is the port after a host name or IP address.
_VOLATILE_NAME_PART = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|(?<![0-9a-z])(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{8,}(?![0-9a-z])"
    r"|(?:(?<=[a-z\]]:)|(?<=\.[0-9]:)|(?<=\.[0-9]{2}:)|(?<=\.[0-9]{3}:))[0-9]{2,5}(?![0-9])"
    r"|(?<=/)[0-9]+(?=[/?#\s]|$)"
    r"|(?<![\w.])[0-9]{3,}(?![\w.])",
    re.IGNORECASE,
)


@lru_cache(maxsize=4096)
def name_pattern(name: str) -> str | dict[str, str]:
    """How a proposal names a span: the name itself, with run-specific parts (ports, ids, UUIDs, hex)
    as ``*`` in a glob; ``{matches: regex}`` when the name holds glob characters of its own."""
    parts = _VOLATILE_NAME_PART.split(name)
    if len(parts) == 1 and not any(c in name for c in "*?["):
        return name
    if not any(c in p for p in parts for c in "*?["):
        return re.sub(r"\*+", "*", "*".join(parts))
    return {"matches": "^" + ".+".join(re.escape(p).replace("\\ ", " ") for p in parts) + "$"}


def _key(span: Span) -> Key:
    pattern = name_pattern(span.name)
    return (pattern if isinstance(pattern, str) else "re:" + pattern["matches"], span.service, int(span.kind))


class _Example:
    def __init__(self, spans: Sequence[Span]) -> None:
        self.all_spans = list(spans)
        self.spans = [s for s in self.all_spans if not is_probe_span(s)]
        ids = {s.span_id for s in self.spans}
        self.children: dict[str, list[Span]] = {}
        self.linkers: dict[str, list[Span]] = {}
        for s in self.spans:
            if s.parent_span_id and s.parent_span_id in ids:
                self.children.setdefault(s.parent_span_id, []).append(s)
            for ln in s.links:
                if ln.span_id in ids and not (s.parent_span_id and s.parent_span_id in ids):
                    self.linkers.setdefault(ln.span_id, []).append(s)
        linked = {s.span_id for group in self.linkers.values() for s in group}
        self.roots = [s for s in self.spans
                      if not (s.parent_span_id and s.parent_span_id in ids) and s.span_id not in linked]

    def duration_ns(self) -> int:
        """The whole trace's span, the probe's own spans included (the judge's ``limits`` count them too)."""
        if not self.all_spans:
            return 0
        return max(s.end_ns for s in self.all_spans) - min(s.start_ns for s in self.all_spans)


def _stable_attributes(instances: list[Span]) -> dict[str, Any]:
    first = instances[0].attributes
    out: dict[str, Any] = {}
    for k, v in sorted(first.items()):
        if VOLATILE_KEY.search(k) or not isinstance(v, str | int | float | bool):
            continue
        if isinstance(v, str) and VOLATILE_VALUE.search(v):
            continue
        if all(s.attributes.get(k, object()) == v for s in instances[1:]) and len(out) < MAX_ATTRIBUTES:
            out[k] = v
    return out


def _node(instances: list[tuple[_Example, Span]]) -> dict[str, Any]:
    """One node merging aligned instances (one span per example, or several per example)."""
    span = instances[0][1]
    node: dict[str, Any] = {"span": name_pattern(span.name)}
    if span.service:
        node["service"] = span.service
    if span.kind != SpanKind.UNSPECIFIED:
        node["kind"] = span.kind.name.lower()
    attrs = _stable_attributes([s for _, s in instances])
    if attrs:
        node["attributes"] = attrs
    for rel in ("children", "linked"):
        subs = _merge([(ex, (ex.children if rel == "children" else ex.linkers).get(s.span_id, []))
                       for ex, s in instances])
        if subs:
            node[rel] = subs
    return node


def _size(ex: _Example, span: Span) -> tuple[int, int]:
    kids = ex.children.get(span.span_id, []) + ex.linkers.get(span.span_id, [])
    return len({_key(k) for k in kids}), 1 + sum(_size(ex, k)[1] for k in kids)


def _signature(ex: _Example, span: Span) -> str:
    """A canonical text of the subtree's shape (keys, recursively), equal for equal shapes."""
    kids = ex.children.get(span.span_id, []) + ex.linkers.get(span.span_id, [])
    return f"{_key(span)}[{','.join(sorted(_signature(ex, k) for k in kids))}]"


def _shape_order(ex: _Example, span: Span) -> tuple[int, int, str, int]:
    keys, size = _size(ex, span)
    return -keys, -size, _signature(ex, span), span.start_ns


def _merge(groups: list[tuple[_Example, list[Span]]], *, top: bool = False) -> list[dict[str, Any]]:
    """Nodes for the keys present in every group.

    Repeated siblings are aligned by shape (richest subtree first) across groups; when every
    aligned position merges to the same node they become one node with a count, otherwise one
    node per shape, each with a lower bound only (an upper bound would count the other shapes).
    Top-level anchors are searched in the whole trace, so they only ever get a lower bound.
    """
    per_group: list[dict[Key, list[Span]]] = []
    for ex, spans in groups:
        by_key: dict[Key, list[Span]] = {}
        for s in sorted(spans, key=lambda s: (s.start_ns, s.span_id)):
            by_key.setdefault(_key(s), []).append(s)
        for k, v in by_key.items():
            by_key[k] = sorted(v, key=partial(_shape_order, ex))
        per_group.append(by_key)
    common = set(per_group[0]) if per_group else set()
    for by_key in per_group[1:]:
        common &= set(by_key)
    out: list[dict[str, Any]] = []
    for k in sorted(common, key=lambda k: (min(s.start_ns for s in per_group[0][k]), k)):
        counts = [len(by_key[k]) for by_key in per_group]
        lo, hi = min(counts), max(counts)
        positions = [_node([(ex, by_key[k][j]) for (ex, _), by_key in zip(groups, per_group, strict=True)])
                     for j in range(lo)]
        if all(p == positions[0] for p in positions):
            node = positions[0]
            if top and lo > 1:
                node["count"] = {"gte": lo}
            elif not top and lo == hi and lo != 1:
                node["count"] = lo
            elif not top and lo != hi:
                node["count"] = {"gte": lo, "lte": hi}
            out.append(node)
            continue
        run: list[dict[str, Any]] = []
        for p in [*positions, None]:
            if run and p != run[0]:
                out.append({**run[0], "count": {"gte": len(run)}} if len(run) > 1 else run[0])
                run = []
            if p is not None:
                run.append(p)
    return out


def propose(traces: Sequence[Sequence[Span]], root_name: str | None = None, *,
            margin: float = 1.5) -> dict[str, Any]:
    """An ``expect.trace`` mapping that every example passes (see module docstring)."""
    examples = [_Example(t) for t in traces if t]
    if not examples:
        raise ValueError("no spans in the examples: nothing to propose")
    empty = [i for i, ex in enumerate(examples) if not ex.spans]
    if empty:
        raise ValueError(f"example(s) {empty} hold only tracecanary's own spans: no span of the system under "
                         "test arrived, nothing to propose")
    if root_name is not None:
        roots = [(ex, [s for s in ex.spans if root_name in (s.name, name_pattern(s.name))][:1])
                 for ex in examples]
        missing = [i for i, (_, r) in enumerate(roots) if not r]
        if missing:
            raise ValueError(f"root span {root_name!r} is absent from example(s) {missing}")
        tree = _merge(roots, top=True)
    else:
        tree = _merge([(ex, ex.roots) for ex in examples], top=True)
    doc: dict[str, Any] = {"tree": tree}
    if not any(s.status_code == StatusCode.ERROR for ex in examples for s in ex.spans):
        doc["forbid"] = [{"status": "error"}]
    slowest_ns = max(ex.duration_ns() for ex in examples)
    limit_ms = max(1, math.ceil(slowest_ns * margin / 1e6))
    doc["limits"] = {"max_duration": f"{limit_ms}ms"}
    return doc
