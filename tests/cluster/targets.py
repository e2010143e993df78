"""The HTTP target the cluster tests point their probes at: every ``GET /{path}`` is recorded as (path, the
member that fired it — the ``who`` query parameter —, arrival time) before the test's own subclass answers it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class RecordingTarget:
    """Records each hit, then :meth:`answer` (the subclass) replies."""

    hits: list[tuple[str, str, float]] = field(default_factory=list, kw_only=True)
    """(path, who, arrival time.time())."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path}", self._hit)
        return app

    async def _hit(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        self.hits.append((path, request.query.get("who", "?"), time.time()))
        return await self.answer(path, request)

    async def answer(self, path: str, request: web.Request) -> web.Response:
        raise NotImplementedError

    def of(self, path: str, who: str | None = None, after: float = 0.0, before: float = math.inf) -> list[float]:
        """Arrival times of hits on ``path`` (by ``who`` if given) within [after, before]."""
        return [t for p, w, t in self.hits if p == path and (who is None or w == who) and after <= t <= before]
