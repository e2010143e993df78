"""The seed scheduled-job flow: create a job, find its run's *new* trace by `job.id`, judge it, delete it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.fixtures.servers import serve_in_thread
from tracecanary.demo.broker import free_port


class JobsApi:
    """Create → (after a short delay) the job runs in a trace of its own, spans tagged job.id → delete."""

    def __init__(self, otlp_port: int) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "scheduler"}))
        self.provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_port}/v1/traces", timeout=5)))
        self.tracer = self.provider.get_tracer("jobs")
        self.jobs: dict[int, str] = {}
        self.deleted: list[int] = []
        self.next_id = 100

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.next_id += 1
        job_id = self.next_id
        self.jobs[job_id] = body["name"]
        if body.get("fail") != "yes":
            asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(self.run(job_id)))
        return web.json_response({"id": job_id, "name": body["name"]}, status=201)

    async def run(self, job_id: int) -> None:
        def work() -> None:
            # a scheduler starts a new trace: no parent, nothing propagated from the probe
            with self.tracer.start_as_current_span("job run", context=trace.set_span_in_context(
                    trace.INVALID_SPAN), attributes={"job.id": str(job_id)}):
                with self.tracer.start_as_current_span("post report", attributes={"job.id": str(job_id)}):
                    pass

        await asyncio.get_running_loop().run_in_executor(None, work)

    async def delete(self, request: web.Request) -> web.Response:
        job_id = int(request.match_info["id"])
        self.jobs.pop(job_id, None)
        self.deleted.append(job_id)
        return web.Response(status=204)


@pytest.fixture(scope="module")
def jobs() -> Iterator[tuple[str, int, JobsApi]]:
    otlp_port = free_port()
    api = JobsApi(otlp_port)
    with serve_in_thread([web.post("/jobs", api.create), web.delete("/jobs/{id}", api.delete)]) as base:
        yield base, otlp_port, api
    api.provider.shutdown()


def suite(base: str, fail: str) -> str:
    return f"""
probes:
  - id: job-lifecycle
    kind: scheduled_job
    timeout: 5s
    create: {{method: POST, url: "{base}/jobs", json: {{name: "canary-{{{{ run_id }}}}", fail: "{fail}"}}}}
    delete: {{method: DELETE, url: "{base}/jobs/{{{{ steps.create.json.id }}}}"}}
    expect:
      trace:
        correlate: {{attribute: job.id, equals: "{{{{ steps.create.json.id }}}}"}}
        tree:
          - span: "job run"
            service: scheduler
            children: [{{span: "post report"}}]
"""


@pytest.mark.parametrize("fail", ["no", "yes"])
def test_job_run_found_by_correlation_and_deleted(tmp_path: Path, jobs: tuple[str, int, JobsApi], fail: str) -> None:
    base, otlp_port, api = jobs
    (tmp_path / "s.yaml").write_text(suite(base, fail))
    before = set(api.deleted)
    proc = subprocess.run(
        [sys.executable, "-m", "tracecanary.daemon.cli.main", "check", "s.yaml", "--json", "r.json",
         "--otlp-http", f"127.0.0.1:{otlp_port}", "--otlp-grpc", "none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    run = json.loads((tmp_path / "r.json").read_text())["probes"][0]["runs"][0]
    created_id = run["response"]["json"]["id"] if run["response"] else None
    if fail == "no":
        assert proc.returncode == 0, (run["findings"], proc.stderr[-2000:])
        assert run["verdict"] == "pass"
        assert run["time_to_verdict_s"] is not None
    else:
        assert proc.returncode == 1
        text = "\n".join(f["message"] for f in run["findings"])
        assert "job run" in text, text
    # the always-run delete removed exactly the job this run created
    assert created_id is not None and set(api.deleted) - before == {created_id}
