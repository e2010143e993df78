"""The passive probe's page: its current window and the worst recent traces it judged.

One page beside the probe page (``/probes/{id}/passive``), read from the passive judge through
``Control.passive``; each trace links where the config's ``links:`` say (Sentry, Jaeger, …).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from tracecanary.daemon.web.dashboard.summary import iso_ns

if TYPE_CHECKING:
    from tracecanary.daemon.web.dashboard.views import Dashboard


async def passive_page(d: Dashboard, request: web.Request) -> web.Response:
    pid = request.match_info["probe_id"]
    snap = d.control.passive(pid)
    if snap is None:
        raise web.HTTPNotFound(text=f"no passive probe {pid}")
    rows = [{"trace_id": r.trace_id, "verdict": r.verdict.value, "kinds": ", ".join(r.kinds), "message": r.message,
             "entry": r.entry, "started_at": iso_ns(r.started_ns), "judged_at": iso_ns(r.judged_ns), "spans": r.spans,
             "links": d.control.links_for(r.trace_id, "", pid)} for r in snap.recent]
    return d.render("passive.html", snap=snap, window=snap.window.to_dict(), rows=rows, now_ns=time.time_ns())
