"""Findings and verdicts: what a run concluded and why, with expected and observed values."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Verdict(StrEnum):
    """The outcome of a finished run; ``degraded`` counts as a pass for exit codes.

    ``unknown``: the run could not be judged because none of the services the trace expectation
    names sent any span (the telemetry pipeline, not the system, is suspect; see ``telemetry.py``).
    It is not ``ok`` (``check`` exits 1) but it is not a failure either: it never opens or closes a
    probe's incident.
    """

    PASS = "pass"
    DEGRADED = "degraded"
    UNKNOWN = "unknown"
    FAIL = "fail"
    ERROR = "error"

    @property
    def ok(self) -> bool:
        return self in (Verdict.PASS, Verdict.DEGRADED)


_SEVERITY = {Verdict.PASS: 0, Verdict.DEGRADED: 1, Verdict.UNKNOWN: 2, Verdict.FAIL: 3, Verdict.ERROR: 4}


def rank(verdict: Verdict) -> int:
    """How severe a verdict is: pass < degraded < unknown < fail < error."""
    return _SEVERITY[verdict]


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The most severe of several verdicts (``pass`` when there are none)."""
    return max(verdicts, key=_SEVERITY.__getitem__, default=Verdict.PASS)


class Finding(BaseModel):
    """One judged fact about a run, stating the expected and the observed value.

    ``type`` is a low-cardinality class (``response``, ``trace.missing``, ``trace.forbid``,
    ``side_effect``, ``error`` …) used for metrics; ``path`` says where in the expectation it
    comes from (``expect.trace.tree[0].children[1]``); ``message`` is the sentence a person reads.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    severity: Verdict = Verdict.FAIL
    path: str = ""
    message: str
    expected: Any = None
    observed: Any = None
    details: dict[str, Any] = Field(default_factory=dict)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.message}"


def verdict_of(findings: Iterable[Finding]) -> Verdict:
    """A run's verdict from its findings: the worst severity among them."""
    return worst(f.severity for f in findings)
