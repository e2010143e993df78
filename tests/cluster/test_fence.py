"""The fence through the store guard on a real PostgreSQL store: a member that does not hold the leader
epoch cannot start a run (FencedWrite), its finished result is dropped (counted, not kept for retry,
not merged), its kv writes are refused; the active member writes; a standby may still add silences.
And the modes a daemon cannot start in exit 2 with the reason."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from tests.cluster.test_standby import member
from tests.daemon.support import eventually
from tests.store.test_guard import Events, run
from tracecanary.daemon.cluster.fence import FencedWrite, member_url
from tracecanary.daemon.cluster.membership import Role
from tracecanary.daemon.store.base import RunStatus
from tracecanary.daemon.store.guard import GuardedStore
from tracecanary.daemon.store.urls import open_store

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def guarded(url: str, fenced: list[tuple[str, str]]) -> AsyncIterator[GuardedStore]:
    store = open_store(url)
    await store.open()
    guard = GuardedStore(store, Events(), on_fenced=lambda op, reason: fenced.append((op, reason)))
    try:
        yield guard
    finally:
        await guard.aclose()


async def test_only_the_epoch_holder_writes_through_the_guard(postgres_url: str) -> None:
    async with guarded(postgres_url, []) as plain:  # creates the schema (mode single: not fenced)
        await plain.insert_run(run("r0"))
    fenced: list[tuple[str, str]] = []
    async with member(postgres_url, "leader") as leader:
        await eventually(lambda: leader.role is Role.ACTIVE, 20, "the leader active")
        assert leader.writer is not None
        async with guarded(member_url(postgres_url, leader.writer), []) as active, \
                guarded(member_url(postgres_url, "deposed"), fenced) as deposed:
            await active.insert_run(run("r1"))
            with pytest.raises(FencedWrite, match="fenced: member deposed is not the active replica"):
                await deposed.insert_run(run("r2"))
            late = run("r1")
            late.status = RunStatus.ABORTED
            await deposed.finish_run(late)  # dropped: not raised, not kept
            assert deposed.pending_runs == []
            with pytest.raises(FencedWrite):
                await deposed.kv_put("alerts.state", "p", {"status": "failing"})
            await deposed.kv_put("alerts.silences", "s1", {"probes": ["*"]})  # any replica may silence
            assert (await active.get_run("r1")).status is RunStatus.FINISHED  # type: ignore[union-attr]
            assert await active.get_run("r2") is None
    assert [op for op, _ in fenced] == ["insert_run", "finish_run", "kv_put"]
    assert "leader epoch 1 is held by leader.e1" in fenced[0][1]


def start(tmp_path: Path, mode: str, store: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "suite.yaml"
    config.write_text(f"daemon:\n  cluster: {{mode: {mode}, bootstrap: '127.0.0.1:9', group: g}}\nprobes: []\n")
    return subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", "run", str(config), "--listen",
                           "127.0.0.1:0", "--otlp-http", "none", "--otlp-grpc", "none", "--store", store],
                          capture_output=True, text=True, timeout=60, check=False)


async def test_modes_that_cannot_start_exit_2(tmp_path: Path, postgres_url: str) -> None:
    sqlite = await anyio.to_thread.run_sync(start, tmp_path, "standby", f"sqlite:///{tmp_path / 'tc.db'}")
    assert sqlite.returncode == 2
    assert "daemon.cluster mode standby needs a postgresql:// store" in sqlite.stderr + sqlite.stdout
    kafka = await anyio.to_thread.run_sync(start, tmp_path, "kafka", postgres_url)
    assert kafka.returncode == 2 and "kafka membership: cannot connect to" in kafka.stderr + kafka.stdout




async def test_a_deposed_replica_forgets_the_runs_it_kept(tmp_path: Path) -> None:
    """Runs kept while the store failed belong to the lost term: dropped (and counted), never written later."""
    fenced: list[tuple[str, str]] = []
    async with guarded(f"sqlite:///{tmp_path / 'tc.db'}", fenced) as guard:
        guard._keep(run("k1"))
        assert guard.drop_kept("deposed") == ["k1"] and guard.pending_runs == []
        assert await guard.check() is None and await guard.get_run("k1") is None
    assert fenced == [("finish_run", "deposed")]
