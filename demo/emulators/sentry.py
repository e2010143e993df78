"""A Sentry emulator: envelope ingestion, cron check-ins and the read APIs tracecanary uses.

The real sentry-sdk in a demo service sends envelopes here (DSN ``http://KEY@127.0.0.1:PORT/1``), and
tracecanary's trace source, watcher and cron reporter talk to it over HTTP exactly as to sentry.io:

- ``POST /api/{project_id}/envelope/`` — ``X-Sentry-Auth: Sentry sentry_key=…`` (or ``?sentry_key=``),
  optional ``Content-Encoding: gzip|deflate|br``; ``event``, ``transaction`` and ``check_in`` items.
- ``GET|POST /api/{project_id}/cron/{monitor_slug}/{sentry_key}/?status=…`` — the HTTP check-in API
  (``duration`` in ms there; a JSON body may carry ``monitor_config`` to upsert the monitor).
- Bearer-token API under ``/api/0/``: ``organizations/{org}/trace/{trace_id}/`` (new trace view; 404
  when ``legacy_only``), ``organizations/{org}/events-trace/{trace_id}/`` (legacy),
  ``organizations/{org}/events/`` (Discover, ``query=trace:…``), ``projects/{org}/{project}/events/{id}/``,
  ``organizations/{org}/monitors/{slug}/checkins/``.

Fault injection through the constructor or attributes: ``ingest_delay_s`` (events become visible late,
as in Sentry), ``legacy_only`` (an older self-hosted Sentry) and :meth:`throttle` (429 + Retry-After).
``timestamps="iso"`` serves the trace view's span timestamps as ISO-8601 strings (Sentry's published
example) instead of float epoch seconds (its serializer). Every shape served, and the getsentry/sentry
file it follows, is listed in ``sentry_views``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from sentry_sdk.envelope import Envelope

from tracecanary.demo.emulators.sentry_store import SentryStore, epoch_s
from tracecanary.demo.emulators.sentry_views import (
    DISCOVER_FIELDS,
    TimestampFormat,
    discover_row,
    event_details,
    events_trace_view,
    trace_view,
)
from tracecanary.demo.emulators.serving import Served

log = logging.getLogger("tracecanary.demo.sentry")

MAX_BODY_BYTES = 20 << 20
_AUTH_KEY_RE = re.compile(r"sentry_key=([^,\s]+)")
_JSON = "application/json"
_TRACE_QUERY_RE = re.compile(r"\btrace:([0-9a-fA-F]{32})\b")


class SentryEmulator(Served):
    """An aiohttp app standing in for sentry.io; ``await start()`` returns its base URL.

    ``projects`` maps project id → slug. ``token`` is the API bearer token, ``public_key`` the DSN key.
    """

    label = "sentry"

    def __init__(
        self,
        *,
        org: str = "acme",
        projects: Mapping[str, str] | None = None,
        public_key: str = "publickey0123456789",
        token: str = "sntrys-emulator-token",
        legacy_only: bool = False,
        ingest_delay_s: float = 0.0,
        max_events: int = 50_000,
        timestamps: TimestampFormat = "float",
    ) -> None:
        self.org = org
        self.projects = dict(projects or {"1": "demo"})
        self.public_key = public_key
        self.token = token
        self.legacy_only = legacy_only
        self.timestamps: TimestampFormat = timestamps
        """Span timestamps in the trace view: ``float`` epoch seconds or ``iso`` strings."""
        self.store = SentryStore(max_events=max_events, ingest_delay_s=ingest_delay_s)
        self.api_requests: list[str] = []
        """Paths of bearer-token API requests, in order (tests count polls with it)."""
        self.api_request_times: list[float] = []
        """time.monotonic() of each API request, parallel to ``api_requests``."""
        self._throttle_left = 0
        self._throttle_skip = 0
        self._throttle_retry_after_s = 0.0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def ingest_delay_s(self) -> float:
        return self.store.ingest_delay_s

    @ingest_delay_s.setter
    def ingest_delay_s(self, value: float) -> None:
        self.store.ingest_delay_s = value

    def dsn(self, project_id: str | None = None) -> str:
        """``http://KEY@127.0.0.1:PORT/PROJECT_ID`` for sentry-sdk."""
        pid = project_id or next(iter(self.projects))
        return self.base_url.replace("://", f"://{self.public_key}@", 1) + f"/{pid}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/api/{project_id}/envelope/", self._envelope)
        app.router.add_route("*", "/api/{project_id}/cron/{slug}/{key}/", self._http_check_in)
        api = "/api/0/organizations/{org}"
        app.router.add_get(api + "/trace/{trace_id}/", self._trace)
        app.router.add_get(api + "/events-trace/{trace_id}/", self._events_trace)
        app.router.add_get(api + "/events/", self._discover)
        app.router.add_get(api + "/monitors/{slug}/checkins/", self._monitor_check_ins)
        app.router.add_get("/api/0/projects/{org}/{project}/events/{event_id}/", self._event)
        return app

    def throttle(self, requests: int, retry_after_s: float = 1.0, *, after: int = 0) -> None:
        """Let ``after`` API requests through, then answer ``requests`` with 429 + ``Retry-After``."""
        self._throttle_skip = after
        self._throttle_left = requests
        self._throttle_retry_after_s = retry_after_s

    # --- ingestion ------------------------------------------------------------------------------
    def _check_key(self, request: web.Request) -> None:
        header = request.headers.get("X-Sentry-Auth", "")
        found = _AUTH_KEY_RE.search(header)
        key = found.group(1) if found else request.query.get("sentry_key", "")
        if key != self.public_key:
            raise _error(web.HTTPUnauthorized, "missing or unknown sentry_key")

    def _project_slug(self, request: web.Request) -> str:
        pid = request.match_info["project_id"]
        if pid not in self.projects:
            raise _error(web.HTTPNotFound, "unknown project")
        return self.projects[pid]

    async def _envelope(self, request: web.Request) -> web.Response:
        self._check_key(request)
        slug = self._project_slug(request)
        pid = request.match_info["project_id"]
        body = _decode_body(await request.read())
        try:
            envelope = Envelope.deserialize(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise _error(web.HTTPBadRequest, f"invalid envelope: {e}") from e
        for item in envelope.items:
            kind = item.type
            if kind not in ("event", "transaction", "check_in"):
                continue  # sessions, client reports, attachments: accepted, not stored
            try:
                payload = json.loads(item.get_bytes())
            except ValueError:
                continue
            if kind == "check_in":
                self.store.add_check_in(pid, payload, source="envelope")
            else:
                stored = self.store.add_event("error" if kind == "event" else "transaction", pid, slug, payload)
                log.debug("ingested kind=%s event_id=%s trace_id=%s", stored.kind, stored.event_id, stored.trace_id)
        return web.json_response({"id": envelope.headers.get("event_id")})

    async def _http_check_in(self, request: web.Request) -> web.Response:
        if request.match_info["key"] != self.public_key:
            raise _error(web.HTTPUnauthorized, "unknown sentry_key")
        self._project_slug(request)
        body: dict[str, Any] = {}
        if request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError as e:
                    raise _error(web.HTTPBadRequest, "invalid JSON") from e
        q = request.query
        duration_ms = body.get("duration", q.get("duration"))
        check_in = self.store.add_check_in(
            request.match_info["project_id"],
            {
                "monitor_slug": request.match_info["slug"],
                "check_in_id": body.get("check_in_id") or q.get("check_in_id"),
                "status": body.get("status") or q.get("status"),
                "duration": float(duration_ms) / 1000 if duration_ms is not None else None,
                "environment": body.get("environment") or q.get("environment"),
                "monitor_config": body.get("monitor_config"),
            },
            source="http",
        )
        return web.json_response({"id": check_in.check_in_id}, status=202)

    # --- read API -------------------------------------------------------------------------------
    def _api_guard(self, request: web.Request) -> None:
        self.api_requests.append(request.path)
        self.api_request_times.append(time.monotonic())
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            raise _error(web.HTTPUnauthorized, "Authentication credentials were not provided.")
        if request.match_info.get("org", self.org) != self.org:
            raise _error(web.HTTPNotFound, "The requested resource does not exist")
        if self._throttle_skip > 0:
            self._throttle_skip -= 1
        elif self._throttle_left > 0:
            self._throttle_left -= 1
            raise _error(
                web.HTTPTooManyRequests,
                "You are attempting to use this endpoint too frequently.",
                headers={"Retry-After": f"{self._throttle_retry_after_s:g}"},
            )

    async def _trace(self, request: web.Request) -> web.Response:
        self._api_guard(request)
        if self.legacy_only:
            raise _error(web.HTTPNotFound, "The requested resource does not exist")
        trace_id = request.match_info["trace_id"].lower()
        additional = request.query.getall("additional_attributes", [])
        return web.json_response(trace_view(self.store, trace_id, list(additional), self.timestamps))

    async def _events_trace(self, request: web.Request) -> web.Response:
        self._api_guard(request)
        view = events_trace_view(self.store, request.match_info["trace_id"].lower())
        if not view["transactions"]:
            # Sentry's events-trace answers 404 (empty body) while no transaction of the trace is stored.
            raise web.HTTPNotFound()
        return web.json_response(view)

    async def _event(self, request: web.Request) -> web.Response:
        self._api_guard(request)
        ev = self.store.find_event(request.match_info["event_id"])
        if ev is None or request.match_info["project"] not in (ev.project_slug, ev.project_id):
            raise _error(web.HTTPNotFound, "Event not found")
        return web.json_response(event_details(ev))

    async def _discover(self, request: web.Request) -> web.Response:
        self._api_guard(request)
        query = request.query.get("query", "")
        dataset = request.query.get("dataset", "discover")
        fields = list(request.query.getall("field", [])) or list(DISCOVER_FIELDS)
        found = _TRACE_QUERY_RE.search(query)
        trace_id = found.group(1).lower() if found else None
        kind = {"errors": "error", "transactions": "transaction"}.get(dataset)
        if "event.type:error" in query:
            kind = "error"
        found_events = self.store.visible(kind, trace_id)
        sort = request.query.get("sort", "")
        if sort.lstrip("-") == "timestamp":
            found_events.sort(key=lambda e: epoch_s(e.payload.get("timestamp")), reverse=sort.startswith("-"))
        rows = [discover_row(e, fields) for e in found_events]
        limit = int(request.query.get("per_page", "100"))
        return web.json_response({"data": rows[:limit], "meta": {"fields": {f: "string" for f in fields}}})

    async def _monitor_check_ins(self, request: web.Request) -> web.Response:
        self._api_guard(request)
        monitor = self.store.monitors.get(request.match_info["slug"])
        if monitor is None:
            raise _error(web.HTTPNotFound, "Monitor not found")
        rows = [
            {
                "id": c.check_in_id,
                "status": c.status,
                "duration": round(c.duration_s * 1000) if c.duration_s is not None else None,
                "environment": c.environment,
                "monitorConfig": monitor.config,
            }
            for c in reversed(monitor.check_ins)
        ]
        return web.json_response(rows)


def _error(cls: type[web.HTTPError], detail: str, **kwargs: Any) -> web.HTTPError:
    """Sentry's error body: ``{"detail": …}`` as JSON."""
    return cls(text=json.dumps({"detail": detail}), content_type=_JSON, **kwargs)


def _decode_body(raw: bytes) -> bytes:
    """aiohttp already inflates ``Content-Encoding: gzip|deflate`` (and ``br`` with brotli) within
    ``client_max_size``; a body that still starts with the gzip magic was double-wrapped by a proxy."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        # Bounded inflate: a small bomb must not expand past the body cap in memory.
        data = zlib.decompressobj(wbits=31).decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error as e:
        raise _error(web.HTTPBadRequest, f"cannot decode gzip body: {e}") from e
    if len(data) > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=len(data))
    return data


async def _serve(port: int, org: str, legacy_only: bool) -> None:
    import anyio

    emulator = SentryEmulator(org=org, legacy_only=legacy_only)
    await emulator.start(port=port)
    try:
        print(f"sentry emulator {emulator.base_url} dsn={emulator.dsn()} token={emulator.token}", flush=True)
        await anyio.sleep_forever()
    finally:
        await emulator.stop()


if __name__ == "__main__":
    import argparse

    import anyio

    parser = argparse.ArgumentParser(description="Run the Sentry emulator on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--org", default="acme")
    parser.add_argument("--legacy-only", action="store_true")
    args = parser.parse_args()
    anyio.run(_serve, args.port, args.org, args.legacy_only)
