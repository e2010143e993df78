"""Findings and verdicts: what a run concluded and why, with expected and observed values."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Verdict(StrEnum):
    """The outcome of a finished run; ``degraded`` counts as a pass for exit codes."""

    PASS = "pass"
    DEGRADED = "degraded"
    FAIL = "fail"
    ERROR = "error"

    @property
    def ok(self) -> bool:
        return self in (Verdict.PASS, Verdict.DEGRADED)


_SEVERITY = {Verdict.PASS: 0, Verdict.DEGRADED: 1, Verdict.FAIL: 2, Verdict.ERROR: 3}


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
