"""Server-rendered dashboard: overview, probe page, run page with the trace waterfall, live updates (SSE).

Jinja2 templates and static files ship in this package; nothing to build, nothing fetched at run time.
The pages read the same summaries as the JSON API (``summary.py``); "run again" POSTs to
``/api/probes/{id}/run``. The incidents and silences pages are ``console.py``; badges and the status
page ``public.py``; what every page shares ``pages.py``.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any
from urllib.parse import urlencode

import anyio
from aiohttp import web

from tracecanary.daemon.alerts.delivery import ChannelHealth
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.store.stats import RANGES_NS
from tracecanary.daemon.web.api import AUTH_COOKIE, ApiAuth
from tracecanary.daemon.web.control import Control
from tracecanary.daemon.web.dashboard import charts
from tracecanary.daemon.web.dashboard.console import Console
from tracecanary.daemon.web.dashboard.pages import HERE, Pages, StripHtml
from tracecanary.daemon.web.dashboard.passive import passive_page
from tracecanary.daemon.web.dashboard.public import Public
from tracecanary.daemon.web.dashboard.summary import STATE_ORDER, Strips, probe_statuses, redact, run_summary
from tracecanary.daemon.web.dashboard.waterfall import build_waterfall
from tracecanary.daemon.web.schema import ProbeStatus

RUNS_PER_PAGE = 50
CHART_W, CHART_H = 720, 160
RUN_APPEAR_S = 10.0
"""How long the live stream waits for a just-fired run to be recorded before answering 404."""
FILTERS = ("range", "tag", "kind", "state", "q")


def duration_chart(runs: list[RunRecord]) -> dict[str, Any]:
    """Bars of run durations (the runs of this history page), oldest left, colored by verdict."""
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


def range_of(request: web.Request) -> str:
    value = request.query.get("range", "24h")
    if value not in RANGES_NS:
        raise web.HTTPBadRequest(text=f"unknown range {value!r} (one of {', '.join(RANGES_NS)})")
    return value


def matches(row: ProbeStatus, tag: str, kind: str, state: str, q: str) -> bool:
    """The overview's filters: tag, kind and state exactly; ``q`` a case-insensitive part of the id."""
    return ((not tag or tag in row.tags) and (not kind or row.kind == kind) and (not state or row.state == state)
            and (not q or q.lower() in row.id.lower()))


class Dashboard(Pages):
    def __init__(self, control: Control, *, auth: ApiAuth, live_poll_s: float, live_max_s: float) -> None:
        super().__init__(control, auth)
        self.live_poll_s = live_poll_s
        self.live_max_s = live_max_s
        self.strips = Strips()
        self.strip_html = StripHtml()

    async def overview(self, request: web.Request) -> web.Response:
        range_key = range_of(request)
        rows = await probe_statuses(self.control, range_key, strips=self.strips)
        f = {k: request.query.get(k, "").strip() for k in ("tag", "kind", "state", "q")}
        shown = [r for r in rows if matches(r, **f)]
        current = {k: v for k, v in {"range": range_key, **f}.items() if v}

        def link(**changes: str) -> str:
            return "/?" + urlencode({k: v for k, v in {**current, **changes}.items() if v and k in FILTERS})

        demo = self.control.demo
        return self.render(
            "overview.html", probes=shown, total=len(rows), f=f, range=range_key, ranges=list(RANGES_NS),
            counts={s: sum(1 for r in rows if r.state == s) for s in STATE_ORDER}, link=link,
            tags=sorted({t for r in rows for t in r.tags}), kinds=sorted({r.kind for r in rows}),
            states=list(STATE_ORDER), strip=self.strip_html, role=self.control.cluster_role(), now_ns=time.time_ns(),
            channels=await self._failing_channels(), chaos=demo.chaos_state() if demo is not None else None)

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
        range_key = range_of(request)
        try:
            before = int(request.query["before"]) if request.query.get("before") else None
        except ValueError:
            raise web.HTTPBadRequest(text="before must be an integer (a run's started_ns)") from None
        now_ns = time.time_ns()
        status = (await probe_statuses(self.control, range_key, probes=[spec], now_ns=now_ns))[0]
        win = charts.window(range_key, now_ns)
        stats = await self.control.store.run_stats(win.since_ns, now_ns, probe_id=pid, bucket_ns=win.bucket_ns)
        buckets = {k: s for (_, k), s in stats.items()}
        runs = await self.control.store.list_runs(pid, limit=RUNS_PER_PAGE, before_ns=before)
        alerts = self.control.alerts
        incidents = await alerts.incidents(probe_id=pid) if alerts is not None else []
        shown = self.control.secrets().mask(spec.model_dump(mode="json", exclude_none=True))
        return self.render(
            "probe.html", probe=status, spec=redact(shown), range=range_key, ranges=list(RANGES_NS),
            runs=[run_summary(r) for r in runs], chart=duration_chart(runs), before=before,
            older=runs[-1].started_ns if len(runs) == RUNS_PER_PAGE else None,
            uptime_chart=charts.uptime_chart(buckets, win), latency_chart=charts.latency_chart(buckets, win),
            incidents=incidents, alerting=alerts is not None)

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
        wf = build_waterfall(spans, run.trace_report, run.trace_id)
        return {
            "run": run_summary(run), "findings": run.findings, "live": live,
            "response": redact(run.response) if run.response is not None else None,
            "side_effects": redact(list(run.side_effects)), "outputs": redact(dict(run.outputs)),
            "links": links, "log": run.log, "report": run.trace_report, "wf": wf, "span_count": len(spans),
            "span_rows": {r.span_id for r in wf.rows if r.kind == "span"},
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
                await resp.write(_sse("waterfall", self.html("_waterfall.html", **view)))
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

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render("login.html", next=_safe_next(request.query.get("next")), error="")

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        nxt = _safe_next(str(form.get("next", "/")))
        if not self.auth.matches(str(form.get("token", ""))):
            return self.render("login.html", status=401, next=nxt, error="wrong token")
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
    """The dashboard's pages, its SSE stream, its forms, badges, its login form and its static files.

    With ``read_token_required`` (and a token) every page asks for the API token once (login form,
    HttpOnly SameSite=Strict cookie), except badges and /status under ``daemon.public_status``;
    otherwise the pages are open like the API's reads. Form writes need the token when one is set.
    """
    auth = auth or ApiAuth(api_token, read_token_required)
    d = Dashboard(control, auth=auth, live_poll_s=live_poll_s, live_max_s=live_max_s)
    console, public = Console(control, auth, d.env), Public(control, auth, d.env)
    return [
        web.get("/", d.guard(d.overview)),
        web.get("/probes/{probe_id}", d.guard(d.probe)),
        web.get("/probes/{probe_id}/passive", d.guard(partial(passive_page, d))),
        web.get("/runs/{run_id}", d.guard(d.run)),
        web.get("/runs/{run_id}/live", d.guard(d.run_live)),
        *console.routes(),
        *public.routes(),
        web.post("/demo/chaos", d.guard(d.chaos)),
        web.get("/login", d.login_form),
        web.post("/login", d.login),
        web.static("/static", HERE / "static"),
    ]
