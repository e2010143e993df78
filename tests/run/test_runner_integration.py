"""The scheduled_job and steps probes through the real Runner: teardown runs after expectations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.probes.helpers import serve
from tests.probes.jobs_api import JobsApi
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.probes.scheduled_job import ScheduledJobProbe
from tracecanary.probes.steps import StepsProbe


class FiringJobs(JobsApi):
    """Jobs that report a run after ``runs_after`` reads; every request is logged in order."""

    def __init__(self, runs_after: int = 2) -> None:
        super().__init__()
        self.runs_after = runs_after
        self.events: list[str] = []

    async def get(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        self.events.append(f"get {request.match_info['id']}")
        if job is None:
            return web.json_response({"error": "not found"}, status=404)
        reads = sum(1 for e in self.events if e == f"get {job['id']}")
        return web.json_response({**job, "runs": 1 if reads > self.runs_after else 0})

    async def delete(self, request: web.Request) -> web.Response:
        self.events.append(f"delete {request.match_info['id']}")
        return await super().delete(request)


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    async with aiohttp.ClientSession() as session:
        yield Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session, poll_interval_s=0.05))
    await store.aclose()


def _job_probe(url: str, **kw: Any) -> ScheduledJobProbe:
    return ScheduledJobProbe.model_validate({
        "id": "job-lifecycle", "kind": "scheduled_job", "timeout": "5s",
        "create": {"method": "POST", "url": url + "/jobs", "json": {"name": "canary-{{ run_id }}"}},
        "delete": {"method": "DELETE", "url": url + "/jobs/{{ steps.create.json.id }}"},
        "expect": {"response": {"status": 201, "json_fields": ["id", "next_run_at"]}, "side_effects": [
            {"http": {"request": {"url": url + "/jobs/{{ steps.create.json.id }}"},
                      "until": {"json": {"runs": {"gte": 1}}}, "every": "20ms", "within": "3s"}},
        ]},
        **kw,
    })


@pytest.mark.anyio
async def test_job_is_deleted_after_its_run_was_observed(
    runner: Runner,
) -> None:
    run_probe = runner
    api = FiringJobs(runs_after=2)
    async with serve(api.app()) as url:
        with anyio.fail_after(10):
            [record] = await run_probe.run_probe(_job_probe(url))
    assert record.verdict == Verdict.PASS, [str(f) for f in record.findings]
    assert record.side_effects[0]["observed"]  # what the watch saw is kept on a pass too (the run page shows it)
    job_id = "j-1"
    assert api.events == [f"get {job_id}"] * 3 + [f"delete {job_id}"]
    assert job_id not in api.jobs


@pytest.mark.anyio
async def test_job_is_deleted_even_when_its_run_never_shows(
    runner: Runner,
) -> None:
    run_probe = runner
    api = FiringJobs(runs_after=10_000)
    async with serve(api.app()) as url:
        probe = _job_probe(url, timeout="1s")
        with anyio.fail_after(10):
            [record] = await run_probe.run_probe(probe)
    assert record.verdict == Verdict.FAIL
    [finding] = record.findings
    assert finding.type == "side_effect" and "runs: expected >= 1, got 0" in finding.message
    assert api.events[-1] == "delete j-1" and api.jobs.keys() == {"j-nightly", "j-stale"}


@pytest.mark.anyio
async def test_steps_teardown_failure_is_its_own_finding_in_the_run(
    runner: Runner,
) -> None:
    run_probe = runner
    api = FiringJobs()
    async with serve(api.app()) as url:
        probe = StepsProbe.model_validate({"id": "steps-probe", "kind": "steps", "timeout": "5s", "steps": [
            {"name": "create", "http": {"method": "POST", "url": url + "/jobs", "json": {"name": "x"}},
             "capture": {"id": "$.id"}},
        ], "teardown": [
            {"http": {"method": "DELETE", "url": url + "/jobs/{{ steps.create.id }}"}},
            {"http": {"method": "DELETE", "url": url + "/jobs/{{ steps.create.id }}"}},
        ]})
        with anyio.fail_after(10):
            [record] = await run_probe.run_probe(probe)
    assert [(f.type, f.path, f.observed) for f in record.findings] == [
        ("teardown", "teardown[1].expect.response.status", 404)]
    assert record.verdict == Verdict.FAIL
