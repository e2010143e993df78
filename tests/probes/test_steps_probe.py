"""The steps probe: captures across steps, one trace, teardown on success, failure and cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from tests.probes.helpers import make_ctx, serve
from tests.probes.jobs_api import JobsApi
from tracecanary.assertions.verdict import Finding
from tracecanary.errors import ProbeError
from tracecanary.probes.steps import StepsProbe


@pytest.fixture
async def api() -> AsyncIterator[tuple[JobsApi, str, aiohttp.ClientSession]]:
    jobs = JobsApi()
    async with serve(jobs.app()) as url, aiohttp.ClientSession() as session:
        yield jobs, url, session
        jobs.release.set()


def _probe(steps: list[dict[str, Any]], teardown: list[dict[str, Any]] | None = None, **kw: Any) -> StepsProbe:
    return StepsProbe.model_validate({"id": "s", "kind": "steps", "steps": steps, "teardown": teardown or [], **kw})


def _create(url: str) -> dict[str, Any]:
    return {"name": "create", "http": {"method": "POST", "url": url + "/jobs",
                                       "json": {"name": "canary-{{ run_id }}"}},
            "capture": {"id": "$.id", "location": {"header": "Location"}, "num": {"regex": r"j-(\d+)"}},
            "expect": {"status": 201}}


def _delete(url: str) -> dict[str, Any]:
    return {"http": {"method": "DELETE", "url": url + "/jobs/{{ steps.create.id }}"}, "requires": "create"}


@pytest.mark.anyio
async def test_steps_capture_and_template_later_steps(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    jobs, url, session = api
    ctx = make_ctx(session)
    probe = _probe([
        _create(url),
        {"wait": "10ms"},
        {"name": "check", "http": {"url": url + "{{ steps.create.location }}"},
         "capture": {"name": {"json": "$.name"}}},
    ], teardown=[_delete(url)])
    result = await probe.fire(ctx)
    assert result.findings == []
    created = ctx.steps["create"]
    assert created["status"] == 201 and created["id"] == created["json"]["id"] == f"j-{created['num']}"
    assert ctx.steps["check"]["name"] == f"canary-{ctx.run_id}"
    assert result.response is not None and result.response.json["id"] == created["id"]
    assert all(tp.startswith(f"00-{ctx.trace.trace_id}-") for tp in jobs.seen_traceparents)
    assert len(jobs.seen_traceparents) == 2
    assert await probe.teardown(ctx) == []
    assert created["id"] not in jobs.jobs and jobs.deletes == [created["id"]]


@pytest.mark.anyio
async def test_failed_step_stops_the_sequence_and_teardown_still_cleans_up(
    api: tuple[JobsApi, str, aiohttp.ClientSession],
) -> None:
    jobs, url, session = api
    ctx = make_ctx(session)
    probe = _probe([_create(url), {"name": "boom", "http": {"method": "POST", "url": url + "/fail"}},
                    {"name": "never", "http": {"url": url + "/jobs"}}], teardown=[_delete(url)])
    result = await probe.fire(ctx)
    [finding] = result.findings
    assert finding.type == "response.status" and finding.path == "steps[1].expect.response.status"
    assert finding.observed == 500 and finding.message.startswith("boom: ")
    assert "never" not in ctx.steps
    assert result.response is None and ctx.steps["boom"]["status"] == 500  # judged once, here
    assert await probe.teardown(ctx) == []
    assert ctx.steps["create"]["id"] not in jobs.jobs


@pytest.mark.anyio
async def test_teardown_runs_when_the_run_is_cancelled(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    jobs, url, session = api
    ctx = make_ctx(session)
    probe = _probe([_create(url), {"http": {"url": url + "/hang"}}], teardown=[_delete(url)])
    teardown_findings: list[Finding] = []

    async def run() -> None:  # what the runner does: fire, then teardown in `finally`
        try:
            await probe.fire(ctx)
        finally:
            teardown_findings.extend(await probe.teardown(ctx))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await jobs.hang_entered.wait()
            tg.cancel_scope.cancel()  # shutdown drain / deadline: the run is cancelled mid-step
    assert teardown_findings == []
    assert jobs.deletes == [ctx.steps["create"]["id"]] and ctx.steps["create"]["id"] not in jobs.jobs


@pytest.mark.anyio
async def test_teardown_failures_are_findings_of_their_own(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    jobs, url, session = api
    ctx = make_ctx(session)
    probe = _probe([{"wait": "1ms"}], teardown=[
        {"http": {"method": "DELETE", "url": url + "/jobs/j-missing"}},
        {"http": {"url": url + "/hang"}},
        {"http": {"method": "DELETE", "url": url + "/jobs/{{ steps.create.id }}"}, "requires": "create"},
    ], teardown_timeout="300ms")
    await probe.fire(ctx)
    with anyio.fail_after(5):
        findings = await probe.teardown(ctx)
    assert [(f.type, f.path) for f in findings] == [
        ("teardown", "teardown[0].expect.response.status"), ("teardown", "teardown"),
    ]
    assert findings[0].observed == 404 and "within 0.3s" in findings[1].message
    assert jobs.deletes == ["j-missing"]


@pytest.mark.anyio
async def test_missing_capture_fails_the_step(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    _, url, session = api
    probe = _probe([{"name": "list", "http": {"url": url + "/jobs"}, "capture": {"x": "$.nope"}},
                    {"http": {"url": url + "/jobs"}}])
    result = await probe.fire(make_ctx(session))
    [finding] = result.findings
    assert finding.type == "step.capture" and finding.path == "steps[0].capture.x"


@pytest.mark.anyio
async def test_step_probe_error_names_the_step(api: tuple[JobsApi, str, aiohttp.ClientSession]) -> None:
    _, _, session = api
    probe = _probe([{"name": "down", "http": {"url": "http://127.0.0.1:1/x"}}])
    with pytest.raises(ProbeError, match=r"steps\[0\] \(down\)"):
        await probe.fire(make_ctx(session))


def test_step_config_errors() -> None:
    with pytest.raises(ValueError, match="a step takes exactly one of http, github_webhook, kafka, slack_mention, "
                                         "wait; got http, wait"):
        _probe([{"http": {"url": "http://x"}, "wait": "1s"}])
    with pytest.raises(ValueError, match="duplicate step name"):
        _probe([{"name": "a", "wait": "1s"}, {"name": "a", "wait": "1s"}])
    with pytest.raises(ValueError, match="a capture takes exactly one of json, header, regex"):
        _probe([{"http": {"url": "http://x"}, "capture": {"a": {"header": "X", "regex": "y"}}}])
    with pytest.raises(ValueError, match="a wait step has no response"):
        _probe([{"wait": "1s", "capture": {"a": "$.x"}}])
    with pytest.raises(ValueError, match=r"slack_mention\.bot_user_id: String should match pattern"):
        _probe([{"slack_mention": {"channel": "C1", "bot_user_id": "bad"}}])
    assert _probe([{"slack_mention": {"channel": "C1", "bot_user_id": "U0BOT"}}]).steps[0].label == "slack_mention"
