"""Election and fencing on a real PostgreSQL server (tests/fixtures/postgres.py), with short durations:
one active among replicas, takeover when the active goes, a partition (a blackholed loopback proxy)
deposes the active within ``lost_after_s`` and its late writes are refused by the fence."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import psycopg
import pytest

from tests.daemon.support import eventually
from tracecanary.daemon.cluster.fence import fenced_reason, member_url
from tracecanary.daemon.cluster.membership import Role
from tracecanary.daemon.cluster.standby import StandbyMembership
from tracecanary.daemon.cluster.timing import StandbyTiming
from tracecanary.demo.tcpproxy import tcp_proxy

pytestmark = pytest.mark.anyio

FAST = StandbyTiming(heartbeat_s=0.2, lost_after_s=1.0, server_release_s=2.0, connect_timeout_s=2.0, retry_s=0.2)
KV = "CREATE TABLE IF NOT EXISTS kv (namespace TEXT, key TEXT, value TEXT, PRIMARY KEY (namespace, key))"


@asynccontextmanager
async def member(url: str, name: str, timing: StandbyTiming = FAST) -> AsyncIterator[StandbyMembership]:
    m = StandbyMembership(url, member_id=name, timing=timing)
    async with anyio.create_task_group() as tg:
        await tg.start(m.run)
        try:
            yield m
        finally:
            tg.cancel_scope.cancel()


async def write_kv(url: str, member_id: str, key: str) -> None:
    async with await psycopg.AsyncConnection.connect(member_url(url, member_id), autocommit=True) as conn:
        await conn.execute("INSERT INTO kv VALUES ('alerts.state', %s, '{}')", (key,))


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}").geturl()


async def test_one_active_then_the_standby_takes_over_with_a_new_epoch(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute(KV)
    async with member(postgres_url, "a") as a, member(postgres_url, "b") as b:
        await eventually(lambda: Role.ACTIVE in (a.role, b.role), 20, "an active member")
        await anyio.sleep(FAST.heartbeat_s * 3)
        assert sorted([a.role, b.role]) == [Role.ACTIVE, Role.STANDBY]
        first, second = (a, b) if a.role is Role.ACTIVE else (b, a)
        await eventually(lambda: len(second._members) == 2, 20, "both members listed")
        assert {m.member for m in await second.members() if m.alive} == {"a", "b"}
        assert first.writer == f"{first.member_id}.e{first.epoch}" and second.writer is None
        await write_kv(postgres_url, first.writer, "by-active")
        with pytest.raises(psycopg.Error) as refused:
            await write_kv(postgres_url, second.member_id, "by-standby")
        assert "fenced: member" in (fenced_reason(refused.value) or "")
        epoch = first.epoch
    async with member(postgres_url, "c") as c:
        await eventually(lambda: c.role is Role.ACTIVE, 20, "c active")
        assert c.epoch is not None and epoch is not None and c.epoch > epoch
        assert c.previous_active in ("a", "b")


async def test_a_partitioned_active_is_deposed_and_its_late_writes_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute(KV)
    port = urlsplit(postgres_url).port
    assert port is not None
    async with tcp_proxy("127.0.0.1", port) as proxy:
        via_proxy = with_port(postgres_url, proxy.port)
        async with member(via_proxy, "cut") as cut:
            await eventually(lambda: cut.role is Role.ACTIVE, 20, "the proxied member active")
            assert cut.writer is not None
            late = await psycopg.AsyncConnection.connect(member_url(via_proxy, cut.writer), autocommit=True)
            await late.execute("INSERT INTO kv VALUES ('alerts.state', 'before', '{}')")
            async with member(postgres_url, "other") as other:
                await anyio.sleep(FAST.heartbeat_s * 3)
                assert other.role is Role.STANDBY
                proxy.blackhole()
                cut_at = time.monotonic()
                await eventually(lambda: cut.role is Role.STANDBY, 10, "the cut member deposed")
                stopped_s = time.monotonic() - cut_at
                await eventually(lambda: other.role is Role.ACTIVE, 30, "the other member takes over")
                took_over_s = time.monotonic() - cut_at
                async with anyio.create_task_group() as tg:  # the late write, sent during the partition
                    result: list[BaseException | None] = []

                    async def write() -> None:
                        try:
                            await late.execute("INSERT INTO kv VALUES ('alerts.state', 'late', '{}')")
                            result.append(None)
                        except psycopg.Error as e:
                            result.append(e)

                    tg.start_soon(write)
                    await anyio.sleep(0.2)
                    proxy.heal()
                await late.close()
    print(f"partition: deposed after {stopped_s:.2f}s, standby active after {took_over_s:.2f}s")
    assert stopped_s <= FAST.lost_after_s + 2.0
    [error] = result
    assert error is not None and "fenced: member cut" in (fenced_reason(error) or ""), error
    with psycopg.connect(postgres_url) as c:
        keys = [r[0] for r in c.execute("SELECT key FROM kv ORDER BY key")]
    assert keys == ["before"]
