"""Per-probe leases against a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import psycopg_pool
import pytest

from tests.daemon.support import eventually
from tracecanary.daemon.cluster.kafka_db import Conn, open_cluster_db
from tracecanary.daemon.cluster.kafka_leases import LeaseBook, keep_leases


@pytest.fixture
async def pool(postgres_url: str) -> AsyncIterator[psycopg_pool.AsyncConnectionPool[Conn]]:
    p = await open_cluster_db(postgres_url)
    yield p
    await p.close()


@pytest.mark.anyio
async def test_one_holder_per_probe_release_and_epochs(pool: psycopg_pool.AsyncConnectionPool[Conn]) -> None:
    a, b = LeaseBook(pool, "a", ttl_s=30), LeaseBook(pool, "b", ttl_s=30)
    e1, e2 = await a.new_epoch(), await b.new_epoch()
    assert e2 > e1 > 0
    assert await a.sync({"p1", "p2"}) == {"p1", "p2"}
    assert await b.sync({"p2", "p3"}) == {"p3"}  # p2 is a's, live
    assert a.holds("p2") and not b.holds("p2") and b.holds("p3")
    assert await a.sync({"p1"}) == {"p1"}  # the group moved p2: a releases it
    assert not a.holds("p2")
    assert await b.sync({"p2", "p3"}) == {"p2", "p3"}
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT probe_id, member_id, epoch FROM cluster_leases ORDER BY probe_id")
        assert await cur.fetchall() == [("p1", "a", e1), ("p2", "b", e2), ("p3", "b", e2)]
    await a.release_all()
    assert await b.sync({"p1", "p2", "p3"}) == {"p1", "p2", "p3"}


@pytest.mark.anyio
async def test_member_cut_off_from_broker_stops_and_lease_moves(pool: psycopg_pool.AsyncConnectionPool[Conn]) -> None:
    ttl_s = 3.0
    a, b = LeaseBook(pool, "a", ttl_s=ttl_s), LeaseBook(pool, "b", ttl_s=ttl_s)
    reachable = True

    async def a_alive() -> bool:
        return reachable

    async def b_alive() -> bool:
        return True

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: keep_leases(a, lambda: {"p1"}, a_alive, interval_s=0.1))
        await eventually(lambda: a.holds("p1"), 20, "a to hold p1")
        tg.start_soon(lambda: keep_leases(b, lambda: {"p1"}, b_alive, retry_s=0.05))
        await anyio.sleep(ttl_s)  # b keeps being refused while a renews (a real interval, not a sync point)
        assert a.holds("p1") and not b.holds("p1")
        assert b.stats.refused > 0
        reachable = False  # a can no longer reach the broker: it stops renewing
        cut_at = anyio.current_time()
        await eventually(lambda: not a.holds("p1"), 20, "a to stop firing")
        stopped_after_s = anyio.current_time() - cut_at
        await eventually(lambda: b.holds("p1"), 20, "b to take p1 over")
        assert not a.holds("p1")
        assert a.stats.skipped_rounds > 0
        tg.cancel_scope.cancel()
    assert stopped_after_s <= ttl_s + 5.0  # bounded by the lease; generous slack for a loaded machine


@pytest.mark.anyio
async def test_ownership_arriving_during_a_round_starts_the_next_round_at_once(
        pool: psycopg_pool.AsyncConnectionPool[Conn]) -> None:
    # The member's round checks the broker first (a round trip). A new ownership published meanwhile
    # used to be missed — the round then waited on the *next* change — so the gained probes were claimed
    # only an interval later (3.3 s with the default 10 s session timeout: failover 18 s instead of 15).
    book = LeaseBook(pool, "a", ttl_s=30.0)
    owned = {"p1"}
    event = anyio.Event()
    in_round, release = anyio.Event(), anyio.Event()

    async def alive() -> bool:
        if not in_round.is_set():
            in_round.set()
            await release.wait()
        return True

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: keep_leases(book, lambda: set(owned), alive, changed=lambda: event))
        await in_round.wait()
        owned.add("p2")  # the ownership changes while the first round waits on the broker
        event.set()
        event = anyio.Event()
        release.set()
        with anyio.fail_after(5):  # the interval is 10 s: only the missed change can wake the keeper sooner
            await eventually(lambda: book.holds("p2"), 5, "the gained probe to be claimed")
        tg.cancel_scope.cancel()
