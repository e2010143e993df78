"""The shop's scheduler: a jobs API; each job runs every N seconds and posts a report to Slack.

``POST /jobs {name, every_s, channel}`` → 201 ``{id, name, every_s, channel, next_run_at, runs}``;
``GET /jobs``, ``GET /jobs/{id}``, ``DELETE /jobs/{id}`` → 204. A job run starts a NEW trace
(``job.run``, attribute ``job.id``) — the probe finds it by correlation on ``job.id`` — with
children ``build-report`` and ``chat.postMessage``. Fault ``slow-dependency`` makes build-report slow.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from slack_sdk.web.async_client import AsyncWebClient

from tracecanary.demo.shop.common import Faults, Service, admin_routes, extract, main, setup_tracing

log = logging.getLogger("tracecanary.demo.shop.scheduler")
MAX_JOBS = 1000
MIN_EVERY_S = 0.2
CALL_TIMEOUT_S = 10.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    name: str
    every_s: float
    channel: str
    next_run_at: float
    runs: int = 0
    last_run_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "every_s": self.every_s, "channel": self.channel,
                "next_run_at": _iso(self.next_run_at), "runs": self.runs,
                "last_run_at": _iso(self.last_run_at) if self.last_run_at else None}


class Scheduler:
    def __init__(self, config: dict[str, Any]) -> None:
        self.slack = AsyncWebClient(token=str(config.get("slack_token", "xoxb-bot")), base_url=str(config["slack_url"]))
        self.default_channel = str(config.get("slack_channel", "C0REPORTS"))
        self.faults = Faults(slow_s=float(config.get("slow_s", 1.5)))
        self.tracer = setup_tracing("scheduler", config.get("otlp_endpoint"))
        self.jobs: dict[str, Job] = {}

    async def create(self, request: web.Request) -> web.Response:
        with self.tracer.start_as_current_span("POST /jobs", context=extract(request.headers),
                                               kind=SpanKind.SERVER) as span:
            body = await request.json()
            try:
                every_s = float(body.get("every_s", 5))
            except (TypeError, ValueError):
                return web.json_response({"error": "every_s must be a number"}, status=422)
            if every_s < MIN_EVERY_S or not body.get("name"):
                return web.json_response({"error": f"name required; every_s ≥ {MIN_EVERY_S}"}, status=422)
            if len(self.jobs) >= MAX_JOBS:
                return web.json_response({"error": "too many jobs"}, status=429)
            job = Job(id="job-" + uuid.uuid4().hex[:10], name=str(body["name"]), every_s=every_s,
                      channel=str(body.get("channel") or self.default_channel), next_run_at=time.time() + every_s)
            span.set_attribute("job.id", job.id)
            self.jobs[job.id] = job
            job.task = asyncio.create_task(self.loop(job))
            return web.json_response(job.view(), status=201)

    async def get(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({"error": "no such job"}, status=404)
        return web.json_response(job.view())

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": [j.view() for j in self.jobs.values()]})

    async def delete(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        with self.tracer.start_as_current_span("DELETE /jobs/{id}", context=extract(request.headers),
                                               kind=SpanKind.SERVER, attributes={"job.id": job_id}):
            job = self.jobs.pop(job_id, None)
            if job is None:
                return web.json_response({"error": "no such job"}, status=404)
            if job.task is not None:
                job.task.cancel()
            return web.Response(status=204)

    async def loop(self, job: Job) -> None:
        while True:
            await asyncio.sleep(max(0.0, job.next_run_at - time.time()))
            job.next_run_at = time.time() + job.every_s
            try:
                await self.run(job)
            except Exception as e:
                log.warning("job run failed job=%s error=%r", job.id, e)

    async def run(self, job: Job) -> None:
        attrs = {"job.id": job.id, "job.name": job.name}
        with self.tracer.start_as_current_span("job.run", context=Context(), kind=SpanKind.INTERNAL,
                                               attributes=attrs):
            job.runs += 1
            job.last_run_at = time.time()
            with self.tracer.start_as_current_span("build-report", attributes={"job.id": job.id}):
                if self.faults.on("slow-dependency"):
                    await asyncio.sleep(self.faults.slow_s)
                text = f"Report for job {job.name} ({job.id}): run {job.runs}, all systems nominal"
            with self.tracer.start_as_current_span("chat.postMessage", kind=SpanKind.CLIENT,
                                                   attributes={"slack.channel": job.channel, "job.id": job.id}):
                await asyncio.wait_for(self.slack.chat_postMessage(channel=job.channel, text=text), CALL_TIMEOUT_S)

    async def stop(self) -> None:
        for job in self.jobs.values():
            if job.task is not None:
                job.task.cancel()


async def build(config: dict[str, Any]) -> Service:
    s = Scheduler(config)
    app = web.Application()
    app.add_routes([web.post("/jobs", s.create), web.get("/jobs", s.list), web.get("/jobs/{job_id}", s.get),
                    web.delete("/jobs/{job_id}", s.delete), *admin_routes(s.faults)])
    return Service("scheduler", app, cleanup=[s.stop])


if __name__ == "__main__":
    main(build)
