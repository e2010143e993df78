"""The scheduled_job probe: create a job, let the runner watch it fire, always delete it.

The seed use case: "create a job that fires every minute, watch it fire, check its report, delete
it". ``fire`` optionally checks that named real jobs still exist with a sane ``next_run_at``, then
sends ``create`` (recorded as ``steps.create``). The runner judges the expectations — typically a
trace found by ``correlate: {attribute: job.id, equals: "{{ steps.create.json.id }}"}`` and side
effects — and then calls ``teardown``, which sends ``delete`` (shielded, own deadline) whenever the
create was answered with a 2xx.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from tracecanary.assertions.response import ResponseExpectation, select_json, status_ok, validate_json_path
from tracecanary.assertions.units import Duration, format_duration
from tracecanary.assertions.verdict import Finding
from tracecanary.model import StrictModel
from tracecanary.probes.base import FireResult, ProbeContext, ProbeSpec
from tracecanary.probes.http import HttpRequest, send_prepared
from tracecanary.probes.steps import Capture, Step, run_step, run_teardown


class ExistingJobs(StrictModel):
    """Named jobs that must still exist, each with a next run in a sane window."""

    request: HttpRequest = Field(description="Lists the jobs (e.g. GET /jobs).")
    items: str = Field("$[*]", description="JSONPath to the job objects in the response.")
    name_field: str = Field("name", description="Field holding a job's name.")
    next_run_field: str = Field("next_run_at", description="Field holding the next run (ISO 8601 or epoch s).")
    names: list[str] = Field(min_length=1, description="Jobs that must exist.")
    max_next_run_in: Duration = Field(86400.0, description="next_run_at must be no further than this ahead.")
    grace: Duration = Field(120.0, description="next_run_at may lag now by this much (a run in progress).")

    _items = field_validator("items")(classmethod(lambda cls, v: validate_json_path(v)))


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def judge_existing_jobs(spec: ExistingJobs, document: Any, now: datetime) -> list[Finding]:
    """Findings for jobs missing from ``document`` or with an implausible next run."""
    jobs = [j for j in select_json(spec.items, document) if isinstance(j, dict)]
    by_name = {str(j.get(spec.name_field)): j for j in jobs}
    out: list[Finding] = []
    for name in spec.names:
        path = f"existing_jobs.names[{name}]"
        job = by_name.get(name)
        if job is None:
            out.append(Finding(type="scheduled_job.missing", path=path, expected=name, observed=sorted(by_name),
                               message=f"job {name!r} no longer exists ({len(jobs)} jobs listed)"))
            continue
        raw = job.get(spec.next_run_field)
        when = _parse_time(raw)
        if when is None:
            out.append(Finding(type="scheduled_job.next_run", path=path, expected="a timestamp", observed=raw,
                               message=f"job {name!r}: {spec.next_run_field} is {raw!r}, not a time"))
            continue
        ahead_s = (when - now).total_seconds()
        if ahead_s < -spec.grace or ahead_s > spec.max_next_run_in:
            out.append(Finding(
                type="scheduled_job.next_run", path=path, observed=raw,
                expected=f"between -{format_duration(spec.grace)} and +{format_duration(spec.max_next_run_in)}",
                message=f"job {name!r}: next run {raw} is {format_duration(abs(ahead_s))} "
                        f"{'overdue' if ahead_s < 0 else 'away'}",
            ))
    return out


class ScheduledJobProbe(ProbeSpec):
    """Create a scheduled job in the system under test, watch it run, delete it."""

    kind: Literal["scheduled_job"] = "scheduled_job"
    create: HttpRequest = Field(description="Creates the job; recorded as steps.create.")
    capture: dict[str, Capture] = Field(default_factory=dict, description="Values to keep from the create response.")
    delete: HttpRequest | None = Field(None, description="Deletes the job (templated with steps.create.…).")
    delete_expect: str = Field("2xx", description="Statuses that count as deleted, e.g. \"200-204\" or \"2xx\".")
    existing_jobs: ExistingJobs | None = Field(None, description="Real jobs that must still exist.")
    teardown_timeout: Duration = Field(30.0, description="Deadline for the delete.")

    @field_validator("delete_expect")
    @classmethod
    def _delete_status(cls, value: str) -> str:
        ResponseExpectation(status=value)
        return value

    async def fire(self, ctx: ProbeContext) -> FireResult:
        findings: list[Finding] = []
        if self.existing_jobs is not None:
            listing = await send_prepared(ctx, self.existing_jobs.request.prepare(ctx), span_name="list jobs")
            if listing.status is None or not status_ok("2xx", listing.status):
                findings.append(Finding(type="scheduled_job.missing", path="existing_jobs.request",
                                        expected="2xx", observed=listing.status,
                                        message=f"listing jobs answered {listing.status}"))
            else:
                findings += judge_existing_jobs(self.existing_jobs, listing.json, datetime.now(UTC))
        step = Step.model_validate({"name": "create", "http": self.create, "capture": self.capture})
        # The create response is the run's response: the runner judges it against expect.response.
        result, failed = await run_step(ctx, step, "create", judge=False)
        result.findings = findings + failed
        ctx.log("job created", status=result.response.status if result.response else None)
        return result

    async def teardown(self, ctx: ProbeContext) -> list[Finding]:
        created = ctx.steps.get("create")
        if self.delete is None or not isinstance(created, dict):
            return []
        status = created.get("status")
        if not isinstance(status, int) or not status_ok("2xx", status):
            ctx.log("delete skipped: create was not accepted", status=status)
            return []
        step = Step.model_validate({"name": "delete", "http": self.delete, "expect": {"status": self.delete_expect}})
        return await run_teardown(ctx, [step], self.teardown_timeout, path="delete")
