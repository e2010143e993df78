"""The scheduled_job probe: existing-jobs checks, create recorded as steps.create, always-run delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.probes.helpers import make_ctx, serve
from tests.probes.jobs_api import JobsApi
from tracecanary.probes.scheduled_job import ExistingJobs, ScheduledJobProbe, judge_existing_jobs


@pytest.fixture
async def api() -> AsyncIterator[tuple[JobsApi, str, aiohttp.ClientSession]]:
    jobs = JobsApi()
    async with serve(jobs.app()) as url, aiohttp.ClientSession() as session:
        yield jobs, url, session
        jobs.release.set()


def _probe(url: str, **kw: Any) -> ScheduledJobProbe:
    return ScheduledJobProbe.model_validate({
        "id": "job-canary", "kind": "scheduled_job",
        "create": {"method": "POST", "url": url + "/jobs",
                   "json": {"name": "canary-{{ run_id }}", "schedule": "* * * * *"}},
        "delete": {"method": "DELETE", "url": url + "/jobs/{{ steps.create.json.id }}"},
        **kw,
    })


@pytest.mark.anyio
async def test_create_then_delete_in_teardown(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    jobs, url, session = api
    ctx = make_ctx(session)
    probe = _probe(url, capture={"job_id": "$.id"})
    result = await probe.fire(ctx)
    assert result.findings == [] and result.response is not None and result.response.status == 201
    job_id = ctx.steps["create"]["json"]["id"]
    assert ctx.steps["create"]["job_id"] == job_id
    assert ctx.render("{{ steps.create.json.id }}") == job_id  # what correlate: equals renders to
    assert jobs.jobs[job_id]["name"] == f"canary-{ctx.run_id}"
    assert await probe.teardown(ctx) == []
    assert job_id not in jobs.jobs


@pytest.mark.anyio
async def test_failed_delete_is_a_teardown_finding(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    jobs, url, session = api
    ctx = make_ctx(session)
    probe = _probe(url)
    await probe.fire(ctx)
    jobs.jobs.clear()  # someone else removed it: the delete answers 404
    [finding] = await probe.teardown(ctx)
    assert finding.type == "teardown" and finding.path == "delete[0].expect.response.status"
    assert finding.observed == 404
    assert not await _probe(url, delete_expect="200-404").teardown(ctx)


@pytest.mark.anyio
async def test_no_delete_when_create_was_refused(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    jobs, url, session = api
    ctx = make_ctx(session)
    probe = ScheduledJobProbe.model_validate({
        "id": "j", "kind": "scheduled_job", "create": {"method": "POST", "url": url + "/fail"},
        "delete": {"method": "DELETE", "url": url + "/jobs/{{ steps.create.json.id }}"}})
    result = await probe.fire(ctx)
    assert result.response is not None and result.response.status == 500
    assert await probe.teardown(ctx) == [] and jobs.deletes == []


@pytest.mark.anyio
async def test_existing_jobs_missing_and_stale(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    _, url, session = api
    probe = _probe(url, existing_jobs={"request": {"url": url + "/jobs"}, "items": "$.jobs[*]",
                                       "names": ["nightly-report", "stale-sync", "weekly-digest"]})
    ctx = make_ctx(session)
    result = await probe.fire(ctx)
    assert [(f.type, f.path) for f in result.findings] == [
        ("scheduled_job.next_run", "existing_jobs.names[stale-sync]"),
        ("scheduled_job.missing", "existing_jobs.names[weekly-digest]"),
    ]
    assert "overdue" in result.findings[0].message
    assert "nightly-report" in result.findings[1].observed
    await probe.teardown(ctx)


def test_judge_existing_jobs_windows() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    spec = ExistingJobs.model_validate({"request": {"url": "http://x"}, "names": ["a", "b", "c", "d"],
                                        "max_next_run_in": "1h", "grace": "1m"})
    doc = [{"name": "a", "next_run_at": (now + timedelta(minutes=30)).isoformat()},
           {"name": "b", "next_run_at": (now + timedelta(hours=2)).timestamp()},
           {"name": "c", "next_run_at": (now - timedelta(seconds=30)).isoformat()},
           {"name": "d", "next_run_at": "soon"}]
    findings = judge_existing_jobs(spec, doc, now)
    assert [(f.path, f.observed) for f in findings] == [
        ("existing_jobs.names[b]", doc[1]["next_run_at"]), ("existing_jobs.names[d]", "soon"),
    ]
    assert "2h away" in findings[0].message
