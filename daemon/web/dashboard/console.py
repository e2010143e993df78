"""The on-call pages: incidents (timeline, acknowledge, mute for a while, channel health) and silences
(list, create by probe glob or tag for a duration or a cron window, expire).

Every button is a plain form (``pages.Pages.write_form`` checks the token), answered with a redirect
back, so the pages work with JavaScript off. The actions are the API's: ``AlertsControl.acknowledge``,
``add_silence``, ``remove_silence``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import jinja2
from aiohttp import web
from pydantic import ValidationError

from tracecanary.assertions.units import parse_duration_s
from tracecanary.daemon.alerts.incidents import incident_probe
from tracecanary.daemon.alerts.silences import SilenceSettings
from tracecanary.daemon.web.api import ApiAuth, validation_text
from tracecanary.daemon.web.control import AlertsControl, Control
from tracecanary.daemon.web.dashboard.pages import Pages, back

log = logging.getLogger("tracecanary.dashboard")
MUTE_CHOICES = ("30m", "1h", "4h", "24h")
MAX_MUTE_S = 30 * 86400.0


def _words(value: Any) -> list[str]:
    return [w.strip() for w in str(value or "").replace("\n", ",").split(",") if w.strip()]


def silence_from_form(form: Any, now: datetime) -> SilenceSettings:
    """A silence from the page's form: probe globs and/or tags, then a duration from now or a cron window.

    ValueError (with the reason) when the form does not make one."""
    doc: dict[str, Any] = {"probes": _words(form.get("probes")), "tags": _words(form.get("tags")),
                           "comment": str(form.get("comment", "")).strip()}
    if form.get("window", "duration") == "cron":
        doc.update(cron=str(form.get("cron", "")).strip(), duration=str(form.get("cron_duration", "")).strip(),
                   timezone=str(form.get("timezone", "")).strip() or "UTC")
    else:
        try:
            seconds = parse_duration_s(str(form.get("duration", "")).strip())
        except ValueError as e:
            raise ValueError(f"duration: {e}") from None
        if not 0 < seconds <= MAX_MUTE_S:
            raise ValueError("duration: between 1s and 30d")
        doc.update(start=now.isoformat(), end=(now + timedelta(seconds=seconds)).isoformat())
    try:
        return SilenceSettings.model_validate(doc)
    except ValidationError as e:
        raise ValueError(validation_text(e)) from None


class Console(Pages):
    def __init__(self, control: Control, auth: ApiAuth, env: jinja2.Environment) -> None:
        super().__init__(control, auth, env)

    def _alerts(self) -> AlertsControl:
        if self.control.alerts is None:
            raise web.HTTPNotImplemented(text="alerting is not configured")
        return self.control.alerts

    async def incidents(self, request: web.Request) -> web.Response:
        """Open and past incidents with their timelines, incidents about tracecanary itself, channel health."""
        alerts = self.control.alerts
        if alerts is None:
            return self.render("incidents.html", enabled=False, incidents=[], system=[], channels=[],
                               mute_choices=MUTE_CHOICES)
        return self.render("incidents.html", enabled=True, incidents=await alerts.incidents(),
                           system=alerts.system_incidents(), channels=await alerts.channel_health(),
                           mute_choices=MUTE_CHOICES)

    async def ack(self, request: web.Request) -> web.Response:
        form = await self.write_form(request)
        incident_id = request.match_info["incident_id"]
        by = str(form.get("by", "")).strip()[:200] or "dashboard"
        if not await self._alerts().acknowledge(incident_id, by=by, comment=str(form.get("comment", ""))[:2000]):
            raise web.HTTPNotFound(text=f"no open incident {incident_id}")
        log.info("dashboard ack incident=%s by=%s", incident_id, by)
        raise web.HTTPSeeOther(back(request, "/incidents"))

    async def mute(self, request: web.Request) -> web.Response:
        """Silence the incident's probe for the chosen duration, from now."""
        form = await self.write_form(request)
        incident_id = request.match_info["incident_id"]
        probe_id = incident_probe(incident_id)
        try:
            silence = silence_from_form({"probes": probe_id, "duration": form.get("duration", "1h"),
                                         "comment": f"muted from incident {incident_id}"}, datetime.now(UTC))
        except ValueError as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        await self._alerts().add_silence(silence, created_by=str(form.get("by", "")).strip()[:200] or "dashboard")
        raise web.HTTPSeeOther(back(request, "/incidents"))

    async def silences(self, request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
        alerts = self.control.alerts
        listed = await alerts.list_silences() if alerts is not None else []
        return self.render("silences.html", status=status, enabled=alerts is not None, silences=listed, error=error,
                           probes=[p.id for p in self.control.probes()],
                           tags=sorted({t for p in self.control.probes() for t in p.tags}))

    async def create_silence(self, request: web.Request) -> web.Response:
        form = await self.write_form(request)
        alerts = self._alerts()
        try:
            silence = silence_from_form(form, datetime.now(UTC))
        except ValueError as e:
            return await self.silences(request, error=str(e), status=400)
        created = await alerts.add_silence(silence, created_by=str(form.get("by", "")).strip()[:200] or "dashboard")
        log.info("dashboard silence added id=%s", created.id)
        raise web.HTTPSeeOther("/silences")

    async def expire_silence(self, request: web.Request) -> web.Response:
        await self.write_form(request)
        if not await self._alerts().remove_silence(request.match_info["silence_id"]):
            raise web.HTTPNotFound(text="unknown silence (configured silences are removed in the config)")
        raise web.HTTPSeeOther("/silences")

    def routes(self) -> list[web.RouteDef]:
        g = self.guard
        return [
            web.get("/incidents", g(self.incidents)),
            web.post("/incidents/{incident_id}/ack", self.ack),
            web.post("/incidents/{incident_id}/mute", self.mute),
            web.get("/silences", g(self.silences)),
            web.post("/silences", self.create_silence),
            web.post("/silences/{silence_id}/expire", self.expire_silence),
        ]
