"""Value matchers: literals or operator maps, shared by span attributes, responses and side effects.

A matcher is written in YAML as a literal (``200``, ``"ok"``) meaning *equals*, or as a map of
operators that must all hold: ``{contains: "ORB"}``, ``{matches: "(?i)error"}``, ``{gt: 3}``,
``{one_of: [a, b]}``, ``{exists: true}``, ``{not: {contains: x}}``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tracecanary.assertions.crossfield import cross_field_rule

OPERATORS = ("equals", "contains", "matches", "gt", "gte", "lt", "lte", "exists", "one_of", "not")


class Matcher(BaseModel):
    """An operator map; every stated operator must hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    equals: Any = None
    contains: Any = None
    matches: str | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    exists: bool | None = None
    one_of: list[Any] | None = None
    not_: Matcher | None = Field(default=None, alias="not")

    @field_validator("matches")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"invalid regex {value!r}: {e}") from e
        return value

    # In the same pass as a sibling's error (e.g. a misspelt operator beside a bad regex).
    _not_empty = cross_field_rule(
        lambda given: None if given else f"empty matcher: expected one of {', '.join(OPERATORS)}")

    def describe(self) -> str:
        parts = []
        for name in self.model_fields_set:
            value = getattr(self, name)
            key = "not" if name == "not_" else name
            rendered = value.describe() if isinstance(value, Matcher) else repr(value)
            parts.append(f"{key} {rendered}")
        return ", ".join(sorted(parts))


ValueMatcher = Matcher | str | int | float | bool | None
"""What a matcher field accepts in config: a literal (equals) or an operator map."""


def coerce_matcher(value: Any) -> Matcher:
    """A literal becomes ``Matcher(equals=literal)``; a map is validated as a Matcher."""
    if isinstance(value, Matcher):
        return value
    if isinstance(value, dict):
        return Matcher.model_validate(value)
    return Matcher(equals=value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _equal(expected: Any, observed: Any) -> bool:
    if expected == observed:
        return True
    # YAML says 200, the attribute says "200" (or the reverse): compare as numbers when both are.
    a, b = _num(expected), _num(observed)
    return a is not None and b is not None and a == b


def check(matcher: Any, observed: Any, *, present: bool = True) -> str | None:
    """``None`` when ``observed`` satisfies ``matcher``, else why not (``expected …, got …``)."""
    m = coerce_matcher(matcher)
    fields = m.model_fields_set
    if "exists" in fields:
        if m.exists and not present:
            return "expected to exist, absent"
        if not m.exists and present:
            return f"expected absent, got {observed!r}"
    if not present and fields - {"exists", "not_"}:
        return f"expected {m.describe()}, absent"
    if "equals" in fields and not _equal(m.equals, observed):
        return f"expected {m.equals!r}, got {observed!r}"
    if "contains" in fields:
        if isinstance(observed, list | tuple):
            if not any(_equal(m.contains, item) for item in observed):
                return f"expected to contain {m.contains!r}, got {observed!r}"
        elif isinstance(observed, str):
            if str(m.contains) not in observed:
                return f"expected to contain {m.contains!r}, got {observed!r}"
        else:
            return f"expected to contain {m.contains!r}, got {observed!r}"
    if "matches" in fields and (
        not isinstance(observed, str) or re.search(m.matches or "", observed) is None
    ):
        return f"expected to match /{m.matches}/, got {observed!r}"
    for op, sym in (("gt", ">"), ("gte", ">="), ("lt", "<"), ("lte", "<=")):
        if op in fields:
            bound = getattr(m, op)
            n = _num(observed)
            ok = n is not None and {
                "gt": n > bound, "gte": n >= bound, "lt": n < bound, "lte": n <= bound
            }[op]
            if not ok:
                return f"expected {sym} {bound:g}, got {observed!r}"
    if "one_of" in fields and not any(_equal(x, observed) for x in m.one_of or []):
        return f"expected one of {m.one_of!r}, got {observed!r}"
    if "not_" in fields and m.not_ is not None and check(m.not_, observed, present=present) is None:
        return f"expected not ({m.not_.describe()}), got {observed!r}"
    return None


def name_matches(pattern: str | Matcher, name: str) -> bool:
    """Span/name patterns: exact, glob with ``*``, or an operator map (``{matches: regex}``)."""
    if isinstance(pattern, Matcher):
        return check(pattern, name) is None
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern == name
