"""The HTTP API's response and request models, and the OpenAPI 3.1 document generated from them.

Handlers in ``api.py`` build every JSON body through these models, so the document served at
``/api/openapi.json`` and the bodies cannot drift apart (tests validate live responses against it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from tracecanary.daemon.alerts.silences import SilenceSettings

ProbeState = Literal["ok", "degraded", "unknown", "failing", "silenced", "pending", "skipped"]
"""``unknown``: the last final run got no spans from the services it expects (the dashboard: "no telemetry")."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryItem(_Out):
    """One run in a probe's history strip."""

    run_id: str
    verdict: str | None = Field(description="pass | degraded | unknown | fail | error, or null while running/aborted.")
    status: str = Field(description="running | finished | aborted")
    started_ns: int


class RunSummary(_Out):
    """A run without its spans, log and findings' details."""

    run_id: str
    probe_id: str
    kind: str
    attempt: int
    first_run_id: str
    trace_id: str
    status: str = Field(description="running | finished | aborted")
    verdict: str | None = Field(description="pass | degraded | unknown | fail | error; null while running or "
                                "when aborted. unknown: none of the services the trace expectation names sent "
                                "spans (the telemetry pipeline is suspect).")
    started_ns: int
    started_at: str = Field(description="ISO 8601, UTC.")
    finished_ns: int | None
    duration_s: float | None
    abort_reason: str | None
    final: bool = Field(description="False when a retry followed this attempt.")
    span_count: int
    time_to_verdict_s: float | None
    finding_count: int
    top_finding: str | None = Field(description="The first finding's message, for lists.")


class ProbeStatus(_Out):
    """A probe as the overview shows it."""

    id: str
    kind: str
    description: str
    tags: list[str]
    paused: bool
    schedule: str = Field(description="'every 60s', 'cron 0 8 * * * (UTC)' or 'manual'.")
    state: ProbeState
    silenced: bool
    last_run: RunSummary | None
    last_verdict: str | None
    last_verdict_age_s: float | None
    next_run: str | None = Field(description="ISO 8601 time of the next scheduled run.")
    success_ratio_24h: float | None = Field(description="Uptime over the last 24 h: passed (or degraded) final "
                                            "runs over those that passed or failed; unknown runs count in neither.")
    runs_24h: int
    range: str = Field(description="The range of uptime, runs_in_range and the percentiles: 1h | 24h | 7d | 30d.")
    uptime: float | None = Field(description="Uptime over the range (as success_ratio_24h).")
    runs_in_range: int = Field(description="Judged final runs over the range.")
    p50_duration_s: float | None = Field(description="Median run duration over the range (histogram estimate).")
    p95_duration_s: float | None = Field(description="95th percentile of run durations over the range "
                                         "(histogram estimate, within a bin's width).")
    history: list[HistoryItem] = Field(description="Latest runs, newest first.")


class ProbeList(_Out):
    probes: list[ProbeStatus]
    generated_at: str


class RunPage(_Out):
    """One page of a probe's runs, newest first; pass ``next_before`` as ``before`` for the next page."""

    runs: list[RunSummary]
    next_before: int | None


class FindingOut(_Out):
    type: str
    severity: str
    path: str
    message: str
    expected: Any = None
    observed: Any = None
    details: dict[str, Any] = Field(default_factory=dict)


class SpanOut(_Out):
    """A span as ``assertions.spans.span_to_dict`` writes it."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int = Field(description="OTLP SpanKind number.")
    start_ns: int
    end_ns: int
    service: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]
    status_code: int = Field(description="0 unset, 1 ok, 2 error.")
    status_message: str
    scope: str


class TreeNode(_Out):
    """A span and its children (by parent id); orphans and roots are top-level nodes."""

    span_id: str
    name: str
    service: str
    orphan: bool
    children: list[TreeNode]


class TraceTree(_Out):
    trace_id: str
    roots: list[TreeNode]


class RunDetail(_Out):
    run: RunSummary
    findings: list[FindingOut]
    response: dict[str, Any] | None
    trace_report: dict[str, Any] | None
    side_effects: list[dict[str, Any]]
    outputs: dict[str, Any]
    links: dict[str, str]
    log: str
    live: bool = Field(description="True when the spans come from the live buffer (the run is still going).")
    spans: list[SpanOut]
    traces: list[TraceTree]


class FireOut(_Out):
    run_id: str
    probe_id: str
    url: str = Field(description="API URL of the new run.")


class SilenceOut(BaseModel):
    """A stored silence: its id, whether it is active now, and its settings."""

    model_config = ConfigDict(extra="allow")
    id: str
    active: bool | None = None


class AlertsOut(_Out):
    """Silences, open incidents, and the latest notifications and delivery attempts."""

    silences: list[SilenceOut]
    alerts: list[dict[str, Any]] = Field(description="Open incidents: probes whose alert state is not ok.")
    notifications: list[dict[str, Any]] = Field(default_factory=list)
    attempts: list[dict[str, Any]] = Field(default_factory=list, description="Delivery attempts per channel.")
    queue: dict[str, Any] | None = None
    system: list[dict[str, Any]] = Field(default_factory=list, description="Open incidents about tracecanary "
                                         "itself (a failing alert channel, the results store …): key, summary, "
                                         "detail, opened_ns.")


class TimelineOut(_Out):
    """One step of an incident: opened, notified, attempt, held (by a silence), acknowledged, resolved."""

    time_ns: int
    at: str = Field(description="ISO 8601, UTC.")
    what: Literal["opened", "notified", "attempt", "held", "acknowledged", "resolved"]
    event: str | None = Field(description="The announced transition: failing, reminder, recovered, degraded.")
    channel: str | None
    outcome: str | None = Field(description="For an attempt: sent | retry | failed | expired | dropped.")
    detail: str


class IncidentOut(_Out):
    """An incident of a probe with its timeline (oldest first)."""

    incident_id: str = Field(description="'<probe id>:<first failing run id>'.")
    probe_id: str
    status: Literal["open", "resolved"]
    opened_ns: int
    resolved_ns: int | None
    acknowledged_by: str | None
    acknowledged_ns: int | None
    notifications: int = Field(description="Announcements sent for it (failing, reminders, recovered).")
    timeline: list[TimelineOut]


class ChannelOut(_Out):
    """An alert channel's delivery health."""

    channel: str
    failing: bool
    consecutive_failures: int
    failing_since_ns: int | None
    last_error: str | None
    last_success_ns: int | None
    last_failure_ns: int | None
    pending: int


class IncidentList(_Out):
    """Open incidents first, then past ones newest first; and the alert channels' health."""

    incidents: list[IncidentOut]
    channels: list[ChannelOut]


class AckIn(BaseModel):
    """Who acknowledges, and why."""

    model_config = ConfigDict(extra="forbid")
    by: str = Field("api", min_length=1, max_length=200, description="Who acknowledges (shown in the timeline).")
    comment: str = Field("", max_length=2000)


class SilenceList(_Out):
    """Configured silences, then the ones added through the API."""

    silences: list[SilenceOut]


class ClusterMemberOut(_Out):
    """A replica of the cluster as it last reported itself."""

    member: str
    role: str = Field(description="active | standby | single | member, as last reported (left: it stopped).")
    address: str | None = Field(None, description="Its API address (host:port).")
    started_ns: int
    heartbeat_ns: int = Field(description="When it last reported (epoch ns, the database's clock).")
    alive: bool = Field(description="Whether that report is recent.")
    epoch: int | None = Field(None, description="The leader epoch it holds (the active one).")
    partitions: list[int] | None = Field(None, description="Mode kafka: the spans-topic partitions it owns.")
    probes: int | None = Field(None, description="Mode kafka: how many probes it fires now.")


class ClusterOut(_Out):
    """This replica's place in its cluster (``daemon.cluster``)."""

    mode: Literal["single", "standby", "kafka"]
    member: str = Field(description="This replica's member id.")
    role: Literal["active", "standby", "single", "member"]
    epoch: int | None = Field(None, description="The leader epoch this replica holds while active.")
    members: list[ClusterMemberOut]
    results_idempotent: bool | None = Field(
        None, description="Mode kafka: whether this member publishes to results_topic with an idempotent "
        "producer (false: the broker refused InitProducerId, as tansu does, and it fell back to a plain one).")


class ErrorOut(_Out):
    error: str


SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    HistoryItem, RunSummary, ProbeStatus, ProbeList, RunPage, FindingOut, SpanOut, TreeNode, TraceTree,
    RunDetail, FireOut, SilenceOut, AlertsOut, TimelineOut, IncidentOut, ChannelOut, IncidentList, SilenceList,
    ClusterMemberOut, ClusterOut, ErrorOut,
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad request", 401: "Missing or wrong bearer token", 404: "Not found",
        409: "The probe's overlap policy refused the run (a run is in flight)",
        415: "Body must be application/json", 501: "Alerting is not configured",
        503: "The daemon is starting or shutting down",
    }
    return {str(c): _json("ErrorOut", text[c]) for c in codes}


def _param(name: str, where: str, schema: dict[str, Any], description: str, required: bool) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": description}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (JSON Schema 2020-12 components from the models)."""
    _, defs = models_json_schema(
        [*((m, "serialization") for m in SCHEMA_MODELS), (SilenceSettings, "validation"), (AckIn, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    probe_id = _param("probe_id", "path", {"type": "string"}, "Probe id.", True)
    paths: dict[str, Any] = {
        "/api/probes": {"get": {
            "operationId": "listProbes", "summary": "Every probe with its state, last verdict and next run.",
            "parameters": [_param("range", "query", {"enum": ["1h", "24h", "7d", "30d"], "default": "24h"},
                                  "Range of uptime and percentiles.", False)],
            "responses": {"200": _json("ProbeList", "Probes, failing first."), **_errors(400, 401)},
        }},
        "/api/probes/{probe_id}/runs": {"get": {
            "operationId": "listRuns", "summary": "A probe's runs, newest first (cursor pagination).",
            "parameters": [
                probe_id,
                _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                       "Page size.", False),
                _param("before", "query", {"type": "integer"}, "Cursor: next_before of the previous page.", False),
            ],
            "responses": {"200": _json("RunPage", "A page of runs."), **_errors(400, 401, 404)},
        }},
        "/api/probes/{probe_id}/run": {"post": {
            "operationId": "runProbe", "summary": "Fire the probe now.", "parameters": [probe_id],
            "responses": {"202": _json("FireOut", "The run was started."), **_errors(401, 404, 409, 415, 503)},
        }},
        "/api/runs/{run_id}": {"get": {
            "operationId": "getRun", "summary": "One run: findings, response, trace tree, links, log.",
            "parameters": [_param("run_id", "path", {"type": "string"}, "Run id.", True)],
            "responses": {"200": _json("RunDetail", "The run."), **_errors(401, 404)},
        }},
        "/api/alerts": {"get": {
            "operationId": "listAlerts", "summary": "Active silences and alert states.",
            "responses": {"200": _json("AlertsOut", "Silences and alerts."), **_errors(401, 501)},
        }},
        "/api/cluster": {"get": {
            "operationId": "getCluster", "summary": "This replica's cluster mode and role, and the members.",
            "responses": {"200": _json("ClusterOut", "The cluster as this replica sees it."), **_errors(401)},
        }},
        "/api/incidents": {"get": {
            "operationId": "listIncidents", "summary": "Open and past incidents with their timelines; channel health.",
            "parameters": [_param("probe", "query", {"type": "string"}, "Only this probe's incidents.", False)],
            "responses": {"200": _json("IncidentList", "Incidents, open first."), **_errors(401, 501)},
        }},
        "/api/incidents/{incident_id}/ack": {"post": {
            "operationId": "ackIncident", "summary": "Acknowledge an open incident: no more reminders; the "
                                                    "recovery still goes out.",
            "parameters": [_param("incident_id", "path", {"type": "string"}, "Incident id.", True)],
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("AckIn")}}},
            "responses": {"200": _json("IncidentOut", "The acknowledged incident."),
                          **_errors(400, 401, 404, 415, 501)},
        }},
        "/api/silences": {"get": {
            "operationId": "listSilences", "summary": "Configured silences, then the ones added through the API.",
            "responses": {"200": _json("SilenceList", "Silences."), **_errors(401, 501)},
        }, "post": {
            "operationId": "addSilence", "summary": "Silence probes by id glob or tag.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SilenceSettings")}}},
            "responses": {"201": {"description": "The silence.", "content": {"application/json": {
                "schema": _ref("SilenceOut")}}}, **_errors(400, 401, 415, 501)},
        }},
        "/api/silences/{silence_id}": {"delete": {
            "operationId": "removeSilence", "summary": "End a silence.",
            "parameters": [_param("silence_id", "path", {"type": "string"}, "Silence id.", True)],
            "responses": {"204": {"description": "Removed."}, **_errors(401, 404, 501)},
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tracecanary API", "version": "1",
            "description": "Probes, runs with their judged traces, silences and alerts. Writes need "
                           "`Authorization: Bearer <daemon.api_token>`; reads too when configured.",
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "loginCookie": {"type": "apiKey", "in": "cookie", "name": "tracecanary_token",
                                "description": "Set by the dashboard's /login; accepted for reads only."},
            },
        },
        "security": [{"bearer": []}, {"loginCookie": []}, {}],
        "paths": paths,
    }
