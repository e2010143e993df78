"""HTTP response expectations: status, JSON fields present, JSON values, headers, body, latency."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .units import Duration


class DegradedResponse(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_latency: Duration | None = Field(None, description="Over this the run is degraded (still a pass).")


class ResponseExpectation(BaseModel):
    """What the trigger's response must look like."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    status: int | list[int] | str | None = Field(
        None, description="200, [200, 202], or a range \"200-299\"; default: any 2xx."
    )
    json_fields: list[str] = Field(default_factory=list, description="JSON paths that must be present.")
    json_: dict[str, Any] = Field(default_factory=dict, alias="json", description="JSONPath → matcher.")
    headers: dict[str, Any] = Field(default_factory=dict, description="Header name → matcher.")
    body: Any = Field(None, description="Matcher for the body text (e.g. {matches: regex}).")
    max_latency: Duration | None = Field(None, description="Hard latency bound: over it the run fails.")
    degraded: DegradedResponse | None = None
