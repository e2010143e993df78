"""A small real jobs API (aiohttp) for the steps and scheduled_job probe tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from aiohttp import web


class JobsApi:
    """In-memory jobs with create/list/get/delete, a failing route and a hanging route."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.jobs: dict[str, dict[str, Any]] = {
            "j-nightly": {"id": "j-nightly", "name": "nightly-report",
                          "next_run_at": (now + timedelta(hours=3)).isoformat()},
            "j-stale": {"id": "j-stale", "name": "stale-sync",
                        "next_run_at": (now - timedelta(days=2)).isoformat().replace("+00:00", "Z")},
        }
        self._ids = itertools.count(1)
        self.hang_entered = anyio.Event()
        self.release = anyio.Event()
        self.deletes: list[str] = []
        self.seen_traceparents: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/jobs", self.create)
        app.router.add_get("/jobs", self.list)
        app.router.add_get("/jobs/{id}", self.get)
        app.router.add_delete("/jobs/{id}", self.delete)
        app.router.add_post("/fail", self.fail)
        app.router.add_get("/hang", self.hang)
        return app

    async def create(self, request: web.Request) -> web.Response:
        self.seen_traceparents.append(request.headers.get("traceparent", ""))
        body = await request.json()
        job_id = f"j-{next(self._ids)}"
        job = {"id": job_id, "name": body["name"], "schedule": body.get("schedule", "* * * * *"),
               "next_run_at": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()}
        self.jobs[job_id] = job
        return web.json_response(job, status=201, headers={"Location": f"/jobs/{job_id}"})

    async def list(self, request: web.Request) -> web.Response:
        self.seen_traceparents.append(request.headers.get("traceparent", ""))
        return web.json_response({"jobs": list(self.jobs.values())})

    async def get(self, request: web.Request) -> web.Response:
        self.seen_traceparents.append(request.headers.get("traceparent", ""))
        job = self.jobs.get(request.match_info["id"])
        return web.json_response(job) if job else web.json_response({"error": "not found"}, status=404)

    async def delete(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        self.deletes.append(job_id)
        if self.jobs.pop(job_id, None) is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(status=204)

    async def fail(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    async def hang(self, request: web.Request) -> web.Response:
        self.hang_entered.set()
        await self.release.wait()
        return web.json_response({})
