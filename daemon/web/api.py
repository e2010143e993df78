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
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from tracecanary.daemon.alerts.silences import SilenceSettings
from tracecanary.daemon.web.control import Control
from tracecanary.daemon.web.dashboard.summary import (
    RunWindows,
    iso_ns,
    maybe_await,
    probe_statuses,
    redact,
    run_detail,
    run_summary,
)
from tracecanary.daemon.web.schema import (
    AlertsOut,
    ErrorOut,
    FireOut,
    ProbeList,
    RunPage,
    SilenceOut,
    openapi_document,
)

log = logging.getLogger("tracecanary.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PAGE = 500
AUTH_COOKIE = "tracecanary_token"
"""Set by the dashboard's login form (HttpOnly, SameSite=Strict); accepted for reads only."""
MAX_JSON_BODY = 64 * 1024


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def _error(status: int, message: str) -> web.Response:
    return web.json_response(ErrorOut(error=message).model_dump(), status=status)


class ApiAuth:
    """Bearer-token check; the token never appears in a response or a log line."""

    def __init__(self, api_token: str | None, read_token_required: bool) -> None:
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
        self.windows = RunWindows()

    def _alerts(self) -> Any:
        return getattr(self.control, "alerts", None)

    async def list_probes(self, request: web.Request) -> web.Response:
        rows = await probe_statuses(self.control, self.windows)
        return _json(ProbeList(probes=rows, generated_at=iso_ns(time.time_ns())))

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
        return _json(RunPage(runs=[run_summary(r) for r in runs], next_before=next_before))

    async def get_run(self, request: web.Request) -> web.Response:
        run = await self.control.store.get_run(request.match_info["run_id"], with_spans=True)
        if run is None:
            return _error(404, f"unknown run {request.match_info['run_id']!r}")
        return _json(await run_detail(self.control, run))

    async def run_probe(self, request: web.Request) -> web.Response:
        """202 with the new run id; 404 unknown probe; 409 when the probe's overlap policy refuses
        (a run is in flight); 503 while the daemon starts or shuts down."""
        from tracecanary.daemon.run.scheduler import OverlapSkipped, RunRefused

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
        return _json(FireOut(run_id=run_id, probe_id=probe_id, url=f"/api/runs/{run_id}"), status=202)

    async def list_alerts(self, request: web.Request) -> web.Response:
        alerts = self._alerts()
        if alerts is None:
            return _error(501, "alerting is not configured")
        silences = [silence_out(s) for s in await maybe_await(alerts.list_silences())]
        lister = getattr(alerts, "list_alerts", None)
        listed = await maybe_await(lister()) if lister is not None else []
        if isinstance(listed, dict):  # AlertManager: incidents, notifications, attempts, queue
            return _json(AlertsOut(
                silences=silences, alerts=[_plain(a) for a in listed.get("incidents", [])],
                notifications=[_plain(a) for a in listed.get("notifications", [])],
                attempts=[_plain(a) for a in listed.get("attempts", [])],
                queue=_plain(listed["queue"]) if isinstance(listed.get("queue"), dict) else None,
            ))
        return _json(AlertsOut(silences=silences, alerts=[_plain(a) for a in listed]))

    async def add_silence(self, request: web.Request) -> web.Response:
        alerts = self._alerts()
        if alerts is None:
            return _error(501, "alerting is not configured")
        if request.content_length is not None and request.content_length > MAX_JSON_BODY:
            return _error(400, "body too large")
        try:
            spec = SilenceSettings.model_validate_json(await request.read())
        except ValidationError as e:
            return _error(400, "; ".join(
                f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors(include_url=False)
            ))
        try:
            created = await maybe_await(alerts.add_silence(spec))
        except ValueError as e:
            return _error(400, str(e))
        if isinstance(created, str):
            listed = {str(x.get("id")): x for x in await maybe_await(alerts.list_silences()) if isinstance(x, dict)}
            created = listed.get(created, (created, spec))
        out = silence_out(created)
        log.info("api silence added id=%s", out.id)
        return _json(out, status=201)

    async def remove_silence(self, request: web.Request) -> web.StreamResponse:
        alerts = self._alerts()
        if alerts is None:
            return _error(501, "alerting is not configured")
        removed = await maybe_await(alerts.remove_silence(request.match_info["silence_id"]))
        if removed is False:
            return _error(404, "unknown silence")
        return web.Response(status=204)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


def silence_out(value: Any) -> SilenceOut:
    """A silence as the alert manager lists it — ``(id, SilenceSettings)``, a model or a dict."""
    active: bool | None = None
    if isinstance(value, tuple) and len(value) == 2:
        sid, settings = value
        active = settings.active_at(time.time()) if isinstance(settings, SilenceSettings) else None
        data = {**_plain(settings), "id": str(sid)}
    else:
        data = _plain(value)
    data.setdefault("id", "")
    if active is not None:
        data["active"] = active
    return SilenceOut.model_validate(data)


def _plain(value: Any) -> dict[str, Any]:
    """A silence/alert object as a JSON-able dict, with secret-looking keys masked."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    elif hasattr(value, "__dict__"):
        data = dict(vars(value))
    else:
        data = {"value": str(value)}
    out = redact(data)
    return {k: (v if isinstance(v, str | int | float | bool | list | dict) or v is None else str(v))
            for k, v in out.items()}


def api_routes(control: Control, *, api_token: str | None, read_token_required: bool = False) -> list[web.RouteDef]:
    """Every /api route, guarded by bearer auth (writes always; reads when ``read_token_required``)."""
    api = Api(control)
    auth = ApiAuth(api_token, read_token_required)

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
        web.post("/api/silences", write(api.add_silence)),
        web.delete("/api/silences/{silence_id}", write(api.remove_silence)),
    ]
