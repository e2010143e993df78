"""Passive probes in kafka mode: the trace filter hands real traffic to the passive judge, and the
probe's owner sums every member's window counts from PostgreSQL exactly once (real PostgreSQL).

Each member is a real passive judge behind a real trace buffer and trace filter, fed the Collector's
kafka exporter messages (one OTLP protobuf trace per message, keyed by the hex trace id); time is the
injected clock of ``tests/run/test_passive.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import psycopg_pool
import pytest

from tests.run.test_passive import Traffic, probe, rig
from tracecanary.assertions.spans import Span
from tracecanary.daemon.cluster.kafka_db import Conn, open_cluster_db
from tracecanary.daemon.cluster.kafka_filter import TraceFilter
from tracecanary.daemon.cluster.kafka_passive import MemberPassiveWindows, PassiveCountBook
from tracecanary.daemon.run.passive import PassiveJudge
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp_encode import encode_request
from tracecanary.probes.passive import PassiveCounts, in_sample, window_findings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool(postgres_url: str) -> AsyncIterator[psycopg_pool.AsyncConnectionPool[Conn]]:
    p = await open_cluster_db(postgres_url)
    yield p
    await p.close()


class Member:
    """One member's passive side: buffer, judge, the trace filter in front, and its count book."""

    def __init__(self, name: str, pool: psycopg_pool.AsyncConnectionPool[Conn] | None = None, *,
                 scan_foreign: bool = False, **probe_extra: str) -> None:
        self.clock, self.buffer, self.judge = rig(probe(**probe_extra))
        self.filter = TraceFilter(scan_foreign=scan_foreign)
        self.filter.tapped = lambda raw: self.judge.active and self.judge.wants(raw)
        self.traffic = Traffic(self.clock, seed=ord(name[0]))
        self.book = PassiveCountBook(pool, self.judge, name, f"{name}-session") if pool is not None else None

    def send(self, spans: list[Span]) -> str:
        """One trace as the Collector's kafka exporter writes it to this member's partition."""
        return self.filter.ingest(self.buffer, spans[0].trace_id.encode(),
                                  encode_request(spans).SerializeToString(), "otlp_proto")

    async def judge_traffic(self, n: int, broken: int) -> None:
        for i in range(n):
            self.send(self.traffic.trace(broken=i < broken))
        self.clock.s += 11  # past every deadline (timeout 10s)
        await self.judge.process()


def test_foreign_traffic_reaches_the_passive_judge_only_in_its_sample() -> None:
    for scan_foreign in (False, True):  # keyed shortcut, and the scanning path (someone waits for links)
        m = Member("a", scan_foreign=scan_foreign, sample="50%")
        bound = probe(sample="50%").sample_bound()
        traces = [m.traffic.trace() for _ in range(200)]
        decisions = [m.send(t) for t in traces]
        expected = ["tapped" if in_sample(bytes.fromhex(t[0].trace_id), bound) else "skipped" for t in traces]
        assert decisions == expected and 60 < decisions.count("tapped") < 140
        assert m.filter.stats.tapped == decisions.count("tapped")
    plain = TraceFilter(scan_foreign=False)  # no passive judge: foreign traces skipped by their key
    assert plain.ingest(TraceBuffer(), b"ab" * 16, b"\x0a\x00", "otlp_proto") == "skipped"
    idle = Member("b")
    idle.judge.configure([])  # passive probes removed: the tap says no
    assert idle.send(idle.traffic.trace()) == "skipped"


async def test_the_owner_sums_every_members_counts_once(pool: psycopg_pool.AsyncConnectionPool[Conn]) -> None:
    a, b, c = (Member(n, pool) for n in ("a", "b", "c"))
    assert a.book and b.book and c.book
    await a.judge_traffic(30, broken=1)
    await b.judge_traffic(40, broken=2)
    await c.judge_traffic(20, broken=3)
    assert await b.book.flush() == 1 and await c.book.flush() == 1
    del c  # c dies: its rows stay and are summed
    await b.judge_traffic(10, broken=0)  # judged after b's flush: the next window's
    window = await a.book.collect("webhook")  # a owns the probe: its own counts + every row
    assert (window.judged, window.failed, dict(window.kinds)) == (90, 6, {"trace.missing": 6})
    assert len(window.worst) == 6 and window_findings(window, "failure_ratio > 5%", 20)[0].observed == round(6 / 90, 6)
    assert (await a.book.collect("webhook")).judged == 0  # every row consumed once
    assert await b.book.flush() == 1
    assert (await a.book.collect("webhook")).judged == 10
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT member_id, consumed_by, count(*), sum(judged) FROM passive_counts "
                                 "GROUP BY 1, 2 ORDER BY 1")
        assert await cur.fetchall() == [("a", "a-session", 1, 30), ("b", "a-session", 2, 50), ("c", "a-session", 1, 20)]


async def test_two_owners_around_a_rebalance_never_count_a_row_twice(
        pool: psycopg_pool.AsyncConnectionPool[Conn]) -> None:
    members = [Member(n, pool) for n in ("a", "b", "c", "d")]
    for i, m in enumerate(members):
        await m.judge_traffic(5 + i, broken=i)
    for m in members[2:]:
        assert m.book
        await m.book.flush()
    windows: list[PassiveCounts] = []

    async def collect(m: Member) -> None:
        assert m.book
        windows.append(await m.book.collect("webhook"))

    async with anyio.create_task_group() as tg:  # the old and the new owner run the probe at once
        for m in members[:2]:
            tg.start_soon(collect, m)
    total = PassiveCounts.total(windows)
    assert (total.judged, total.failed) == (5 + 6 + 7 + 8, 0 + 1 + 2 + 3)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM passive_counts WHERE consumed_at IS NULL")
        assert await cur.fetchone() == (0,)


async def test_counts_survive_a_failed_write(postgres_url: str) -> None:
    pool = await open_cluster_db(postgres_url)
    m = Member("a", pool)
    assert m.book
    await m.judge_traffic(25, broken=1)
    await pool.close()  # the database is gone: nothing is lost, the run says why
    with pytest.raises(OSError, match="not collected"):
        await m.book.collect("webhook")
    with pytest.raises(OSError, match="not stored"):
        await m.book.flush()
    assert m.book.stats.write_errors == 2
    with pytest.raises(OSError, match="not started"):
        await MemberPassiveWindows().collect("webhook")
    kept = m.judge.take("webhook")
    assert (kept.judged, kept.failed) == (25, 1)


def test_member_judges_every_passive_probe() -> None:
    """Owned or not: the judge is configured with every passive probe of the config."""
    judge = PassiveJudge()
    judge.configure([probe("p1"), probe("p2")])
    assert judge.probe_ids == ["p1", "p2"]
