"""The JSON HTTP API: probes, runs, fire-now, silences and alerts, described at /api/openapi.json.

Auth: ``Authorization: Bearer <daemon.api_token>`` on every write (and on reads when
``read_token_required``), compared with :func:`hmac.compare_digest`. Without a configured token the API
is open (loopback default) but writes still require a JSON content type, so a cross-site form
cannot fire probes without a CORS preflight. Alert routes answer 501 when the daemon has no alert
manager (``control.alerts``).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from tracecanary.daemon.alerts.incidents import IncidentHistory
from tracecanary.daemon.alerts.manager import AlertRecord
from tracecanary.daemon.alerts.silences import ListedSilence, SilenceSettings
from tracecanary.daemon.run.scheduler import OverlapSkipped, RunRefused
from tracecanary.daemon.web.control import Control
from tracecanary.daemon.web.dashboard.summary import (
    Strips,
    iso_ns,
    probe_statuses,
    redact,
    run_detail,
    run_summary,
)
from tracecanary.daemon.web.schema import (
    AckIn,
    AlertsOut,
    ChannelOut,
    ClusterMemberOut,
    ClusterOut,
    ErrorOut,
    FireOut,
    IncidentList,
    IncidentOut,
    ProbeList,
    RunPage,
    SilenceList,
    SilenceOut,
    TimelineOut,
    openapi_document,
)

log = logging.getLogger("tracecanary.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PAGE = 500
AUTH_COOKIE = "tracecanary_token"
"""Set by the dashboard's login form (HttpOnly, SameSite=Strict); accepted for reads only."""
MAX_JSON_BODY = 64 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response(ErrorOut(error=message).model_dump(), status=status)


class ApiAuth:
    """Bearer-token check; the token never appears in a response or a log line."""

    def __init__(self, api_token: str | None, read_token_required: bool) -> None:
        self.update(api_token, read_token_required)

    def update(self, api_token: str | None, read_token_required: bool) -> None:
        """A reloaded token (SIGHUP): the next request is checked against it."""
        self._token = (api_token or "").encode()
        self.read_token_required = read_token_required and bool(self._token)

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def matches(self, given: str) -> bool:
        return bool(self._token) and hmac.compare_digest(given.encode(), self._token)

    def allowed(self, request: web.Request, *, cookie_ok: bool = False) -> bool:
        """A bearer token (or, for reads, the dashboard's login cookie) equal to the configured token."""
        if not self._token:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer":
            return self.matches(given.strip())
        return cookie_ok and self.matches(request.cookies.get(AUTH_COOKIE, ""))

    def guard(self, handler: Handler, *, write: bool) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if (write or self.read_token_required) and not self.allowed(request, cookie_ok=not write):
                log.info("api unauthorized method=%s path=%s", request.method, request.path)
                return web.json_response(
                    ErrorOut(error="missing or wrong bearer token").model_dump(), status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="tracecanary"'},
                )
            if write and request.method == "POST" and request.content_type != "application/json":
                return _error(415, "send Content-Type: application/json")
            return await handler(request)

        return guarded


class Api:
    """Route handlers over a :class:`Control`."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.strips = Strips()

    def _json(self, model: BaseModel, status: int = 200) -> web.Response:
        """Every JSON body leaves through here: secrets are masked by value wherever they sit in it."""
        return web.json_response(self.control.secrets().mask(model.model_dump(mode="json")), status=status)

    async def list_probes(self, request: web.Request) -> web.Response:
        try:
            rows = await probe_statuses(self.control, request.query.get("range", "24h"), strips=self.strips)
        except ValueError as e:
            return _error(400, str(e))
        return self._json(ProbeList(probes=rows, generated_at=iso_ns(time.time_ns())))

    async def list_runs(self, request: web.Request) -> web.Response:
        probe_id = request.match_info["probe_id"]
        if probe_id not in {p.id for p in self.control.probes()}:
            return _error(404, f"unknown probe {probe_id!r}")
        try:
            limit = int(request.query.get("limit", "50"))
            before = int(request.query["before"]) if "before" in request.query else None
        except ValueError:
            return _error(400, "limit and before must be integers")
        if not 1 <= limit <= MAX_PAGE:
            return _error(400, f"limit must be between 1 and {MAX_PAGE}")
        runs = await self.control.store.list_runs(probe_id, limit=limit, before_ns=before)
        next_before = runs[-1].started_ns if len(runs) == limit else None
        return self._json(RunPage(runs=[run_summary(r) for r in runs], next_before=next_before))

    async def get_run(self, request: web.Request) -> web.Response:
        run = await self.control.store.get_run(request.match_info["run_id"], with_spans=True)
        if run is None:
            return _error(404, f"unknown run {request.match_info['run_id']!r}")
        return self._json(await run_detail(self.control, run))

    async def run_probe(self, request: web.Request) -> web.Response:
        """202 with the new run id; 404 unknown probe; 409 when the probe's overlap policy refuses
        (a run is in flight); 503 while the daemon starts or shuts down."""
        probe_id = request.match_info["probe_id"]
        try:
            run_id = await self.control.run_now(probe_id)
        except KeyError:
            return _error(404, f"unknown probe {probe_id!r}")
        except OverlapSkipped as e:
            log.info("api run_now refused probe=%s reason=%s", probe_id, e)
            return _error(409, str(e))
        except RunRefused as e:
            return _error(503, str(e))
        log.info("api run_now probe=%s run=%s", probe_id, run_id)
        return self._json(FireOut(run_id=run_id, probe_id=probe_id, url=f"/api/runs/{run_id}"), status=202)

    async def list_alerts(self, request: web.Request) -> web.Response:
        alerts = self.control.alerts
        if alerts is None:
            return _error(501, "alerting is not configured")
        silences = await alerts.list_silences()
        overview = await alerts.list_alerts()
        return self._json(AlertsOut(
            silences=[silence_out(s) for s in silences], alerts=[asdict(i) for i in overview.incidents],
            notifications=[record_out(r) for r in overview.notifications],
            attempts=[record_out(r) for r in overview.attempts], queue=asdict(overview.queue),
            system=[asdict(i) for i in overview.system],
        ))

    async def list_incidents(self, request: web.Request) -> web.Response:
        alerts = self.control.alerts
        if alerts is None:
            return _error(501, "alerting is not configured")
        found = await alerts.incidents(probe_id=request.query.get("probe") or None)
        return self._json(IncidentList(incidents=[incident_out(i) for i in found],
                                       channels=[ChannelOut(**asdict(h)) for h in await alerts.channel_health()]))

    async def ack_incident(self, request: web.Request) -> web.Response:
        """200 with the incident; 404 when no open incident has that id."""
        alerts = self.control.alerts
        if alerts is None:
            return _error(501, "alerting is not configured")
        body = await request.read()
        if len(body) > MAX_JSON_BODY:
            return _error(400, "body too large")
        try:
            ack = AckIn.model_validate_json(body or b"{}")
        except ValidationError as e:
            return _error(400, validation_text(e))
        incident_id = request.match_info["incident_id"]
        if not await alerts.acknowledge(incident_id, by=ack.by, comment=ack.comment):
            return _error(404, f"no open incident {incident_id!r}")
        found = next(i for i in await alerts.incidents(probe_id=incident_id.partition(":")[0])
                     if i.incident_id == incident_id)
        return self._json(incident_out(found))

    async def list_silences(self, request: web.Request) -> web.Response:
        alerts = self.control.alerts
        if alerts is None:
            return _error(501, "alerting is not configured")
        return self._json(SilenceList(silences=[silence_out(s) for s in await alerts.list_silences()]))

    async def add_silence(self, request: web.Request) -> web.Response:
        alerts = self.control.alerts
        if alerts is None:
            return _error(501, "alerting is not configured")
        if request.content_length is not None and request.content_length > MAX_JSON_BODY:
            return _error(400, "body too large")
        try:
            spec = SilenceSettings.model_validate_json(await request.read())
        except ValidationError as e:
            return _error(400, validation_text(e))
        created = await alerts.add_silence(spec)
        log.info("api silence added id=%s", created.id)
        return self._json(silence_out(created), status=201)

    async def remove_silence(self, request: web.Request) -> web.StreamResponse:
        alerts = self.control.alerts
        if alerts is None:
            return _error(501, "alerting is not configured")
        if not await alerts.remove_silence(request.match_info["silence_id"]):
            return _error(404, "unknown silence")
        return web.Response(status=204)

    async def cluster(self, request: web.Request) -> web.Response:
        m = self.control.membership
        members = [ClusterMemberOut.model_validate(asdict(x)) for x in await m.members()]
        return self._json(ClusterOut(mode=m.mode, member=m.member_id, role=m.role.value, epoch=m.epoch,
                                     members=members, results_idempotent=m.results_idempotent))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


def validation_text(e: ValidationError) -> str:
    """A body's validation errors on one line: ``field: message; …``."""
    return "; ".join(f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors(include_url=False))


def incident_out(i: IncidentHistory) -> IncidentOut:
    return IncidentOut(
        incident_id=i.incident_id, probe_id=i.probe_id, status=i.status, opened_ns=i.opened_ns,
        resolved_ns=i.resolved_ns, acknowledged_by=i.acknowledged_by, acknowledged_ns=i.acknowledged_ns,
        notifications=i.notifications,
        timeline=[TimelineOut(at=iso_ns(t.time_ns), **asdict(t)) for t in i.timeline],
    )


def silence_out(silence: ListedSilence) -> SilenceOut:
    """A listed silence: its id, source, whether it is active now, its kind and its settings."""
    return SilenceOut.model_validate({
        "id": silence.id, "source": silence.source, "active": silence.active, "kind": silence.kind,
        "created_by": silence.created_by, **silence.settings.model_dump(mode="json"),
    })


def record_out(record: AlertRecord) -> dict[str, Any]:
    """An alert event-log entry as JSON, with secret-looking keys of its payload masked."""
    return {"id": record.id, "time_ns": record.time_ns, "kind": record.kind, "data": redact(record.data)}


def api_routes(control: Control, *, api_token: str | None = None, read_token_required: bool = False,
               auth: ApiAuth | None = None) -> list[web.RouteDef]:
    """Every /api route, guarded by bearer auth (writes always; reads when ``read_token_required``).
    ``auth``: a shared checker the daemon updates on reload (instead of ``api_token``)."""
    api = Api(control)
    auth = auth or ApiAuth(api_token, read_token_required)

    def read(h: Handler) -> Handler:
        return auth.guard(h, write=False)

    def write(h: Handler) -> Handler:
        return auth.guard(h, write=True)

    return [
        web.get("/api/openapi.json", api.openapi),
        web.get("/api/probes", read(api.list_probes)),
        web.get("/api/probes/{probe_id}/runs", read(api.list_runs)),
        web.post("/api/probes/{probe_id}/run", write(api.run_probe)),
        web.get("/api/runs/{run_id}", read(api.get_run)),
        web.get("/api/alerts", read(api.list_alerts)),
        web.get("/api/incidents", read(api.list_incidents)),
        web.post("/api/incidents/{incident_id}/ack", write(api.ack_incident)),
        web.get("/api/silences", read(api.list_silences)),
        web.get("/api/cluster", read(api.cluster)),
        web.post("/api/silences", write(api.add_silence)),
        web.delete("/api/silences/{silence_id}", write(api.remove_silence)),
    ]
