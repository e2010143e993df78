"""What every dashboard page shares: the Jinja environment and its filters, secret masking, the read
guard (``protect_reads``) and the check on HTML form writes (the API token, typed into the form).

Form writes work with JavaScript off: a plain POST, then a redirect back (303). With a token
configured the form carries it (a password field; the page's script fills it from the browser's
storage when it knows it); without one, a write must come from the dashboard's own origin, so a
cross-site form cannot acknowledge or silence anything.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web
from markupsafe import Markup, escape
from multidict import MultiDictProxy

from tracecanary.daemon.web.api import ApiAuth, Handler
from tracecanary.daemon.web.control import Control
from tracecanary.daemon.web.dashboard.summary import fmt_age, iso_ns
from tracecanary.daemon.web.schema import ProbeStatus

log = logging.getLogger("tracecanary.dashboard")
HERE = Path(__file__).parent
LABELS = {"unknown": "no telemetry"}
"""How a state or verdict reads on the pages when its value alone would mislead."""
MAX_FORM_BYTES = 16 * 1024


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


def secs(v: float | None) -> str:
    return "–" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["age"] = fmt_age
    env.filters["iso_ns"] = iso_ns
    env.filters["pretty"] = _pretty
    env.filters["until"] = _until
    env.filters["label"] = lambda v: LABELS.get(v, v)
    env.filters["pct"] = pct
    env.filters["secs"] = secs
    env.filters["urlq"] = lambda v: quote(str(v), safe="")
    return env


class StripHtml:
    """A probe's status strip as HTML, rebuilt only when its runs changed: the overview draws 30 cells for
    each of hundreds of probes, and rendering them through the template was most of its time."""

    def __init__(self, max_probes: int = 10_000) -> None:
        self._built: dict[str, tuple[tuple[tuple[str, str | None, str], ...], Markup]] = {}
        self._max = max_probes

    def __call__(self, probe: ProbeStatus) -> Markup:
        key = tuple((h.run_id, h.verdict, h.status) for h in probe.history)
        hit = self._built.get(probe.id)
        if hit is not None and hit[0] == key:
            return hit[1]
        cells = "".join(
            f'<a class="cell v-{escape(h.verdict or h.status)}" href="/runs/{escape(h.run_id)}" '
            f'title="{iso_ns(h.started_ns)} {escape(LABELS.get(h.verdict or h.status, h.verdict or h.status))}"></a>'
            for h in reversed(probe.history))
        html = Markup(f'<span class="strip" aria-label="last runs">{cells}</span>')
        if len(self._built) >= self._max:
            self._built.pop(next(iter(self._built)))
        self._built[probe.id] = (key, html)
        return html


class Pages:
    """Rendering and access rules shared by the dashboard's page groups."""

    def __init__(self, control: Control, auth: ApiAuth, env: jinja2.Environment | None = None) -> None:
        self.control = control
        self.auth = auth
        self.env = env or environment()

    def html(self, name: str, **ctx: Any) -> str:
        """A rendered template with the config's secrets masked (in their HTML-escaped forms too)."""
        ctx.setdefault("token_needed", self.auth.enabled)
        membership = self.control.membership
        cluster = {"mode": membership.mode, "role": membership.role.value, "member": membership.member_id}
        return self.control.secrets().mask_text(self.env.get_template(name).render(cluster=cluster, **ctx))

    def render(self, name: str, status: int = 200, **ctx: Any) -> web.Response:
        return web.Response(text=self.html(name, **ctx), content_type="text/html", status=status)

    def guard(self, handler: Handler, *, public: bool = False) -> Handler:
        """With ``protect_reads``, pages need the login cookie (or a bearer token); ``public`` pages
        (badges, /status) stay open when ``daemon.public_status`` is set."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.auth.read_token_required and not (public and self.control.public_status) \
                    and not self.auth.allowed(request, cookie_ok=True):
                if request.path.endswith("/live") or request.path.endswith(".svg"):
                    raise web.HTTPUnauthorized(text="log in first")
                raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs)}")
            return await handler(request)

        return guarded

    async def write_form(self, request: web.Request) -> MultiDictProxy[str | bytes | Any]:
        """The posted form of a write, once its token (or, without one, its origin) is checked.

        401 (the page again, saying so) for a missing or wrong token; 403 for a cross-site post."""
        if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM_BYTES, actual_size=request.content_length)
        form = await request.post()
        if self.auth.enabled:
            header = request.headers.get("Authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else str(form.get("token", ""))
            if not self.auth.matches(given):
                log.info("dashboard write refused (token) path=%s", request.path)
                raise web.HTTPUnauthorized(text="missing or wrong API token (daemon.api_token)")
        elif not _same_origin(request):
            log.info("dashboard write refused (origin) path=%s origin=%s", request.path,
                     request.headers.get("Origin"))
            raise web.HTTPForbidden(text="cross-site form post refused")
        return form


def _same_origin(request: web.Request) -> bool:
    """No Origin header (a non-browser client, or an old browser's same-origin post) or the page's own."""
    origin = request.headers.get("Origin")
    if origin is None or (origin == "null" and request.headers.get("Sec-Fetch-Site") == "same-origin"):
        return True
    return urlsplit(origin).netloc == request.host


def back(request: web.Request, default: str) -> str:
    """Where a form goes after its write: its ``back`` field when it is a same-site path."""
    target = request.query.get("back") or default
    return target if target.startswith("/") and not target.startswith("//") else default
