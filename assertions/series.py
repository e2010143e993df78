"""Prometheus series: samples, PromQL series selectors, and the arithmetic ``expect.metrics`` judges with.

A selector is PromQL's instant-vector selector without range or offset: a metric name and/or label
matchers in braces, ``http_requests_total{route="/webhook", method!="GET", status=~"2.."}``. The four
matchers are PromQL's: ``=``, ``!=``, ``=~`` and ``!~``; regexes are anchored at both ends, as in
PromQL. Samples come from a scrape (``prometheus_client``'s exposition parser, in the watcher) or from
an instant query; they are plain data here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_STRING = r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'" + r"|`[^`]*`"
_MATCHER_RE = re.compile(rf"\s*({_LABEL})\s*(=~|!~|!=|=)\s*({_STRING})\s*(,|$)")
_SELECTOR_RE = re.compile(rf"^\s*({_NAME})?\s*(?:\{{(.*)\}})?\s*$", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One series' value at one scrape or query: the sample name (``http_requests_total``,
    ``…_bucket``), its labels and the value."""

    name: str
    labels: Mapping[str, str]
    value: float

    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Identity of the series (name and sorted labels)."""
        return self.name, tuple(sorted(self.labels.items()))

    def __str__(self) -> str:
        return series_text(self.name, self.labels)


def series_text(name: str, labels: Mapping[str, str]) -> str:
    """``name{a="1",b="2"}`` as Prometheus prints a series (labels sorted)."""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if inner else (name or "{}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """One ``label op "value"`` of a selector."""

    label: str
    op: str
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        observed = labels.get(self.label, "")  # PromQL: an absent label is the empty string
        if self.op == "=":
            return observed == self.value
        if self.op == "!=":
            return observed != self.value
        assert self.regex is not None
        hit = self.regex.fullmatch(observed) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.label}{self.op}"{_escape(self.value)}"'


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed series selector; ``text`` is how it was written."""

    text: str
    name: str | None
    matchers: tuple[LabelMatcher, ...]

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse ``name{label op "value", …}``; ValueError naming what is wrong."""
        m = _SELECTOR_RE.match(text)
        if m is None or not text.strip():
            raise ValueError(f"invalid series selector {text!r}: expected name{{label=\"value\", …}}")
        name, body = m.group(1), m.group(2)
        matchers: list[LabelMatcher] = []
        pos, body = 0, body or ""
        while body[pos:].strip():
            mm = _MATCHER_RE.match(body, pos)
            if mm is None:
                raise ValueError(f"invalid series selector {text!r}: cannot read label matcher at "
                                 f"{body[pos:].strip()[:40]!r} (label, one of = != =~ !~, a quoted value)")
            label, op, raw = mm.group(1), mm.group(2), _unquote(mm.group(3))
            regex = None
            if op in ("=~", "!~"):
                try:
                    regex = re.compile(raw)
                except re.error as e:
                    raise ValueError(f"invalid series selector {text!r}: bad regex {raw!r} for {label}: {e}") from e
            matchers.append(LabelMatcher(label, op, raw, regex))
            pos = mm.end()
        names = [x.value for x in matchers if x.label == "__name__" and x.op == "="]
        if name is None and names:
            name, matchers = names[0], [x for x in matchers if not (x.label == "__name__" and x.op == "=")]
        if name is None and not any(x.op in ("=", "=~") and x.value for x in matchers):
            raise ValueError(f"invalid series selector {text!r}: name a metric or a label matcher that is not empty")
        return cls(text.strip(), name, tuple(matchers))

    def matches(self, sample: Sample, *, suffixes: Sequence[str] = ("",)) -> bool:
        """Whether ``sample`` is a series of this selector (its name plus one of ``suffixes``)."""
        return bool(self.select((sample,), suffixes=suffixes))

    def select(self, samples: Iterable[Sample], *, suffixes: Sequence[str] = ("",)) -> list[Sample]:
        """The samples of this selector (named by its name plus one of ``suffixes``)."""
        names = None if self.name is None else frozenset(self.name + s for s in suffixes)
        out = []
        for sample in samples:
            if names is not None and sample.name not in names:
                continue
            named = {"__name__": sample.name}
            if all(m.matches(named if m.label == "__name__" else sample.labels) for m in self.matchers):
                out.append(sample)
        return out

    def same_name(self, samples: Iterable[Sample]) -> list[Sample]:
        """Samples of this selector's metric whatever their labels (to explain a miss)."""
        if self.name is None:
            return []
        return [s for s in samples if s.name == self.name or s.name.startswith(self.name + "_")]

    def __str__(self) -> str:
        return self.text


def increases(before: Sequence[Sample], after: Sequence[Sample]) -> list[tuple[Sample, float | None, float]]:
    """(series after, value before or None when it did not exist, increase) per series of ``after``.

    A series absent before counts from 0 (prometheus_client shows a labelled child only once it has
    been touched); a value lower than before is a counter reset, and then the increase is the new
    value (as PromQL's ``increase``)."""
    prior = {s.key(): s.value for s in before}
    out = []
    for s in after:
        was = prior.get(s.key())
        base = 0.0 if was is None else was
        out.append((s, was, s.value - base if s.value >= base else s.value))
    return out


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` over cumulative bucket counts by upper bound (``le``).

    Linear interpolation inside the bucket holding the rank; the lowest bucket starts at 0 when its
    bound is positive; a rank in the ``+Inf`` bucket gives the highest finite bound. None when there
    are no observations (or no ``+Inf`` bucket)."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    counts = [buckets[b] for b in bounds]
    for i in range(1, len(counts)):  # buckets summed across series may be non-monotonic after resets
        counts[i] = max(counts[i], counts[i - 1])
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    i = next(i for i, c in enumerate(counts) if c >= rank)
    if i == len(bounds) - 1:
        return bounds[-2] if len(bounds) > 1 else None
    lower = 0.0 if i == 0 else bounds[i - 1]
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    below = 0.0 if i == 0 else counts[i - 1]
    in_bucket = counts[i] - below
    if in_bucket <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / in_bucket


def le_bound(labels: Mapping[str, str]) -> float | None:
    """The ``le`` label of a bucket as a number (``+Inf`` → inf); None when absent or not a number."""
    raw = labels.get("le")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None
