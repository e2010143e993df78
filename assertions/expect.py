"""The ``expect.trace`` document (owned by the trace-assertions work; see tree.py for matching)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .units import Duration


class TraceExpectation(BaseModel):
    """Expected trace shape; the same document ``tracecanary assert --expect`` takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["buffer", "sentry"] = Field("buffer", description="Where the spans come from.")
    settle: Duration = Field(2.0, description="Quiet time after the last span before whole-trace rules pass.")
    tree: list[dict[str, Any]] = Field(default_factory=list, description="Expected span tree anchors.")
    forbid: list[dict[str, Any]] = Field(default_factory=list)
    limits: dict[str, Any] | None = None
    no_orphans: bool = False
