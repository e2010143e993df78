"""One store test suite, run against every backend (Gatus' habit)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.store.test_store_faults import run as finished
from tracecanary.assertions.spans import Span, SpanEvent, SpanKind, SpanLink, StatusCode
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus, Store
from tracecanary.daemon.store.sqlite import sqlite_path
from tracecanary.daemon.store.urls import open_store

BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": lambda request, tmp: f"sqlite:///{tmp / 'tc.db'}",
    "postgresql": lambda request, tmp: str(request.getfixturevalue("postgres_url")),  # a fresh database
}
"""Each backend's store URL for one test (the store is opened with ``open_store``, as the daemon does)."""


@pytest.fixture(params=sorted(BACKENDS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.open()
    yield s
    await s.aclose()


def _run(probe: str = "p", started_ns: int | None = None, **kw: object) -> RunRecord:
    rid = kw.pop("run_id", None) or f"r{time.perf_counter_ns()}"
    return RunRecord(run_id=str(rid), probe_id=probe, kind="http", attempt=1, first_run_id=str(rid),
                     trace_id="ab" * 16, started_ns=started_ns or time.time_ns(), **kw)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_run_roundtrip_with_findings_and_spans(store: Store) -> None:
    run = _run()
    await store.insert_run(run)
    got = await store.get_run(run.run_id)
    assert got is not None and got.status is RunStatus.RUNNING and got.verdict is None
    span = Span(trace_id="ab" * 16, span_id="cd" * 8, parent_span_id=None, name="POST /webhook",
                kind=SpanKind.SERVER, start_ns=1, end_ns=5, service="ingest",
                attributes={"http.status_code": 200, "ok": True, "tags": ("a", "b"), "raw": b"\x00\x01"},
                events=(SpanEvent("exception", 3, {"exception.type": "ValueError"}),),
                links=(SpanLink("ef" * 16, "12" * 8),), status_code=StatusCode.ERROR, status_message="boom")
    run.status, run.verdict, run.finished_ns = RunStatus.FINISHED, Verdict.FAIL, time.time_ns()
    run.findings = [Finding(type="trace.missing", message='span "x" missing', expected="x", observed=None)]
    run.response = {"status": 500, "latency_s": 0.01}
    run.spans, run.span_count = [span], 1
    run.log = "line1\nline2"
    await store.finish_run(run)
    got = await store.get_run(run.run_id, with_spans=True)
    assert got is not None
    assert got.verdict is Verdict.FAIL and got.status is RunStatus.FINISHED
    assert got.findings == run.findings
    assert got.response == {"status": 500, "latency_s": 0.01}
    assert got.spans == [span]
    assert got.log == "line1\nline2"
    without = await store.get_run(run.run_id)
    assert without is not None and without.spans == []
    assert [r.run_id for r in await store.runs_for_trace("ab" * 16)] == [run.run_id]
    assert [r.run_id for r in await store.runs_for_trace(run.run_id)] == [run.run_id]
    assert await store.runs_for_trace("00" * 16) == []


@pytest.mark.anyio
async def test_abort_running_marks_only_running(store: Store) -> None:
    a, b = _run(), _run()
    await store.insert_run(a)
    await store.insert_run(b)
    b.status, b.verdict, b.finished_ns = RunStatus.FINISHED, Verdict.PASS, time.time_ns()
    await store.finish_run(b)
    assert await store.abort_running("daemon restart") == 1
    got_a, got_b = await store.get_run(a.run_id), await store.get_run(b.run_id)
    assert got_a is not None and got_a.status is RunStatus.ABORTED and got_a.abort_reason == "daemon restart"
    assert got_a.verdict is None and got_a.finished_ns is not None
    assert got_b is not None and got_b.verdict is Verdict.PASS


@pytest.mark.anyio
async def test_list_runs_paginates_newest_first(store: Store) -> None:
    base = time.time_ns()
    for i in range(5):
        await store.insert_run(_run("p", started_ns=base + i, run_id=f"r{i}"))
    await store.insert_run(_run("q", started_ns=base + 10, run_id="other"))
    page1 = await store.list_runs("p", limit=2)
    assert [r.run_id for r in page1] == ["r4", "r3"]
    page2 = await store.list_runs("p", limit=2, before_ns=page1[-1].started_ns)
    assert [r.run_id for r in page2] == ["r2", "r1"]
    assert len(await store.list_runs(limit=100)) == 6


@pytest.mark.anyio
async def test_retention_by_count_and_age(store: Store) -> None:
    now = time.time_ns()
    old = _run("p", started_ns=now - int(40 * 86400 * 1e9), run_id="old")
    old.status = RunStatus.FINISHED
    await store.finish_run(old)
    for i in range(4):
        r = _run("p", started_ns=now + i, run_id=f"n{i}")
        r.status = RunStatus.FINISHED
        await store.finish_run(r)
    deleted = await store.apply_retention(max_age_s=30 * 86400, max_runs_per_probe=3)
    assert deleted == 2
    assert [r.run_id for r in await store.list_runs("p")] == ["n3", "n2", "n1"]


@pytest.mark.anyio
async def test_events_and_kv(store: Store) -> None:
    await store.append_event("alert.attempt", {"channel": "ops", "outcome": "ok"})
    await store.append_event("reload", {"probes": 3})
    events = await store.list_events("alert.attempt")
    assert [e["data"] for e in events] == [{"channel": "ops", "outcome": "ok"}]
    assert len(await store.list_events()) == 2
    await store.kv_put("alerts", "p", {"state": "failing", "n": 2})
    assert await store.kv_get("alerts", "p") == {"state": "failing", "n": 2}
    await store.kv_put("alerts", "p", {"state": "ok"})
    assert await store.kv_list("alerts") == {"p": {"state": "ok"}}
    assert await store.kv_put_if_absent("claims", "incident-1", {"owner": "a"}) is True
    assert await store.kv_put_if_absent("claims", "incident-1", {"owner": "b"}) is False
    assert await store.kv_get("claims", "incident-1") == {"owner": "a"}
    await store.kv_delete("alerts", "p")
    assert await store.kv_get("alerts", "p") is None


@pytest.mark.anyio
async def test_pending_retries_and_ending_a_chain_keeps_its_spans(store: Store) -> None:
    spans = [Span(trace_id="ab" * 16, span_id="cd" * 8, parent_span_id=None, name="root", service="svc")]
    a1 = finished("a1", final=False, retry_at_ns=time.time_ns() + 10**9, spans=spans, span_count=1)
    await store.finish_run(a1)
    solo = finished("b1", final=False, retry_at_ns=time.time_ns())
    await store.finish_run(solo)
    assert [r.run_id for r in await store.pending_retries()] == ["a1", "b1"]
    await store.finish_run(finished("a2", attempt=2, first="a1"))
    [b1] = await store.pending_retries()  # a1 has a later attempt: not pending
    assert b1.spans == [] and b1.retry_at_ns == solo.retry_at_ns
    b1.final, b1.retry_at_ns, b1.retry_aborted = True, None, "shutdown during retry delay"
    await store.finish_run(b1)  # loaded without spans: the stored snapshot stays
    assert await store.pending_retries() == []
    await store.finish_run(finished("c1", final=False, retry_at_ns=time.time_ns()))
    await store.finish_run(finished("c2", attempt=2, first="c1", status=RunStatus.ABORTED, verdict=None,
                                    abort_reason="daemon restart"))
    [c1] = await store.pending_retries()  # its retry was aborted: pending, to be ended with that reason
    assert (c1.run_id, c1.retry_aborted) == ("c1", "attempt 2 was aborted: daemon restart")
    got = await store.get_run("a1", with_spans=True)
    assert got is not None and got.spans == spans
    ended = await store.get_run("b1")
    assert ended is not None and ended.final and ended.retry_aborted == "shutdown during retry delay"


@pytest.mark.anyio
async def test_data_survives_reopen(store_url: str) -> None:
    url = store_url
    s = open_store(url)
    await s.open()
    run = _run()
    await s.insert_run(run)
    await s.upsert_probe("p", "http", {"id": "p"}, ["tier-1"])
    await s.aclose()
    await s.aclose()  # idempotent
    s2 = open_store(url)
    await s2.open()
    assert (await s2.get_run(run.run_id)) is not None
    assert [p.probe_id for p in await s2.list_probes()] == ["p"]
    await s2.aclose()


def test_sqlite_urls() -> None:
    assert sqlite_path("sqlite:////var/lib/tc.db") == "/var/lib/tc.db"
    assert sqlite_path("sqlite:///rel.db") == "rel.db"
    assert sqlite_path("sqlite://") == ":memory:"
