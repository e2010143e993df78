"""What may be shown outside: a status badge per probe (``/badge/<probe>.svg``, shields-style, for READMEs)
and a read-only status page per tag group (``/status``).

Both follow the read rules: open unless ``protect_reads``; with it, open only under
``daemon.public_status`` (and then they show states and uptime, never findings, runs or config).
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import jinja2
from aiohttp import web

from tracecanary.daemon.store.stats import RANGES_NS
from tracecanary.daemon.web.api import ApiAuth
from tracecanary.daemon.web.control import Control
from tracecanary.daemon.web.dashboard.pages import Pages, pct
from tracecanary.daemon.web.dashboard.summary import probe_statuses

COLOURS = {"pass": "#2e9d5b", "ok": "#2e9d5b", "degraded": "#d9a400", "fail": "#d64545", "failing": "#d64545",
           "error": "#8e44ad", "unknown": "#2f6fb0", "silenced": "#5b6b7b", "pending": "#8a93a0"}
"""The dashboard's palette (style.css), by verdict and by state."""
UNTAGGED = "untagged"


def _text_w(text: str) -> int:
    """Rough width of Verdana 11px text (shields' metric is per glyph; 7 px a character is close)."""
    return 10 + sum(4 if c in "il.:1 " else 8 if c in "mwMW%" else 7 for c in text)


def badge_svg(label: str, value: str, colour: str) -> str:
    """A flat shields-style badge: grey label, coloured value."""
    lw, vw = _text_w(label), _text_w(value)
    w = lw + vw
    lbl, val = escape(label), escape(value)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" aria-label="{lbl}: {val}">'
        f"<title>{lbl}: {val}</title>"
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{w}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/>'
        f'<rect x="{lw}" width="{vw}" height="20" fill="{colour}"/><rect width="{w}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{lw / 2:g}" y="14">{lbl}</text><text x="{lw + vw / 2:g}" y="14">{val}</text></g></svg>'
    )


def _svg(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="image/svg+xml",
                        headers={"Cache-Control": "no-cache, max-age=0"})


class Public(Pages):
    def __init__(self, control: Control, auth: ApiAuth, env: jinja2.Environment) -> None:
        super().__init__(control, auth, env)

    async def badge(self, request: web.Request) -> web.Response:
        """``?type=verdict`` (default: the last verdict) or ``?type=uptime&range=7d`` (default 24h)."""
        pid = request.match_info["probe_id"]
        spec = next((p for p in self.control.probes() if p.id == pid), None)
        if spec is None:
            return _svg(badge_svg(pid, "unknown probe", COLOURS["pending"]), 404)
        kind, range_key = request.query.get("type", "verdict"), request.query.get("range", "24h")
        if kind not in ("verdict", "uptime") or range_key not in RANGES_NS:
            return _svg(badge_svg(pid, "bad query", COLOURS["pending"]), 400)
        row = (await probe_statuses(self.control, range_key, probes=[spec]))[0]
        if kind == "uptime":
            up = row.uptime
            colour = COLOURS["pending"] if up is None else COLOURS[
                "pass" if up >= 0.999 else "degraded" if up >= 0.95 else "fail"]
            return _svg(badge_svg(f"{pid} {range_key}", pct(up), colour))
        value = "silenced" if row.silenced else (row.last_verdict or "pending")
        return _svg(badge_svg(pid, value, COLOURS.get(value, COLOURS["pending"])))

    async def status(self, request: web.Request) -> web.Response:
        """Probes grouped by tag (``?tag=`` one group): state, uptime over 24 h and 30 days."""
        rows = await probe_statuses(self.control, "30d")
        only = request.query.get("tag", "").strip()
        groups: dict[str, list[object]] = {}
        for r in sorted(rows, key=lambda r: r.id):
            for tag in r.tags or [UNTAGGED]:
                if not only or tag == only:
                    groups.setdefault(tag, []).append(r)
        if only and not groups:
            raise web.HTTPNotFound(text=f"no probe is tagged {only!r}")
        return self.render("status.html", groups=dict(sorted(groups.items())), only=only)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/badge/{probe_id}.svg", self.guard(self.badge, public=True)),
            web.get("/status", self.guard(self.status, public=True)),
        ]
