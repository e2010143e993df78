"""The PostgreSQL store's connection faults against a real server stopped under it (its own cluster, so
the session's is untouched): a lost connection is retried, then a StoreFault naming the cause; the guard
reports it (what /readyz shows), keeps the runs refused meanwhile and writes them once the server is back."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import anyio
import psycopg
import pytest

from tests.store.test_guard import Events
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus, StoreFault
from tracecanary.daemon.store.guard import GuardedStore, StoreHealthSettings, open_guarded
from tracecanary.daemon.store.postgres import PostgresStore
from tracecanary.demo.broker import free_port
from tracecanary.demo.pgcluster import PgCluster
from tracecanary.errors import StartupError

pytestmark = pytest.mark.anyio
_names = itertools.count(1)


@pytest.fixture
def url(own_postgres: PgCluster) -> str:
    return own_postgres.create_database(f"faults_{next(_names)}")


def run(run_id: str) -> RunRecord:
    now = time.time_ns()
    return RunRecord(run_id=run_id, probe_id="p", kind="http", attempt=1, first_run_id=run_id, trace_id="ab" * 16,
                     started_ns=now, status=RunStatus.FINISHED, finished_ns=now + 1, verdict=Verdict.PASS)


async def test_server_stopped_is_a_fault_then_recovered(own_postgres: PgCluster, url: str) -> None:
    store = PostgresStore(url, op_timeout_s=5, retry_delays_s=(0.05, 0.2))
    await store.open()
    events = Events()
    guard = GuardedStore(store, events)
    try:
        await _stop_and_recover(own_postgres, guard, store, events)
    finally:
        await guard.aclose()


async def _stop_and_recover(own_cluster: PgCluster, guard: GuardedStore, store: PostgresStore, events: Events) -> None:
    await guard.finish_run(run("before"))
    own_cluster.stop_server("immediate")  # a crash: every session cut, new connections refused
    try:
        with anyio.fail_after(30), pytest.raises(StoreFault, match=r": connection lost: .*Connection refused.* \(3 attempts over") as fault:
            await store.list_runs()
        assert f"127.0.0.1:{own_cluster.port}" in str(fault.value) and "\n" not in str(fault.value)
        reason = await guard.check()
        assert reason is not None and "Connection refused" in reason, reason
        assert events.failing == [reason]
        with anyio.fail_after(30):
            await guard.finish_run(run("during"))  # refused: kept, not raised to the runner
        assert [r.run_id for r in guard.pending_runs] == ["during"]
    finally:
        assert own_cluster.start_server().returncode == 0
    assert await guard.check() is None
    assert events.recovered == [reason] and events.lost == []
    assert {r.run_id for r in await store.list_runs()} == {"before", "during"}


async def test_an_unreachable_server_at_start_is_a_startup_error(url: str) -> None:
    nowhere = url.rsplit(":", 1)[0] + f":{free_port()}/tc"
    with anyio.fail_after(30), pytest.raises(StoreFault, match=r"^connection failed: .*Connection refused.* \(3 attempts\)$"):
        await PostgresStore(nowhere, open_timeout_s=2).open()
    with anyio.fail_after(30), pytest.raises(StartupError, match=r"^store postgresql://tc@127\.0\.0\.1:\d+/tc: connection failed: "):
        await open_guarded(nowhere, Events(), StoreHealthSettings(check_timeout=2))


async def test_an_unreachable_server_is_one_line_and_exit_2_without_the_password(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("probes:\n  - id: p\n    kind: http\n    request: {url: 'http://127.0.0.1:9/'}\n")
    url = f"postgresql://tc:secret-pw@127.0.0.1:{free_port()}/tc"
    with anyio.fail_after(60):
        proc = await anyio.run_process([sys.executable, "-m", "tracecanary.daemon.cli.main", "check", str(suite),
                                        "--store", url, "--otlp-http", "127.0.0.1:0", "--otlp-grpc", "none"],
                                       cwd=tmp_path, check=False)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "secret-pw" not in stderr, stderr
    assert stderr.startswith("tracecanary: store postgresql://tc:[redacted]@127.0.0.1:") and "Connection refused" in stderr


async def test_a_statement_that_never_answers_is_bounded_then_a_fault(url: str) -> None:
    """A server that holds a statement forever (here: a lock another session never releases) looks like a
    hung server: each attempt is cut at ``op_timeout_s``, then it is a fault; the store works once it answers."""
    store = PostgresStore(url, op_timeout_s=0.5, retry_delays_s=(0.05,))
    await store.open()
    try:
        async with await psycopg.AsyncConnection.connect(url) as other:
            await other.execute("LOCK TABLE kv IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
            with anyio.fail_after(20), pytest.raises(StoreFault, match=r": no answer within 0\.5s \(server hung or unreachable; 2 attempts over"):
                await store.kv_put("ns", "k", 1)
            await other.rollback()
        await store.kv_put("ns", "k", 2)
        assert await store.kv_get("ns", "k") == 2
        assert await store.health() is None
    finally:
        await store.aclose()
