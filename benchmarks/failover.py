"""Active/standby election on a real PostgreSQL: how soon a standby takes over, how soon a cut-off active stops.

    python benchmarks/failover.py [--quick] [--store postgresql://…]

Each member is a child process running ``StandbyMembership`` with the default timing (1 s heartbeat, 3 s
without an answer → standby, 6 s until the server ends a silent lock session); it prints each role change.
Two figures:

- kill -9 of the active member → the standby reports ``active`` (goal ≤ 15 s; the server frees a dead
  process's lock as its socket closes, so this is about one heartbeat);
- the active member's PostgreSQL connection blackholed through a loopback proxy → it reports ``standby``
  (goal ≤ 3 s after its last answer, so ≤ 3 s after the cut) and the other member takes over (goal ≤ 10 s).

Without ``--store`` a throwaway local cluster is started (demo/pgcluster.py) and removed after.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.text import TextReceiveStream

from tracecanary.demo.tcpproxy import tcp_proxy

WAIT_S = 60.0


@dataclass
class Child:
    """A member process and the role changes it has printed (role, time.time())."""

    name: str
    proc: Process
    changes: list[tuple[str, float]]

    async def role(self, want: str, after: float = 0.0) -> float:
        """When it reported ``want`` at or after ``after`` (waits up to WAIT_S)."""
        with anyio.fail_after(WAIT_S):
            while True:
                for role, at in self.changes:
                    if role == want and at >= after:
                        return at
                await anyio.sleep(0.02)


async def _read(stream: ByteReceiveStream, changes: list[tuple[str, float]]) -> None:
    async for chunk in TextReceiveStream(stream):
        for line in chunk.splitlines():
            if line.startswith("role "):
                changes.append((line.split()[1], time.time()))


@asynccontextmanager
async def member(url: str, name: str) -> AsyncIterator[Child]:
    proc = await anyio.open_process([sys.executable, __file__, "--member", url, name], stderr=subprocess.DEVNULL)
    child = Child(name, proc, [])
    async with anyio.create_task_group() as tg:
        assert proc.stdout is not None
        tg.start_soon(_read, proc.stdout, child.changes)
        try:
            yield child
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            tg.cancel_scope.cancel()


async def kill_round(url: str, i: int) -> float:
    async with member(url, f"a{i}") as a:
        await a.role("active")
        async with member(url, f"b{i}") as b:
            await b.role("standby")
            await anyio.sleep(1.5 + (i * 0.37) % 1.0)  # b is connected and heartbeating, at varied phases
            killed_at = time.time()
            a.proc.kill()
            return await b.role("active", after=killed_at) - killed_at


async def partition_round(url: str, i: int) -> tuple[float, float]:
    port = urlsplit(url).port or 5432
    async with tcp_proxy("127.0.0.1", port) as proxy:
        parts = urlsplit(url)
        via = parts._replace(netloc=f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{proxy.port}").geturl()
        async with member(via, f"cut{i}") as a:
            await a.role("active")
            async with member(url, f"other{i}") as b:
                await b.role("standby")
                await anyio.sleep(1.5 + (i * 0.37) % 1.0)
                cut_at = time.time()
                proxy.blackhole()
                stopped = await a.role("standby", after=cut_at) - cut_at
                took_over = await b.role("active", after=cut_at) - cut_at
                return stopped, took_over


def summary(name: str, values: list[float], goal_s: float) -> None:
    print(f"{name:<44} n={len(values):<3} median {statistics.median(values):5.2f} s   max {max(values):5.2f} s"
          f"   goal ≤ {goal_s:g} s")


async def bench(url: str | None, kills: int, partitions: int) -> None:
    from tracecanary.demo.pgcluster import start_postgres

    cluster = None
    if url is None:
        cluster = await anyio.to_thread.run_sync(start_postgres)
        url = cluster.create_database("failover")
    try:
        takeover = [await kill_round(url, i) for i in range(kills)]
        cuts = [await partition_round(url, i) for i in range(partitions)]
    finally:
        if cluster is not None:
            cluster.stop()
    summary("kill -9 of the active → standby active", takeover, 15)
    summary("connection blackholed → active stops", [s for s, _ in cuts], 3)
    summary("connection blackholed → standby active", [t for _, t in cuts], 10)


async def run_member(url: str, name: str) -> None:
    """Child mode: one StandbyMembership with the default timing, printing each role."""
    from tracecanary.daemon.cluster.standby import StandbyMembership

    m = StandbyMembership(url, member_id=name)
    async with anyio.create_task_group() as tg:
        await tg.start(m.run)
        async for role in m.roles():
            print(f"role {role.value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 kills and 1 partition (CI)")
    parser.add_argument("--store", help="a postgresql:// URL (default: a throwaway local cluster)")
    parser.add_argument("--member", nargs=2, metavar=("URL", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.member:
        anyio.run(run_member, *args.member)
        return
    anyio.run(bench, args.store, 3 if args.quick else 20, 1 if args.quick else 5)


if __name__ == "__main__":
    main()
