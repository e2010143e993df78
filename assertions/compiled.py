"""An expectation compiled for the judge, once per expectation rather than once per run.

A probe's expectation lives as long as its config; its compiled nodes and ``forbid`` checks are
immutable, so every run (and every passive trace) of the probe shares them.
"""

from __future__ import annotations

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.tree import Check, CNode, compile_checks, compile_tree

_COMPILED: dict[tuple[int, str], tuple[TraceExpectation, list[CNode], list[list[Check]], bool]] = {}
_COMPILED_MAX = 4096


def compiled(expectation: TraceExpectation, base_path: str) -> tuple[list[CNode], list[list[Check]], bool]:
    """The expectation's nodes, its ``forbid`` checks and whether it (its ``any_of`` alternatives aside) has
    whole-trace rules; compiled on first use.

    The cache entry holds the expectation so its id cannot be reused.
    """
    key = (id(expectation), base_path)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is expectation:
        return hit[1], hit[2], hit[3]
    nodes = compile_tree(expectation.tree, base_path)
    forbid = [compile_checks(c) for c in expectation.forbid]
    whole_rules = expectation.model_copy(update={"any_of": []}).has_whole_trace_rules()
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = (expectation, nodes, forbid, whole_rules)
    return nodes, forbid, whole_rules
