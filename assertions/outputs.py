"""Tracetest-style outputs: values kept from a judged trace (``expect.trace.outputs``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tracecanary.assertions.expect import TraceOutput
from tracecanary.assertions.filters import FilterError, apply_filters
from tracecanary.assertions.selectors import select, span_value
from tracecanary.assertions.spans import Span


def trace_outputs(outputs: Sequence[TraceOutput], spans: Sequence[Span]) -> dict[str, Any]:
    """NAME → value for each output found: the first selected span (by start time) carrying the attribute
    (and, with filters, yielding a value through them). An output no span provides is left out (the run
    records what it saw; a missing value is no failure)."""
    found: dict[str, Any] = {}
    for out in outputs:
        filters = out.filters
        for span in select(out.selector, spans):
            present, value = span_value(span, out.key)
            if present and filters:
                try:
                    present, value = apply_filters(value, filters)
                except FilterError:
                    present = False
            if present:
                found[out.name] = value[1] if isinstance(value, tuple) and value[:1] == ("duration",) else value
                break
    return found
