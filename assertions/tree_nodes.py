"""Expected-tree compilation: each expected node's own constraints as checks, and the flattened node list.

A node *locally* matches a span when the node's own constraints hold (name, service, kind,
status, attributes, resource, events, durations); ``compile_checks`` turns them into ``Check``s
that report what they observed when they break, and ``compile_tree`` flattens the expected tree
into indexed ``CNode``s. Matching nodes against spans is ``assertions/tree.py`` (which re-exports
these names).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tracecanary.assertions.expect import NamePattern, SpanConstraint, SpanNode
from tracecanary.assertions.match import Matcher, check, name_matches
from tracecanary.assertions.spans import Span, SpanKind, StatusCode
from tracecanary.assertions.units import format_duration

Check = Callable[[Span], str | None]
"""A compiled constraint: ``None`` when the span satisfies it, else what broke (observed vs expected)."""

_KINDS = {k.name.lower(): k for k in SpanKind}
_STATUSES = {s.name.lower(): s for s in StatusCode}


def _pattern_text(p: NamePattern) -> str:
    return p.describe() if isinstance(p, Matcher) else f'"{p}"'


def describe(spec: SpanConstraint) -> str:
    """How a finding names an expected node: ``span "fetch-gex-data" (svc enrich, kind client)``."""
    head = f"span {_pattern_text(spec.span)}" if spec.span is not None else "any span"
    bits = []
    if spec.service is not None:
        bits.append(f"svc {_pattern_text(spec.service).strip(chr(34))}")
    if spec.kind is not None:
        bits.append(f"kind {spec.kind}")
    if spec.status is not None:
        bits.append(f"status {spec.status}")
    if spec.attributes:
        bits.extend(f"{k}={v!r}" for k, v in list(spec.attributes.items())[:3])
    return head + (f" ({', '.join(bits)})" if bits else "")


def _attr_checks(prefix: str, attrs: dict[str, Any], get: Callable[[Span], Any]) -> list[Check]:
    out: list[Check] = []
    for key, raw in attrs.items():
        def chk(span: Span, key: str = key, raw: Any = raw) -> str | None:
            values = get(span)
            why = check(raw, values.get(key), present=key in values)
            return None if why is None else f"{prefix} {key}: {why}"
        out.append(chk)
    return out


def _event_check(ev: Any) -> Check:
    label = f'event {_pattern_text(ev.name)}' if ev.name is not None else "an event"

    def chk(span: Span) -> str | None:
        for e in span.events:
            if ev.name is not None and not name_matches(ev.name, e.name):
                continue
            if all(check(m, e.attributes.get(k), present=k in e.attributes) is None
                   for k, m in ev.attributes.items()):
                return None
        return f"no {label}" + (f" with {ev.attributes}" if ev.attributes else "")
    return chk


def name_predicate(pattern: NamePattern) -> Callable[[str], bool]:
    """``name_matches`` with the pattern's form decided once: an exact name is a string comparison."""
    if isinstance(pattern, str) and not any(c in pattern for c in "*?["):
        return pattern.__eq__
    if isinstance(pattern, str):
        return compiled_glob(pattern)
    return partial(name_matches, pattern)


def compile_name_check(spec: SpanConstraint) -> Check | None:
    if (name := spec.span) is None:
        return None
    ok = name_predicate(name)
    return lambda s: None if ok(s.name) else f'name "{s.name}", expected {_pattern_text(name)}'


def compile_checks(spec: SpanConstraint, *, with_name: bool = True) -> list[Check]:
    """The node's own constraints, each reporting what it observed when it breaks."""
    checks: list[Check] = []
    if with_name and (name_check := compile_name_check(spec)) is not None:
        checks.append(name_check)
    if (svc := spec.service) is not None:
        svc_ok = name_predicate(svc)
        checks.append(lambda s: None if svc_ok(s.service)
                      else f'service "{s.service}", expected {_pattern_text(svc)}')
    if spec.kind is not None:
        kind = _KINDS[spec.kind]
        checks.append(lambda s: None if s.kind == kind else f"kind {s.kind.name}, expected {kind.name}")
    if spec.status is not None:
        status = _STATUSES[spec.status]
        checks.append(lambda s: None if s.status_code == status
                      else f"status {s.status_code.name}, expected {status.name}"
                      + (f" ({s.status_message})" if s.status_message else ""))
    checks.extend(_attr_checks("attribute", spec.attributes, lambda s: s.attributes))
    checks.extend(_attr_checks("resource", spec.resource, lambda s: s.resource))
    checks.extend(_event_check(ev) for ev in spec.events)
    if (lo := spec.min_duration) is not None:
        checks.append(lambda s: None if s.duration_s >= lo
                      else f"{format_duration(s.duration_s)} < min {format_duration(lo)}")
    if (hi := spec.max_duration) is not None:
        checks.append(lambda s: None if s.duration_s <= hi
                      else f"{format_duration(s.duration_s)} > max {format_duration(hi)}")
    return checks


@dataclass(eq=False)
class CNode:
    """A compiled expected node."""

    idx: int
    path: str
    spec: SpanNode
    checks: list[Check]
    lo: int
    hi: int | None
    relation: str  # "tree" | "children" | "descendants" | "linked"
    parent: CNode | None = None
    children: list[CNode] = field(default_factory=list)
    descendants: list[CNode] = field(default_factory=list)
    linked: list[CNode] = field(default_factory=list)

    def groups(self) -> Iterator[CNode]:
        yield from self.children
        yield from self.descendants
        yield from self.linked

    rest: list[Check] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The name is checked once per distinct span name by the index; the rest per span.
        self.rest = self.checks[1:] if self.spec.span is not None else list(self.checks)

    def local_ok(self, span: Span) -> bool:
        """The node's own constraints hold, its name aside (checked by the index's name cache)."""
        for c in self.rest:
            if c(span) is not None:
                return False
        return True

    def broken(self, span: Span) -> list[str]:
        return [why for c in self.checks if (why := c(span)) is not None]

    def size(self) -> int:
        return 1 + sum(c.size() for c in self.groups())


def compile_tree(anchors: Iterable[SpanNode], base: str = "expect.trace") -> list[CNode]:
    """Flatten the expected tree into indexed nodes (anchors first, in order)."""
    nodes: list[CNode] = []

    def build(spec: SpanNode, path: str, relation: str, parent: CNode | None) -> CNode:
        lo, hi = spec.count_bounds()
        node = CNode(len(nodes), path, spec, compile_checks(spec), lo, hi, relation, parent)
        nodes.append(node)
        for rel in ("children", "descendants", "linked"):
            subs = [build(c, f"{path}.{rel}[{i}]", rel, node) for i, c in enumerate(getattr(spec, rel))]
            getattr(node, rel).extend(subs)
        return node

    for i, spec in enumerate(anchors):
        build(spec, f"{base}.tree[{i}]", "tree", None)
    return nodes


def compiled_glob(pattern: str) -> Callable[[str], bool]:
    """A glob pattern compiled once: ``fnmatch`` semantics, a regex match per name."""
    rx = re.compile(fnmatch.translate(pattern))
    return lambda name: rx.match(name) is not None
