"""``mode: standby``: replicas on one PostgreSQL store; the one holding a session advisory lock is active.

The lock lives on a dedicated connection of its own (a pool's release would unlock it silently) with
client TCP keepalives and ``tcp_user_timeout``, and with the server's own ``tcp_keepalives_*``,
``tcp_user_timeout`` and ``idle_session_timeout`` set for the session: the server frees the lock
within ``server_release_s`` of a partition even when a proxy keeps the TCP connection up (no
heartbeat reaches the server → the session is idle → the server ends it).

Every ``heartbeat_s`` that connection is asked whether it still holds the lock (active) or tries to
take it (standby), and the member's row in ``cluster_members`` is refreshed. A watchdog, independent
of the connection (a hung query or its cancellation may take seconds), deposes an active replica whose
last answer is older than ``lost_after_s``: it rejoins as standby at once — the daemon stops firing and
alerting on that role change — and reconnects. On takeover the ``cluster_leader`` epoch is bumped, and
the fence (pgschema.py) refuses every write of a deposed member.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
from anyio.abc import TaskStatus

from tracecanary.daemon.cluster import pgschema as sql
from tracecanary.daemon.cluster.membership import BaseMembership, Member, Role
from tracecanary.daemon.cluster.timing import StandbyTiming

log = logging.getLogger("tracecanary.cluster")
PRUNE_AFTER_S = 3600.0
"""Members not heard of for this long are removed from ``cluster_members``."""


class StandbyMembership(BaseMembership):
    """Implements :class:`~tracecanary.daemon.cluster.membership.Membership` for ``mode: standby``."""

    mode = "standby"

    def __init__(self, url: str, *, member_id: str | None = None, address: str | None = None,
                 timing: StandbyTiming = StandbyTiming(), clock: Callable[[], float] = time.monotonic,
                 on_deposed: Callable[[str], None] | None = None) -> None:
        """``url``: the postgresql:// store URL. ``on_deposed(reason)``: the active role was lost (metrics)."""
        super().__init__(Role.STANDBY, member_id, address)
        self._url = url
        self.timing = timing
        self._clock = clock
        self._on_deposed = on_deposed
        self._epoch: int | None = None
        self._writer: str | None = None
        self._previous_active: str | None = None
        self._last_ok = clock()
        self._session: anyio.CancelScope | None = None
        self._members: list[Member] = []

    # --- Membership ------------------------------------------------------------------------------
    @property
    def epoch(self) -> int | None:
        return self._epoch if self._state.role is Role.ACTIVE else None

    @property
    def previous_active(self) -> str | None:
        return self._previous_active

    @property
    def writer(self) -> str | None:
        return self._writer if self._state.role is Role.ACTIVE else None

    async def members(self) -> list[Member]:
        """As of the last heartbeat (read with it, on the lock connection)."""
        return list(self._members)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watchdog)
            task_status.started()
            while True:
                await self._one_session()
                await anyio.sleep(self.timing.retry_s)

    # --- the lock connection ---------------------------------------------------------------------
    async def _one_session(self) -> None:
        """Connect, then heartbeat until the connection fails or the watchdog cancels it; the connection
        is closed on the way out (a shutdown first marks this member as left)."""
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            with anyio.CancelScope() as self._session:
                try:
                    with anyio.fail_after(self.timing.connect_timeout_s + 1):
                        conn = await psycopg.AsyncConnection.connect(
                            self.timing.conninfo(self._url, self._member_id), autocommit=True)
                        await self._ensure_schema(conn)
                    self._last_ok = self._clock()
                    while True:
                        await self._tick(conn)
                        await anyio.sleep(self.timing.heartbeat_s)
                except (psycopg.Error, OSError, TimeoutError) as e:
                    self._lost(f"lock connection failed: {type(e).__name__}: {e}".strip())
        finally:
            self._session = None
            self._lost("lock connection ended")
            if conn is not None:
                await self._close(conn)

    async def _close(self, conn: psycopg.AsyncConnection[Any]) -> None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(min(1.0, self.timing.heartbeat_s)):
                try:
                    await conn.execute(sql.LEAVE, {"member": self._member_id})
                except psycopg.Error:
                    pass  # the connection is already gone: nothing to mark
            with anyio.move_on_after(self.timing.connect_timeout_s):
                await conn.close()

    async def _ensure_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (sql.DDL_LOCK_KEY,))
            await conn.execute(sql.SCHEMA)
            for table in sql.FENCED_TABLES:
                await conn.execute(sql.fence_triggers(table))
            await conn.execute(sql.PRUNE_MEMBERS, {"keep_ns": int(PRUNE_AFTER_S * 1e9)})

    async def _tick(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """One heartbeat: hold (or try to take) the lock, refresh this member's row, read the members."""
        if self.role is Role.ACTIVE:
            held = (await (await conn.execute(sql.HOLDS_LOCK)).fetchone() or (False,))[0]
            if not held:
                self._lost("the advisory lock is no longer held by this connection")
                return
        else:
            got = (await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (sql.LOCK_KEY,))).fetchone()
                   or (False,))[0]
            if got:
                await self._take_over(conn)
        await conn.execute(sql.HEARTBEAT, {"member": self._member_id, "role": self.role.value, "epoch": self.epoch,
                                           "address": self.address, "started_ns": self._started_ns})
        ttl_ns = int((self.timing.lost_after_s + self.timing.heartbeat_s) * 1e9)
        rows = await (await conn.execute(sql.MEMBERS, {"ttl_ns": ttl_ns})).fetchall()
        self._members = [Member(member=r[0], role=r[1], epoch=r[2], address=r[3], started_ns=r[4],
                                heartbeat_ns=r[5], alive=bool(r[6])) for r in rows]
        self._last_ok = self._clock()

    async def _take_over(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            prev = await (await conn.execute(sql.PREVIOUS_LEADER)).fetchone()
            row = await (await conn.execute(sql.TAKEOVER, {"member": self._member_id})).fetchone()
        assert row is not None
        self._epoch, self._writer = int(row[0]), str(row[1])
        self._previous_active = str(prev[0]) if prev is not None and prev[0] is not None else None
        self._last_ok = self._clock()
        log.warning("cluster.takeover member=%s epoch=%d previous=%s", self._member_id, self._epoch,
                    self._previous_active or "none")
        self._state.set(Role.ACTIVE)

    # --- losing the role -------------------------------------------------------------------------
    def _lost(self, reason: str) -> None:
        """Back to standby (at once: the daemon stops acting on the role change)."""
        if self._state.role is Role.ACTIVE:
            log.error("cluster.deposed member=%s epoch=%s reason=%s", self._member_id, self._epoch, reason)
            self._state.set(Role.STANDBY)
            if self._on_deposed is not None:
                self._on_deposed(reason)
        elif reason != "lock connection ended":
            log.warning("cluster.lock_connection member=%s %s", self._member_id, reason)

    async def _watchdog(self) -> None:
        """Depose an active replica whose lock connection has not answered for ``lost_after_s``: while
        active it sleeps until that deadline (no polling delay on top of it), then checks again."""
        while True:
            if self._state.role is not Role.ACTIVE:
                await anyio.sleep(self.timing.heartbeat_s / 4)
                continue
            remaining_s = self._last_ok + self.timing.lost_after_s - self._clock()
            if remaining_s > 0:
                await anyio.sleep(min(remaining_s, self.timing.heartbeat_s))
                continue
            self._lost(f"no answer from PostgreSQL for {self._clock() - self._last_ok:.1f}s")
            if self._session is not None:
                self._session.cancel()
