"""Server-rendered dashboard: overview, probe page, run page with the trace waterfall, live updates (SSE).

Jinja2 templates and static files ship in this package; nothing to build. The pages read the same
summaries as the JSON API (``summary.py``); "run again" POSTs to ``/api/probes/{id}/run``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import jinja2
from aiohttp import web

from tracecanary.daemon.alerts.delivery import ChannelHealth
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.web.api import AUTH_COOKIE, ApiAuth, Handler
from tracecanary.daemon.web.control import Control
from tracecanary.daemon.web.dashboard.passive import passive_page
from tracecanary.daemon.web.dashboard.summary import (
    STATE_ORDER,
    RunWindows,
    fmt_age,
    iso_ns,
    probe_status,
    probe_statuses,
    redact,
    run_summary,
)
from tracecanary.daemon.web.dashboard.waterfall import build_waterfall

log = logging.getLogger("tracecanary.dashboard")
HERE = Path(__file__).parent
RUNS_ON_PROBE_PAGE = 100
CHART_W, CHART_H = 720, 160
RUN_APPEAR_S = 10.0
"""How long the live stream waits for a just-fired run to be recorded before answering 404."""
LABELS = {"unknown": "no telemetry"}
"""How a state or verdict reads on the pages when its value alone would mislead."""


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["age"] = fmt_age
    env.filters["iso_ns"] = iso_ns
    env.filters["pretty"] = _pretty
    env.filters["until"] = _until
    env.filters["label"] = lambda v: LABELS.get(v, v)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    env.filters["secs"] = lambda v: "–" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")
    return env


def _pretty(value: Any) -> str:
    """Strings as they are, lists of strings one per line, anything else as indented JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _until(iso: str | None) -> str:
    """``in 42s`` for an ISO time in the future (``due`` when past, ``–`` for none)."""
    if not iso:
        return "–"
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    left = (when - datetime.now(UTC)).total_seconds()
    return f"in {fmt_age(left)}" if left > 0 else "due"


def duration_chart(runs: list[RunRecord]) -> dict[str, Any]:
    """Bars of run durations, oldest left, colored by verdict, for an inline SVG."""
    done = [r for r in reversed(runs) if r.duration_s is not None]
    top = max((r.duration_s or 0.0 for r in done), default=0.0) or 1.0
    step = CHART_W / max(len(done), 1)
    bars = [
        {"x": round(i * step, 2), "w": round(max(step - 1, 1), 2),
         "h": round((r.duration_s or 0.0) / top * (CHART_H - 20), 2),
         "verdict": str(r.verdict) if r.verdict else "none", "run_id": r.run_id,
         "title": f"{r.run_id} {r.verdict or r.status} {(r.duration_s or 0) * 1000:.0f} ms"}
        for i, r in enumerate(done)
    ]
    return {"w": CHART_W, "h": CHART_H, "bars": bars, "top": f"{top * 1000:.0f} ms" if top < 1 else f"{top:.2f} s"}


class Dashboard:
    def __init__(self, control: Control, *, auth: ApiAuth, live_poll_s: float, live_max_s: float) -> None:
        self.control = control
        self.auth = auth
        self.windows = RunWindows()
        self.env = _env()
        self.live_poll_s = live_poll_s
        self.live_max_s = live_max_s

    def html(self, name: str, **ctx: Any) -> str:
        """A rendered template with the config's secrets masked (in their HTML-escaped forms too)."""
        membership = self.control.membership
        cluster = {"mode": membership.mode, "role": membership.role.value, "member": membership.member_id}
        return self.control.secrets().mask_text(self.env.get_template(name).render(cluster=cluster, **ctx))

    def render(self, name: str, **ctx: Any) -> web.Response:
        return web.Response(text=self.html(name, **ctx), content_type="text/html")

    async def overview(self, request: web.Request) -> web.Response:
        rows = await probe_statuses(self.control, self.windows)
        counts = {s: sum(1 for r in rows if r.state == s) for s in STATE_ORDER}
        demo = self.control.demo
        return self.render("overview.html", probes=rows, counts=counts, now_ns=time.time_ns(),
                           channels=await self._failing_channels(),
                           chaos=demo.chaos_state() if demo is not None else None)

    async def incidents(self, request: web.Request) -> web.Response:
        """Open probe incidents, incidents about tracecanary itself, channel health (alert links land here)."""
        alerts = self.control.alerts
        if alerts is None:
            return self.render("incidents.html", enabled=False, incidents=[], system=[], channels=[])
        overview = await alerts.list_alerts(limit=1)
        return self.render("incidents.html", enabled=True, incidents=overview.incidents,
                           system=alerts.system_incidents(), channels=await alerts.channel_health())

    async def _failing_channels(self) -> list[ChannelHealth]:
        """Alert channels that keep failing (expired token, deleted channel …), from the alert manager."""
        if self.control.alerts is None:
            return []
        return [h for h in await self.control.alerts.channel_health() if h.failing]

    async def probe(self, request: web.Request) -> web.Response:
        pid = request.match_info["probe_id"]
        spec = next((p for p in self.control.probes() if p.id == pid), None)
        if spec is None:
            raise web.HTTPNotFound(text=f"unknown probe {pid}")
        status = await probe_status(self.control, spec, windows=self.windows)
        runs = await self.control.store.list_runs(pid, limit=RUNS_ON_PROBE_PAGE)
        shown = self.control.secrets().mask(spec.model_dump(mode="json", exclude_none=True))
        return self.render("probe.html", probe=status, spec=redact(shown),
                           runs=[run_summary(r) for r in runs], chart=duration_chart(runs))

    async def _run_view(self, run_id: str, appear_s: float = 0.0) -> dict[str, Any]:
        """The run page's data; waits up to ``appear_s`` for a just-fired run to be recorded."""
        deadline = anyio.current_time() + appear_s
        while (run := await self.control.store.get_run(run_id, with_spans=True)) is None:
            if anyio.current_time() >= deadline:
                raise web.HTTPNotFound(text=f"unknown run {run_id}")
            await anyio.sleep(self.live_poll_s)
        spans = list(run.spans)
        live = run.status is RunStatus.RUNNING
        if live and not spans:
            spans = list(self.control.live_spans(run.trace_id))
        links = dict(run.links) or dict(self.control.links_for(run.trace_id, run.run_id, run.probe_id))
        return {
            "run": run_summary(run), "findings": run.findings, "live": live,
            "response": redact(run.response) if run.response is not None else None,
            "side_effects": redact(list(run.side_effects)), "outputs": redact(dict(run.outputs)),
            "links": links, "log": run.log, "report": run.trace_report,
            "wf": build_waterfall(spans, run.trace_report, run.trace_id), "span_count": len(spans),
        }

    async def run(self, request: web.Request) -> web.Response:
        return self.render("run.html", **await self._run_view(request.match_info["run_id"]))

    async def run_live(self, request: web.Request) -> web.StreamResponse:
        """SSE: the waterfall fragment each time new spans arrive; ``done`` when the run is stored."""
        run_id = request.match_info["run_id"]
        view = await self._run_view(run_id, appear_s=RUN_APPEAR_S)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        last = -1
        deadline = anyio.current_time() + self.live_max_s
        while anyio.current_time() < deadline:
            if last >= 0:
                view = await self._run_view(run_id)
            if view["span_count"] != last:
                last = view["span_count"]
                html = self.html("_waterfall.html", **view)
                await resp.write(_sse("waterfall", html))
            if not view["live"]:
                await resp.write(_sse("done", view["run"].verdict or view["run"].status))
                break
            await anyio.sleep(self.live_poll_s)
        return resp

    async def chaos(self, request: web.Request) -> web.Response:
        """Toggle a demo fault (only in `tracecanary demo`); the form posts here."""
        demo = self.control.demo
        if demo is None:
            raise web.HTTPNotFound(text="not a demo")
        form = await request.post()
        await demo.set_fault(str(form.get("fault", "")) or None)
        raise web.HTTPSeeOther("/")


    def guard(self, handler: Handler) -> Handler:
        """With ``read_token_required``, pages need the login cookie (or a bearer token)."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.auth.read_token_required and not self.auth.allowed(request, cookie_ok=True):
                if request.path.endswith("/live"):
                    raise web.HTTPUnauthorized(text="log in first")
                raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs)}")
            return await handler(request)

        return guarded

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render("login.html", next=_safe_next(request.query.get("next")), error="")

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        nxt = _safe_next(str(form.get("next", "/")))
        if not self.auth.matches(str(form.get("token", ""))):
            resp = self.render("login.html", next=nxt, error="wrong token")
            resp.set_status(401)
            return resp
        resp = web.HTTPSeeOther(nxt)
        resp.set_cookie(AUTH_COOKIE, str(form["token"]), httponly=True, samesite="Strict", path="/")
        raise resp


def _safe_next(value: str | None) -> str:
    """Only same-site relative paths (no ``//host`` or scheme) as the post-login target."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _sse(event: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n".encode()


def dashboard_routes(
    control: Control, *, api_token: str | None = None, read_token_required: bool = False,
    live_poll_s: float = 0.25, live_max_s: float = 600.0, auth: ApiAuth | None = None,
) -> list[web.AbstractRouteDef]:
    """The dashboard's pages, its SSE stream, its login form and its static files.

    With ``read_token_required`` (and a token) every page asks for the API token once (login form,
    HttpOnly SameSite=Strict cookie); otherwise the pages are open like the API's reads.
    """
    d = Dashboard(control, auth=auth or ApiAuth(api_token, read_token_required), live_poll_s=live_poll_s,
                  live_max_s=live_max_s)
    return [
        web.get("/", d.guard(d.overview)),
        web.get("/probes/{probe_id}", d.guard(d.probe)),
        web.get("/probes/{probe_id}/passive", d.guard(partial(passive_page, d))),
        web.get("/runs/{run_id}", d.guard(d.run)),
        web.get("/runs/{run_id}/live", d.guard(d.run_live)),
        web.get("/incidents", d.guard(d.incidents)),
        web.post("/demo/chaos", d.guard(d.chaos)),
        web.get("/login", d.login_form),
        web.post("/login", d.login),
        web.static("/static", HERE / "static"),
    ]
