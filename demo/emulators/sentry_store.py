"""What the Sentry emulator has ingested, and the API shapes Sentry serves it in.

Kept apart from the HTTP layer so the shapes can be read against Sentry's own serializers:
- trace (new): ``src/sentry/snuba/trace.py`` ``SerializedSpan`` / ``SerializedIssue`` — a list of
  top-level spans with nested ``children``, ``errors``, ``occurrences``; errors not attached to a span
  are top-level entries with ``event_type: "error"``.
- events-trace (legacy): ``organization_events_trace.py`` ``FullResponse`` / ``TraceError`` —
  ``{"transactions": [...], "orphan_errors": [...]}`` where ``children`` are transactions.
- event details: ``entries: [{"type": "spans", "data": [...]}, …]``.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Json = dict[str, Any]


@dataclass
class Ingested:
    """One stored event (``error`` or ``transaction``) with the project it came in through."""

    kind: str
    project_id: str
    project_slug: str
    payload: Json
    visible_at: float
    """time.monotonic() from which queries see it (the emulator's ingest delay)."""
    issue_id: int = 0

    @property
    def event_id(self) -> str:
        return str(self.payload.get("event_id") or "")

    @property
    def trace_ctx(self) -> Json:
        ctx = (self.payload.get("contexts") or {}).get("trace") or {}
        return ctx if isinstance(ctx, dict) else {}

    @property
    def trace_id(self) -> str:
        return str(self.trace_ctx.get("trace_id") or "")


@dataclass
class CheckIn:
    """One cron check-in as Sentry stores it (``duration`` in seconds)."""

    check_in_id: str
    monitor_slug: str
    status: str
    duration_s: float | None
    environment: str | None
    received_at: float
    source: str
    """``envelope`` or ``http``."""


@dataclass
class Monitor:
    """A cron monitor, upserted by check-ins carrying ``monitor_config``."""

    slug: str
    project_id: str
    config: Json = field(default_factory=dict)
    check_ins: list[CheckIn] = field(default_factory=list)


def error_title(payload: Json) -> str:
    """Sentry's title: ``Type: value`` of the last exception, else the message."""
    values = (payload.get("exception") or {}).get("values") or []
    if values:
        last = values[-1]
        typ, val = last.get("type") or "Error", last.get("value") or ""
        return f"{typ}: {val}" if val else str(typ)
    logentry = payload.get("logentry") or {}
    return str(logentry.get("formatted") or logentry.get("message") or payload.get("message") or "<unlabeled event>")


class SentryStore:
    """Bounded in-memory store of events, transactions and cron check-ins."""

    def __init__(self, *, max_events: int = 50_000, ingest_delay_s: float = 0.0) -> None:
        self.events: deque[Ingested] = deque(maxlen=max_events)
        self.monitors: dict[str, Monitor] = {}
        self.ingest_delay_s = ingest_delay_s
        self._issue_ids: dict[str, int] = {}

    # --- ingestion ------------------------------------------------------------------------------
    def add_event(self, kind: str, project_id: str, project_slug: str, payload: Json) -> Ingested:
        payload.setdefault("event_id", uuid.uuid4().hex)
        issue_id = 0
        if kind == "error":
            issue_id = self._issue_ids.setdefault(error_title(payload), len(self._issue_ids) + 1)
        item = Ingested(kind, project_id, project_slug, payload, time.monotonic() + self.ingest_delay_s, issue_id)
        self.events.append(item)
        return item

    def add_check_in(self, project_id: str, body: Json, source: str) -> CheckIn:
        slug = str(body.get("monitor_slug") or "")
        monitor = self.monitors.setdefault(slug, Monitor(slug=slug, project_id=project_id))
        if isinstance(body.get("monitor_config"), dict):
            monitor.config = dict(body["monitor_config"])
        check_in_id = str(body.get("check_in_id") or uuid.uuid4().hex)
        duration = body.get("duration")
        existing = next((c for c in monitor.check_ins if c.check_in_id == check_in_id), None)
        if existing is not None:
            # A finishing check-in updates the in_progress one it names (Sentry's semantics).
            existing.status = str(body.get("status") or existing.status)
            existing.duration_s = float(duration) if duration is not None else existing.duration_s
            return existing
        check_in = CheckIn(
            check_in_id=check_in_id,
            monitor_slug=slug,
            status=str(body.get("status") or ""),
            duration_s=float(duration) if duration is not None else None,
            environment=body.get("environment"),
            received_at=time.time(),
            source=source,
        )
        monitor.check_ins.append(check_in)
        return check_in

    # --- queries --------------------------------------------------------------------------------
    def visible(self, kind: str | None = None, trace_id: str | None = None) -> list[Ingested]:
        now = time.monotonic()
        return [
            e
            for e in self.events
            if e.visible_at <= now
            and (kind is None or e.kind == kind)
            and (trace_id is None or e.trace_id == trace_id)
        ]

    def find_event(self, event_id: str) -> Ingested | None:
        return next((e for e in self.visible() if e.event_id == event_id), None)

    @property
    def transactions(self) -> list[Ingested]:
        return [e for e in self.events if e.kind == "transaction"]

    @property
    def errors(self) -> list[Ingested]:
        return [e for e in self.events if e.kind == "error"]

    @property
    def check_ins(self) -> list[CheckIn]:
        return [c for m in self.monitors.values() for c in m.check_ins]


# --- serializers ----------------------------------------------------------------------------------
def _span_node(txn: Ingested, raw: Json, *, segment: bool, additional: list[str]) -> Json:
    start = epoch_s(raw.get("start_timestamp"))
    end = epoch_s(raw.get("timestamp"))
    op = str(raw.get("op") or "")
    description = str(txn.payload.get("transaction") or "") if segment else str(raw.get("description") or "")
    attrs: Json = {}
    if "span.status" in additional and raw.get("status"):
        attrs["span.status"] = raw.get("status")
    for key in additional:
        data = raw.get("data") or {}
        if key in data:
            attrs[key] = data[key]
    parent = raw.get("parent_span_id") or None
    return {
        "event_type": "span",
        "event_id": raw.get("span_id"),
        "transaction_id": txn.event_id,
        "project_id": int(txn.project_id) if txn.project_id.isdigit() else txn.project_id,
        "project_slug": txn.project_slug,
        "profile_id": "",
        "profiler_id": "",
        "parent_span_id": None if parent in (None, "0" * 16) else parent,
        "start_timestamp": start,
        "end_timestamp": end,
        "measurements": {},
        "duration": round((end - start) * 1000, 3),
        "transaction": txn.payload.get("transaction") or "",
        "is_transaction": segment,
        "description": description,
        "sdk_name": (txn.payload.get("sdk") or {}).get("name", ""),
        "op": op,
        "name": op,
        "children": [],
        "errors": [],
        "occurrences": [],
        "additional_attributes": attrs,
    }


def transaction_spans(txn: Ingested, additional: list[str] | None = None) -> list[Json]:
    """The transaction's segment span followed by its child spans, in the trace API's shape."""
    extra = additional or []
    segment = dict(txn.trace_ctx)
    segment["start_timestamp"] = txn.payload.get("start_timestamp")
    segment["timestamp"] = txn.payload.get("timestamp")
    nodes = [_span_node(txn, segment, segment=True, additional=extra)]
    nodes += [_span_node(txn, s, segment=False, additional=extra) for s in txn.payload.get("spans") or []]
    return nodes


def serialize_issue(err: Ingested) -> Json:
    """An error in the new trace API (``SerializedIssue``)."""
    return {
        "event_type": "error",
        "event_id": err.event_id,
        "issue_id": err.issue_id,
        "project_id": int(err.project_id) if err.project_id.isdigit() else err.project_id,
        "project_slug": err.project_slug,
        "start_timestamp": epoch_s(err.payload.get("timestamp")),
        "transaction": err.payload.get("transaction") or "",
        "description": error_title(err.payload),
        "level": err.payload.get("level") or "error",
        "culprit": err.payload.get("culprit") or err.payload.get("transaction") or "",
        "short_id": f"{err.project_slug.upper()}-{err.issue_id}",
        "issue_type": "error",
    }


def trace_view(store: SentryStore, trace_id: str, additional: list[str]) -> list[Json]:
    """``GET /organizations/{org}/trace/{trace_id}/``: top-level spans with nested children."""
    nodes: list[Json] = []
    for txn in store.visible("transaction", trace_id):
        nodes += transaction_spans(txn, additional)
    nodes.sort(key=lambda n: n["start_timestamp"])
    by_id = {n["event_id"]: n for n in nodes}
    result: list[Json] = []
    for node in nodes:
        parent = by_id.get(node["parent_span_id"])
        (parent["children"] if parent is not None else result).append(node)
    for err in store.visible("error", trace_id):
        target = by_id.get(err.trace_ctx.get("span_id"))
        (target["errors"] if target is not None else result).append(serialize_issue(err))
    return result


def _trace_error(err: Ingested, generation: int | None) -> Json:
    return {
        "event_id": err.event_id,
        "issue_id": err.issue_id,
        "span": err.trace_ctx.get("span_id") or "",
        "project_id": int(err.project_id) if err.project_id.isdigit() else err.project_id,
        "project_slug": err.project_slug,
        "title": error_title(err.payload),
        "level": err.payload.get("level") or "error",
        "timestamp": epoch_s(err.payload.get("timestamp")),
        "event_type": "error",
        "generation": generation,
    }


def events_trace_view(store: SentryStore, trace_id: str) -> Json:
    """Legacy ``GET /organizations/{org}/events-trace/{trace_id}/``: nested transactions only."""
    txns = sorted(store.visible("transaction", trace_id), key=lambda t: epoch_s(t.payload.get("start_timestamp")))
    owner: dict[str, Ingested] = {}
    for t in txns:
        owner[str(t.trace_ctx.get("span_id"))] = t
        for s in t.payload.get("spans") or []:
            owner[str(s.get("span_id"))] = t
    full: dict[str, Json] = {}
    for t in txns:
        start, end = epoch_s(t.payload.get("start_timestamp")), epoch_s(t.payload.get("timestamp"))
        full[t.event_id] = {
            "event_id": t.event_id,
            "span_id": t.trace_ctx.get("span_id"),
            "timestamp": end,
            "start_timestamp": start,
            "transaction": t.payload.get("transaction") or "",
            "transaction.duration": round((end - start) * 1000),
            "transaction.op": t.trace_ctx.get("op") or "",
            "transaction.status": t.trace_ctx.get("status") or "unknown",
            "project_id": int(t.project_id) if t.project_id.isdigit() else t.project_id,
            "project_slug": t.project_slug,
            "parent_span_id": t.trace_ctx.get("parent_span_id") or None,
            "parent_event_id": None,
            "profile_id": None,
            "generation": 0,
            "errors": [],
            "performance_issues": [],
            "children": [],
            "measurements": {},
            "tags": [[k, v] for k, v in (t.payload.get("tags") or {}).items()],
        }
    roots: list[Json] = []
    for t in txns:
        node = full[t.event_id]
        parent_txn = owner.get(str(node["parent_span_id"]))
        if parent_txn is not None and parent_txn is not t:
            node["parent_event_id"] = parent_txn.event_id
            full[parent_txn.event_id]["children"].append(node)
        else:
            roots.append(node)
    _set_generations(roots, 0)
    orphans: list[Json] = []
    for err in store.visible("error", trace_id):
        holder = owner.get(str(err.trace_ctx.get("span_id")))
        if holder is not None:
            node = full[holder.event_id]
            node["errors"].append(_trace_error(err, node["generation"]))
        else:
            orphans.append(_trace_error(err, None))
    return {"transactions": roots, "orphan_errors": orphans}


def _set_generations(nodes: list[Json], generation: int) -> None:
    for n in nodes:
        n["generation"] = generation
        _set_generations(n["children"], generation + 1)


def event_details(ev: Ingested) -> Json:
    """``GET /projects/{org}/{project}/events/{event_id}/`` (the subset tracecanary reads)."""
    payload = ev.payload
    entries: list[Json] = []
    if ev.kind == "transaction":
        entries.append({"type": "spans", "data": list(payload.get("spans") or [])})
    if payload.get("exception"):
        entries.append({"type": "exception", "data": payload["exception"]})
    return {
        "id": ev.event_id,
        "eventID": ev.event_id,
        "projectID": ev.project_id,
        "type": ev.kind if ev.kind == "transaction" else "error",
        "title": payload.get("transaction") if ev.kind == "transaction" else error_title(payload),
        "message": error_title(payload) if ev.kind == "error" else "",
        "startTimestamp": epoch_s(payload.get("start_timestamp")) or None,
        "endTimestamp": epoch_s(payload.get("timestamp")),
        "contexts": payload.get("contexts") or {},
        "tags": [{"key": k, "value": v} for k, v in (payload.get("tags") or {}).items()],
        "entries": entries,
    }


DISCOVER_FIELDS = ("id", "title", "message", "level", "timestamp", "trace", "trace.span", "project", "event.type")


def discover_row(ev: Ingested, fields: list[str]) -> Json:
    """One row of ``GET /organizations/{org}/events/`` for the requested fields."""
    values: Json = {
        "id": ev.event_id,
        "title": error_title(ev.payload) if ev.kind == "error" else ev.payload.get("transaction"),
        "message": error_title(ev.payload) if ev.kind == "error" else "",
        "level": ev.payload.get("level") or ("error" if ev.kind == "error" else "info"),
        "timestamp": datetime.fromtimestamp(epoch_s(ev.payload.get("timestamp"))).astimezone().isoformat(),
        "trace": ev.trace_id,
        "trace.span": ev.trace_ctx.get("span_id") or "",
        "project": ev.project_slug,
        "project.name": ev.project_slug,
        "event.type": "transaction" if ev.kind == "transaction" else "error",
        "issue.id": ev.issue_id or None,
    }
    return {f: values.get(f) for f in fields}


def epoch_s(value: Any) -> float:
    """A timestamp as an SDK sends it (epoch seconds, or an RFC 3339 string) in epoch seconds; else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
