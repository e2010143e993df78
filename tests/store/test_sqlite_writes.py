"""SQLite store writes: group commit (durable on return, failures isolated) and the span snapshot format."""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from tracecanary.assertions.spans import Span, SpanEvent, SpanKind, SpanLink, StatusCode, span_to_dict
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.store.groupcommit import _Write, apply_batch
from tracecanary.daemon.store.snapshot import decode_spans, encode_spans
from tracecanary.daemon.store.sqlite import SqliteStore


def _run(i: int) -> RunRecord:
    return RunRecord(run_id=f"run-{i:04d}", probe_id="p", kind="http", attempt=1, first_run_id=f"run-{i:04d}",
                     trace_id="ab" * 16, started_ns=time.time_ns() + i)


def _spans() -> list[Span]:
    res = {"service.name": "shop", "host": "a"}
    return [
        Span(trace_id="ab" * 16, span_id="cd" * 8, parent_span_id=None, name="POST /webhook", kind=SpanKind.SERVER,
             start_ns=1, end_ns=5, service="shop", resource=res,
             attributes={"n": 1, "f": 0.5, "ok": True, "tags": ("a", "b"), "raw": b"\x00\x01", "m": {"k": "v"}},
             events=(SpanEvent("exception", 3, {"exception.type": "ValueError"}),),
             links=(SpanLink("ef" * 16, "12" * 8, {"why": "queue"}),), status_code=StatusCode.ERROR,
             status_message="boom", scope="svc.http"),
        Span(trace_id="ab" * 16, span_id="ee" * 8, parent_span_id="cd" * 8, name="handle", start_ns=2, end_ns=4,
             service="shop", resource=res),
        Span(trace_id="ab" * 16, span_id="ff" * 8, parent_span_id="ee" * 8, name="other", service=""),
    ]


def test_snapshot_roundtrip_keeps_every_field() -> None:
    spans = _spans()
    assert decode_spans(encode_spans(spans)) == spans


def test_snapshot_reads_format_1() -> None:
    spans = _spans()
    old = zlib.compress(json.dumps([span_to_dict(s) for s in spans]).encode(), 6)
    assert decode_spans(old) == spans


def test_snapshot_writes_attribute_values_as_format_1_does() -> None:
    spans = _spans()
    rows = json.loads(zlib.decompress(encode_spans(spans)))["spans"]
    assert [r[8] for r in rows] == [span_to_dict(s)["attributes"] for s in spans]


def test_snapshot_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="format"):
        decode_spans(zlib.compress(b'{"v": 99, "spans": []}'))


@pytest.mark.anyio
async def test_concurrent_writes_share_commits_and_are_durable_on_return(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tc.db'}"
    store = SqliteStore(url)
    await store.open()
    committed: list[str] = []

    async def one(i: int) -> None:
        run = _run(i)
        await store.insert_run(run)
        run.status, run.verdict, run.finished_ns, run.spans = RunStatus.FINISHED, Verdict.PASS, time.time_ns(), _spans()
        await store.finish_run(run)
        # Durable on return: a second connection (another process's view) already sees the result.
        with sqlite3.connect(tmp_path / "tc.db") as other:
            row = other.execute("SELECT status FROM runs WHERE run_id=?", (run.run_id,)).fetchone()
        assert row == ("finished",)
        committed.append(run.run_id)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert len(committed) == 40
        assert store._writes.batches < 80  # 80 writes: concurrent writers shared commits
        got = await store.get_run("run-0007", with_spans=True)
        assert got is not None and got.verdict is Verdict.PASS and got.spans == _spans()
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'tc.db'}")
    await store.open()
    try:
        await store.insert_run(_run(1))
        outcomes: dict[int, str] = {}

        async def insert(i: int) -> None:
            try:
                await store.insert_run(_run(i))  # run 1 exists already: a primary-key violation
                outcomes[i] = "ok"
            except sqlite3.IntegrityError:
                outcomes[i] = "integrity"

        async with anyio.create_task_group() as tg:
            for i in (2, 1, 3, 4):
                tg.start_soon(insert, i)
        assert outcomes == {1: "integrity", 2: "ok", 3: "ok", 4: "ok"}
        runs = await store.list_runs(limit=10)
        assert sorted(r.run_id for r in runs) == ["run-0001", "run-0002", "run-0003", "run-0004"]
        assert await store.kv_put_if_absent("ns", "k", 1) is True
        assert await store.kv_put_if_absent("ns", "k", 2) is False
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_writes_after_close_fail_and_do_not_hang(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'tc.db'}")
    await store.open()
    await store.aclose()
    with anyio.fail_after(5), pytest.raises(RuntimeError, match="not open"):
        await store.insert_run(_run(1))


@pytest.mark.anyio
async def test_a_cancelled_writer_still_commits_and_leaves_no_writer_stranded(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'tc.db'}")
    await store.open()
    try:
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(store.insert_run, _run(i))
            await anyio.lowlevel.checkpoint()  # let them queue behind the first batch
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await store.insert_run(_run(99))
        assert len(await store.list_runs(limit=50)) == 11
    finally:
        await store.aclose()


def test_apply_batch_retries_one_by_one_after_a_failure(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    conn.commit()
    def insert(key: str) -> _Write[int]:
        return _Write(lambda c: c.execute("INSERT INTO t VALUES (?)", (key,)).rowcount)

    writes = [insert(k) for k in ("a", "b", "a")]
    apply_batch(conn, writes)
    assert [w.error is None for w in writes] == [True, True, False]
    assert isinstance(writes[2].error, sqlite3.IntegrityError)
    assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [("a",), ("b",)]
