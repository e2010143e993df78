"""The role seam: who this replica is in its cluster, and what it may do.

The engine and the daemon consume a :class:`Membership`: the current :class:`Role`, this replica's
member id, the members it knows of, and a stream of role changes. Only a replica whose role
``acts`` (single, active; in mode kafka a member, for the probes it owns) schedules, fires, judges and
alerts; a standby serves OTLP, the API and the dashboard and waits.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import anyio
from anyio.abc import TaskStatus


class Role(StrEnum):
    """What this replica does now."""

    SINGLE = "single"
    """The only process (``mode: single``): it does everything."""
    ACTIVE = "active"
    """``mode: standby``, holding the lock: it schedules, fires, judges and alerts."""
    STANDBY = "standby"
    """``mode: standby``, waiting for the lock: it serves reads and receives spans."""
    MEMBER = "member"
    """``mode: kafka``: one of a consumer group, firing the probes of its partitions."""

    @property
    def acts(self) -> bool:
        """Whether this role schedules, fires, judges and alerts."""
        return self is not Role.STANDBY


ROLE_GAUGE = {Role.STANDBY: 0.0, Role.ACTIVE: 1.0, Role.SINGLE: 2.0, Role.MEMBER: 3.0}
"""``tracecanary_cluster_role``'s value per role."""


@dataclass(frozen=True)
class Member:
    """A replica as the cluster sees it (``GET /api/cluster``)."""

    member: str
    role: str
    """``active`` | ``standby`` | ``single`` | ``member``, as the replica last reported it."""
    address: str | None
    """Its API address (host:port), when known."""
    started_ns: int
    heartbeat_ns: int
    """When it last reported (epoch ns)."""
    alive: bool
    """Whether that report is recent (within the cluster's heartbeat timeout)."""
    epoch: int | None = None
    """The leader epoch it holds, for the active one (mode kafka: its assignment epoch)."""
    partitions: list[int] | None = None
    """Mode kafka: the spans-topic partitions it owns."""
    probes: int | None = None
    """Mode kafka: how many probes it fires (holds the lease of)."""


def new_member_id() -> str:
    """``<host>-<pid>-<random>``: unique per process, stable for its life, safe in a libpq option."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Membership(Protocol):
    """A replica's place in its cluster (``SingleMembership``, ``StandbyMembership``, later kafka)."""

    address: str | None
    """This replica's API address (host:port) as the members list shows it; set once bound."""

    @property
    def mode(self) -> str:
        """``single`` | ``standby`` | ``kafka``."""
        ...

    @property
    def member_id(self) -> str: ...

    @property
    def role(self) -> Role: ...

    @property
    def epoch(self) -> int | None:
        """The leader epoch this replica holds while active (None otherwise, and in mode single)."""
        ...

    @property
    def previous_active(self) -> str | None:
        """The member that was active before this one took over (None: nobody, or mode single)."""
        ...

    @property
    def writer(self) -> str | None:
        """While active in a fenced mode: the identity this term's store writes carry (``<member>.e<epoch>``;
        the daemon opens its store anew with it). None otherwise, and in mode single (not fenced)."""
        ...

    async def members(self) -> list[Member]:
        """The replicas known to the cluster, this one included."""
        ...

    @property
    def results_idempotent(self) -> bool | None:
        """Mode kafka: whether results go to ``results_topic`` through an idempotent producer (False: the
        broker refused InitProducerId and the member fell back). None in the other modes."""
        ...

    def roles(self) -> AsyncIterator[Role]:
        """The current role at once, then each change (the latest one when several happened)."""
        ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take part in the cluster until cancelled (``tg.start`` it); ready once the role is known."""
        ...


class RoleState:
    """The current role and its change notifications (shared by the Membership implementations)."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self._changed = anyio.Event()

    def set(self, role: Role) -> None:
        if role is self.role:
            return
        self.role = role
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def stream(self) -> AsyncIterator[Role]:
        seen = self.role
        yield seen
        while True:
            await self._changed.wait()
            if self.role is not seen:
                seen = self.role
                yield seen


class BaseMembership:
    """What every Membership shares: the member id, the API address, the start time, the role and its change
    stream; no leader epoch, predecessor or fenced writer unless a mode says otherwise."""

    mode = ""

    def __init__(self, role: Role, member_id: str | None = None, address: str | None = None) -> None:
        self._member_id = member_id or new_member_id()
        self.address = address
        """This replica's API address (host:port), shown in the members list; set once bound."""
        self._started_ns = time.time_ns()
        self._state = RoleState(role)

    @property
    def member_id(self) -> str:
        return self._member_id

    @property
    def role(self) -> Role:
        return self._state.role

    @property
    def epoch(self) -> int | None:
        return None

    @property
    def previous_active(self) -> str | None:
        return None

    @property
    def writer(self) -> str | None:
        return None

    @property
    def results_idempotent(self) -> bool | None:
        return None

    def roles(self) -> AsyncIterator[Role]:
        return self._state.stream()


class SingleMembership(BaseMembership):
    """``mode: single``: one process, always acting."""

    mode = "single"

    def __init__(self, member_id: str | None = None, address: str | None = None) -> None:
        super().__init__(Role.SINGLE, member_id, address)

    async def members(self) -> list[Member]:
        now_ns = time.time_ns()
        return [Member(self._member_id, Role.SINGLE.value, self.address, self._started_ns, now_ns, True)]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()
