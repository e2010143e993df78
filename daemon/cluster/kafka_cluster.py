"""``daemon.cluster.mode: kafka``: the Membership the daemon consumes, built from the kafka parts.

One member = the consumer group membership (``kafka_membership.py``) + per-probe leases
(``kafka_leases.py``) + the results outbox (``kafka_results.py``) + the broadcast topic and forwarding
(``kafka_broadcast.py``, ``kafka_forward.py``). Its role is always ``member``; which probes it fires is
:meth:`KafkaClusterMembership.owns`: the group gave it the probe's partition **and** it holds the lease.

The two small topics are named after the group (``<group>.forward`` with as many partitions as the
spans topic, ``<group>.broadcast`` with one), so clusters sharing a broker do not mix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import anyio.abc
import psycopg_pool
from aiokafka.errors import KafkaError

from tracecanary.daemon.cluster.kafka_broadcast import Broadcast, RelayedEventHub
from tracecanary.daemon.cluster.kafka_db import Conn, open_cluster_db
from tracecanary.daemon.cluster.kafka_forward import Forwarder, ForwardRouter, ensure_topic
from tracecanary.daemon.cluster.kafka_leases import LeaseBook, keep_leases
from tracecanary.daemon.cluster.kafka_membership import KafkaMembership, MembershipConfig, Ownership
from tracecanary.daemon.cluster.kafka_park import CorrelationPark, reaches_other_traces
from tracecanary.daemon.cluster.kafka_passive import MemberPassiveWindows, PassiveCountBook
from tracecanary.daemon.cluster.kafka_results import ResultsOutbox
from tracecanary.daemon.cluster.membership import BaseMembership, Member, Role
from tracecanary.daemon.cluster.partitioner import probe_partition, trace_key
from tracecanary.daemon.cluster.settings import ClusterSettings
from tracecanary.daemon.run.passive import PassiveJudge
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.store.base import FinishStatement, RunRecord
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.cluster.kafka")

_MEMBERS = """
SELECT member_id, address, started_at, seen_at, seen_at > now() - make_interval(secs => ttl_s), epoch,
       partitions, probes
FROM cluster_sessions WHERE seen_at > now() - interval '1 hour' ORDER BY member_id, started_at
"""
_REPORT = ("UPDATE cluster_sessions SET address = %s, epoch = %s, partitions = %s, probes = %s "
           "WHERE session_id = %s")
_ABORT_LEFT = """
WITH left_running AS (
    UPDATE runs SET status = 'aborted', abort_reason = %(reason)s, finished_ns = COALESCE(finished_ns, %(now)s),
        verdict = NULL
    WHERE status = 'running' AND probe_id = ANY(%(probes)s) RETURNING run_id, probe_id
)
SELECT run_id, probe_id FROM left_running
UNION
SELECT r.run_id, r.probe_id FROM runs r
WHERE r.probe_id = ANY(%(probes)s) AND r.status = 'aborted' AND r.abort_reason = %(reason)s
  AND r.finished_ns > %(since)s
  AND NOT EXISTS (SELECT 1 FROM runs n WHERE n.probe_id = r.probe_id AND n.started_ns > r.started_ns)
"""
"""The runs a previous owner left: still running (recorded aborted here), or already recorded aborted by
that owner itself a moment ago (its own rebalance handler may write first) and not run again since."""

MovesHandler = Callable[[set[str], set[str]], Awaitable[None]]
"""``(probes lost, probes gained)`` at an ownership change (the daemon aborts and re-runs)."""


@dataclass
class KafkaTiming:
    """Durations of kafka mode (tests shorten them)."""

    session_timeout_s: float = 10.0
    lease_interval_s: float | None = None
    """Default: a third of the session timeout."""
    results_poll_s: float = 3.0
    """How often the results publisher looks without being woken (a queued run wakes it at once): retries
    after a failure and the look for dead sessions' rows."""
    results_gather_s: float = 0.5
    """How long the results publisher lets queued runs gather before it sends them as one batch (a run
    reaches ``results_topic`` that much later; each batch costs three round trips however many runs it holds)."""
    passive_flush_s: float = 2.0
    """How often each member writes its passive counts to PostgreSQL (what the owner's run sums)."""
    park_window_s: float = 30.0
    """How long a foreign message carrying a correlation key waits for a late announcement (``kafka_park.py``)."""


@dataclass
class _Parts:
    pool: psycopg_pool.AsyncConnectionPool[Conn]
    leases: LeaseBook
    group: KafkaMembership
    outbox: ResultsOutbox
    broadcast: Broadcast
    forwarder: Forwarder
    handlers: list[MovesHandler] = field(default_factory=list)


class KafkaClusterMembership(BaseMembership):
    """A member of a kafka-mode cluster (the Membership protocol, plus ownership and results)."""

    mode = "kafka"

    def __init__(self, settings: ClusterSettings, store_url: str, *, member_id: str | None = None,
                 timing: KafkaTiming | None = None) -> None:
        assert settings.bootstrap and settings.group, "validated at load"
        self.settings = settings
        self.store_url = store_url
        self.timing = timing or KafkaTiming(session_timeout_s=settings.session_timeout)
        super().__init__(Role.MEMBER, member_id)
        self._buffer: TraceBuffer | None = None
        self._passive: PassiveJudge | None = None
        self.passive_windows = MemberPassiveWindows()
        """What this member's passive runs collect: every member's counts (``kafka_passive.py``)."""
        self._probe_ids: Callable[[], Sequence[str]] = list
        self._correlate_keys: Callable[[], Collection[str]] = frozenset
        self._expects_linked: Callable[[], bool] = lambda: False
        self._attached = anyio.Event()
        self._parts: _Parts | None = None
        self._outboxed: set[str] = set()
        """Final runs whose outbox row the store writes with the run (:meth:`outbox_statement`)."""
        self._on_moves: list[MovesHandler] = []
        self._pending_announcements: list[Awaitable[None]] = []
        self._announce_wake = anyio.Event()
        self._announced: set[str] = set()
        self._hubs: dict[str, RelayedEventHub] = {}
        self._values: dict[str, list[tuple[str, str]]] = {}
        self._spawn_queue: list[tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]] = []

    # ------------------------------------------------------------------ the Membership protocol
    @property
    def epoch(self) -> int | None:
        return self._parts.leases.epoch if self._parts else None

    async def members(self) -> list[Member]:
        if self._parts is None:
            return [Member(self._member_id, Role.MEMBER.value, self.address, self._started_ns, time.time_ns(), True)]
        async with self._parts.pool.connection() as conn:
            cur = await conn.execute(_MEMBERS)
            rows = await cur.fetchall()
        return [Member(str(m), Role.MEMBER.value, addr, int(started.timestamp() * 1e9), int(seen.timestamp() * 1e9),
                       bool(alive), epoch, partitions=list(parts or []), probes=probes)
                for m, addr, started, seen, alive, epoch, parts, probes in rows]

    # ------------------------------------------------------------------ what the daemon wires
    def attach(self, buffer: TraceBuffer, probe_ids: Callable[[], Sequence[str]],
               passive: PassiveJudge | None = None, *,
               correlate_keys: Callable[[], Collection[str]] = frozenset,
               expects_linked: Callable[[], bool] = lambda: False) -> None:
        """The engine's trace buffer, the loaded probes, the passive judge, the probes' ``correlate``
        attribute keys and whether one expects ``linked`` traces (``kafka_park.ProbeCorrelateKeys``)
        (called once built)."""
        self._buffer, self._probe_ids, self._passive = buffer, probe_ids, passive
        self._correlate_keys = correlate_keys
        self._expects_linked = expects_linked
        self._attached.set()

    def relay_hub(self, kind: str) -> RelayedEventHub:
        """The EventHub for side-effect events of ``kind`` (``github``, ``slack``): relayed to every member."""
        hub = self._hubs.get(kind)
        if hub is None:
            hub = self._hubs[kind] = RelayedEventHub(kind, self._relay_event, self._spawn)
        return hub

    async def _relay_event(self, kind: str, event: dict[str, Any]) -> None:
        if self._parts is None:
            raise OSError("kafka member not started yet")
        await self._parts.broadcast.relay_event(kind, event)

    async def _deliver_event(self, kind: str, event: dict[str, Any]) -> None:
        hub = self._hubs.get(kind)
        if hub is not None:
            hub.deliver(event)

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._spawn_queue.append((fn, args))
        self._announce_wake.set()

    def on_moves(self, handler: MovesHandler) -> None:
        """Call ``handler(lost, gained)`` at every ownership change."""
        self._on_moves.append(handler)

    @property
    def ownership(self) -> Ownership:
        return self._parts.group.ownership if self._parts else Ownership(self._member_id)

    def owns(self, probe_id: str) -> bool:
        """Whether this member fires ``probe_id`` now: its partition is ours and so is its lease."""
        parts = self._parts
        return parts is not None and parts.group.ownership.owns_probe(probe_id) and parts.leases.holds(probe_id)

    async def wait_lease_round(self) -> None:
        """Return after this member's next lease round."""
        if self._parts is None:
            await anyio.sleep(0.1)  # not started yet
            return
        await self._parts.leases.wait_round()

    def owned_probes(self) -> int:
        """How many of the loaded probes this member fires now (``tracecanary_owned_probes``)."""
        return sum(1 for p in self._probe_ids() if self.owns(p))

    def mint_trace_id(self) -> str:
        """A run's trace id: lands on an owned partition (its spans reach this member)."""
        assert self._parts is not None
        return self._parts.group.mint_trace_id()

    def _announce(self, send: Awaitable[None]) -> None:
        self._pending_announcements.append(send)
        self._announce_wake.set()

    def _home(self, trace_id: str) -> int | None:
        """The spans partition a trace id lands on (None before the first assignment)."""
        parts = self._parts
        n = parts.group.ownership.num_partitions if parts is not None else 0
        if parts is None or not n:
            return None
        return parts.group.minter.partition_of(trace_key(trace_id), n)

    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        """Run hook: a run that expects traces it did not mint (``linked``) announces its trace id, so
        whoever receives spans linking to it forwards them here. Other runs announce nothing."""
        home = self._home(run.trace_id)
        if self._parts is not None and home is not None and reaches_other_traces(probe):
            self._announced.add(run.trace_id)
            self._announce(self._parts.broadcast.announce_trace(run.trace_id, home))

    def announce_correlation(self, trace_id: str, key: str, value: str) -> None:
        """A run waits for traces carrying ``key=value`` (``correlate``): every member forwards them here."""
        home = self._home(trace_id)
        if self._parts is not None and home is not None:
            self._values.setdefault(trace_id, []).append((key, value))
            self._announce(self._parts.broadcast.announce_value(key, value, home))

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        """Run hook: retract the announcement; a final run goes to the results outbox."""
        parts = self._parts
        if parts is not None:
            parts.group.filter.forget(run.trace_id)
            home = self._home(run.trace_id)
            if run.trace_id in self._announced and home is not None:
                self._announced.discard(run.trace_id)
                self._announce(parts.broadcast.announce_trace(run.trace_id, home, add=False))
            for key, value in self._values.pop(run.trace_id, []):
                if home is not None:
                    self._announce(parts.broadcast.announce_value(key, value, home, add=False))
            if run.run_id in self._outboxed:  # the store wrote the row with the run
                self._outboxed.discard(run.run_id)
                parts.outbox.queued_with_run()
            elif run.final:
                await parts.outbox.enqueue(run)

    def outbox_statement(self, run: RunRecord) -> FinishStatement | None:
        """The results store's finish extra (``store.base.FinishExtra``): a final run's outbox row, written
        in the same statement as the run itself (one round trip a run fewer, never one without the other)."""
        parts = self._parts
        if parts is None or not run.final:
            return None
        if len(self._outboxed) > 10_000:  # runs kept through a store outage are re-written with theirs
            self._outboxed.clear()
        self._outboxed.add(run.run_id)
        return parts.outbox.statement(run)

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take part until cancelled; ready at once (role member), working once :meth:`attach` was called."""
        task_status.started()
        await self._attached.wait()
        s = self.settings
        assert s.bootstrap and s.group
        pool = await open_cluster_db(self.store_url)
        try:
            await self._run(pool, s.bootstrap, s.group)
        finally:
            with anyio.CancelScope(shield=True):
                if self._parts is not None:
                    with anyio.move_on_after(2):  # runs that ended while the publisher gathered
                        await self._parts.outbox.flush()
                    with anyio.move_on_after(5):
                        await self._parts.leases.release_all()
                    await self._parts.outbox.aclose()
                await pool.close(timeout=2.0)

    async def _run(self, pool: psycopg_pool.AsyncConnectionPool[Conn], bootstrap: str, group_name: str) -> None:
        s, t = self.settings, self.timing
        assert self._buffer is not None
        config = MembershipConfig(bootstrap=bootstrap, group=group_name, spans_topic=s.spans_topic,
                                  partitioner=s.partitioner, session_timeout_s=t.session_timeout_s)
        group = KafkaMembership(config, self._buffer, member_id=self._member_id)
        leases = LeaseBook(pool, self._member_id, ttl_s=t.session_timeout_s)
        judge = self._passive
        if judge is not None:  # real traffic on owned partitions reaches the passive judge
            group.filter.tapped = lambda raw: judge.active and judge.wants(raw)
        outbox = ResultsOutbox(pool, leases, bootstrap=bootstrap, results_topic=s.results_topic)
        broadcast = Broadcast(bootstrap, f"{group_name}.broadcast", self._member_id, on_event=self._deliver_event)
        seen_keys = broadcast.announcements.seen_keys
        park = CorrelationPark(lambda: seen_keys.union(self._correlate_keys()), window_s=t.park_window_s,
                               linked=self._expects_linked)
        forwarder = Forwarder(group, ForwardRouter(broadcast.announcements, lambda: group.ownership),
                              topic=f"{group_name}.forward", park=park)
        async with anyio.create_task_group() as tg:
            await tg.start(group.run)
            first = await group.wait_assigned()
            await ensure_topic(bootstrap, forwarder.topic, max(1, first.num_partitions))
            await ensure_topic(bootstrap, broadcast.topic, 1)
            await tg.start(broadcast.run)
            await tg.start(forwarder.run)
            await outbox.start()
            self._parts = _Parts(pool, leases, group, outbox, broadcast, forwarder)
            tg.start_soon(self._announcer)
            tg.start_soon(lambda: outbox.run(poll_s=t.results_poll_s, gather_s=t.results_gather_s))
            tg.start_soon(self._follow_ownership, group, leases)
            tg.start_soon(self._watch_lapses, group, leases, t.session_timeout_s / 6)
            if judge is not None:
                book = PassiveCountBook(pool, judge, self._member_id, leases.session_id)
                self.passive_windows.book = book
                tg.start_soon(lambda: book.run(flush_s=t.passive_flush_s))
            wanted = lambda: group.ownership.probes(self._probe_ids())  # noqa: E731
            await keep_leases(leases, wanted, group.broker_alive, interval_s=t.lease_interval_s,
                              changed=group.change_event, on_round=self._report)

    async def _announcer(self) -> None:
        while True:
            await self._announce_wake.wait()
            self._announce_wake = anyio.Event()
            pending, self._pending_announcements = self._pending_announcements, []
            spawned, self._spawn_queue = self._spawn_queue, []
            for fn, args in spawned:
                await fn(*args)  # event relays handle their own failures
            for send in pending:
                try:
                    await send
                except (KafkaError, TimeoutError, OSError) as e:
                    # a lost announcement costs a forwarded trace, not the member
                    log.warning("announcement failed error=%r", str(e))

    async def _follow_ownership(self, group: KafkaMembership, leases: LeaseBook) -> None:
        previous = Ownership(self._member_id)
        async for own in group.changes():
            await leases.new_epoch()
            probes = list(self._probe_ids())
            lost = {p for p in probes if previous.owns_probe(p) and not own.owns_probe(p)}
            gained = {p for p in probes if own.owns_probe(p) and not previous.owns_probe(p)}
            previous = own
            if lost or gained:
                log.info("ownership moved member=%s epoch=%d lost=%d gained=%d", self._member_id,
                         leases.epoch, len(lost), len(gained))
                for handler in self._on_moves:
                    await handler(lost, gained)

    async def _watch_lapses(self, group: KafkaMembership, leases: LeaseBook, tick_s: float) -> None:
        """A lease that lapses while the group still gives this member the probe (the broker went silent:
        fencing) ends its runs of that probe as a move does — recorded ``aborted`` (reason ``rebalance``),
        not failed for want of spans it can no longer read; the new owner runs the probe again."""
        held: set[str] = set()
        while True:
            await anyio.sleep(tick_s)
            now = leases.held()
            lapsed = {p for p in held - now if group.ownership.owns_probe(p)}
            held = now
            if lapsed:
                log.warning("leases lapsed member=%s probes=%d: their runs are aborted", self._member_id, len(lapsed))
                for handler in self._on_moves:
                    await handler(lapsed, set())

    async def abort_left_runs(self, probe_ids: set[str], reason: str = "rebalance") -> dict[str, list[str]]:
        """Record the runs another member left running for these probes ``aborted``: run ids by probe (with
        the ones it recorded aborted itself just before; see ``_ABORT_LEFT``)."""
        if self._parts is None or not probe_ids:
            return {}
        async with self._parts.pool.connection() as conn:
            now_ns = time.time_ns()
            cur = await conn.execute(_ABORT_LEFT, {"reason": reason, "now": now_ns, "probes": sorted(probe_ids),
                                                   "since": now_ns - int(self.timing.session_timeout_s * 3e9)})
            out: dict[str, list[str]] = {}
            for run_id, probe_id in await cur.fetchall():
                out.setdefault(str(probe_id), []).append(str(run_id))
            return out

    async def publish_aborted(self, runs: list[RunRecord]) -> None:
        """Queue runs this member recorded aborted for a previous owner (its lease fences the write)."""
        if self._parts is not None:
            for run in runs:
                await self._parts.outbox.enqueue(run)

    async def _report(self, held: set[str]) -> None:
        parts = self._parts
        if parts is None:
            return
        own = parts.group.ownership
        async with parts.pool.connection() as conn:
            await conn.execute(_REPORT, (self.address, parts.leases.epoch, sorted(own.partitions), len(held),
                                         parts.leases.session_id))

    @property
    def results_idempotent(self) -> bool | None:
        """Whether the results producer is idempotent: False when the broker refused InitProducerId
        (tansu does) and it fell back to a plain producer; None before it started."""
        return self._parts.outbox.idempotent if self._parts else None

    def park_counts(self) -> dict[str, int]:
        """The correlation park's counters (``tracecanary_cluster_correlate_parked_total``)."""
        park = self._parts.forwarder.park if self._parts else None
        return asdict(park.stats) if park is not None else {}

    def partition_of_probe(self, probe_id: str) -> int | None:
        own = self.ownership
        return probe_partition(probe_id, own.num_partitions) if own.num_partitions else None

    def stats(self) -> dict[str, Any]:
        """Counters of the parts (for logs and the benchmark)."""
        p = self._parts
        if p is None:
            return {}
        return {"filter": p.group.filter.stats, "leases": p.leases.stats, "outbox": p.outbox.stats,
                "forward": p.forwarder.stats, "broadcast": p.broadcast.stats, "minter": p.group.minter.stats,
                "passive": self.passive_windows.book.stats if self.passive_windows.book else None,
                "park": self.park_counts()}
