"""Kafka mode under faults, with real `tracecanary run` daemons, tansu and PostgreSQL.

- Broker cut: member c reaches the broker only through a proxy (``kafka_proxy.py``) that is cut. It
  stops firing within the session timeout (its leases are renewed only while the broker answers), a and
  b take its probes over once those leases lapse, no probe fires on two members in one slot, and
  ``results_topic`` holds every final run once (c's unsent rows are adopted by the new owners).
- Rebalance: a 4th member joins a group of three. Only runs of probes whose partition moved are
  recorded ``aborted`` (reason ``rebalance``) and their new owner runs them again at once; no slot is
  missed, no healthy probe fails, the failing probe's incident is announced once.

Durations are short (session timeout 3 s: heartbeats and lease rounds every second) and every wait is
bounded on a real condition; the windows of a few slots after each event are observation windows.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import psycopg
import pytest
from aiohttp import web

from tests.cluster.kafka_helpers import ExporterLikeProducer, create_topic, span, topic_records, unique
from tests.cluster.kafka_proxy import kafka_proxy
from tests.cluster.targets import RecordingTarget
from tests.daemon.support import DaemonProcess, eventually
from tests.probes.helpers import serve
from tracecanary.demo.emulators.slack import SlackEmulator

pytestmark = pytest.mark.anyio
FAST = [f"f{i}" for i in range(8)]
SLOW = [f"s{i}" for i in range(4)]
HEALTHY = [*FAST, *SLOW, "traced"]
ALL = [*HEALTHY, "broken"]
EVERY_S = {**dict.fromkeys([*FAST, "traced", "broken"], 1), **dict.fromkeys(SLOW, 5)}
SLOW_S = 3.5
"""A slow probe's request takes this long (every 5 s): its run is in flight most of the time."""
SESSION_TIMEOUT_S = 3
SPANS_PARTITIONS, RESULT_PARTITIONS = 6, 3


@dataclass
class Target(RecordingTarget):
    """``/fN`` 200, ``/sN`` 200 after SLOW_S, ``/broken`` 500, ``/traced`` 200 with its span on the spans topic."""

    producer: ExporterLikeProducer
    spans_topic: str

    async def answer(self, path: str, request: web.Request) -> web.Response:
        if path == "traced":
            _, trace_id, parent, _ = request.headers["traceparent"].split("-")
            await self.producer.send_trace(self.spans_topic, [span(trace_id, "GET /traced", service="shop",
                                                                   parent_span_id=parent)])
        if path in SLOW:
            await anyio.sleep(SLOW_S)
        return web.json_response({}, status=500 if path == "broken" else 200)

    def owners(self, after: float, before: float) -> dict[str, set[str]]:
        return {p: {w for pp, w, t in self.hits if pp == p and after <= t <= before} for p in ALL}


def suite(target: str, slack: str, group: str, spans: str, results: str, store: str) -> str:
    def probe(pid: str, policy: str = "quiet", extra: str = "") -> str:
        return (f"\n  - {{id: {pid}, kind: http, every: {EVERY_S[pid]}s, timeout: 8s, "
                f"request: {{url: \"{target}/{pid}?who=${{WHO}}\"}}, alert: {{policy: {policy}}}{extra}}}")
    traced = ", expect: {trace: {tree: [{span: \"GET /traced\", service: shop}]}}"
    return f"""
daemon:
  shutdown_grace: 2s
  store: "{store}"
  store_health: {{check_interval: 1s}}
  cluster: {{mode: kafka, bootstrap: "${{BOOTSTRAP}}", group: {group}, spans_topic: {spans},
             partitioner: murmur2, results_topic: {results}, session_timeout: {SESSION_TIMEOUT_S}s}}
alerts:
  channels:
    oncall: {{type: slack, channel: C0OPS, token: xoxb-bot, base_url: "{slack}"}}
  policies:
    pager: {{channels: [oncall], failure_threshold: 1}}
    quiet: {{channels: []}}
probes:{"".join(probe(p) for p in [*FAST, *SLOW])}{probe("traced", extra=traced)}{probe("broken", "pager")}
"""


def slot(probe: str, t: float) -> int:
    return math.floor((t + 0.25) / EVERY_S[probe])  # a slot's request lands just after it


@dataclass
class Cluster:
    target: Target
    slack: SlackEmulator
    config: Path
    store: str
    bootstrap: str
    results: str
    members: dict[str, DaemonProcess] = field(default_factory=dict)

    def start(self, who: str, bootstrap: str | None = None) -> DaemonProcess:
        m = DaemonProcess(self.config, self.store, name=who, env={"WHO": who, "BOOTSTRAP": bootstrap or self.bootstrap})
        self.members[who] = m
        m.start()
        return m

    async def settled(self, n: int, via: str = "a") -> bool:
        try:
            status, body = await self.members[via].get("/api/cluster")
        except aiohttp.ClientError:
            return False
        alive = [m for m in body["members"] if m["alive"]] if status == 200 else []
        parts = sorted(p for m in alive for p in (m["partitions"] or []))
        return len(alive) == n and parts == list(range(SPANS_PARTITIONS)) and sum(m["probes"] or 0 for m in alive) == len(ALL)

    async def slots_pass(self, n: int) -> None:
        """An observation window of ``n`` one-second slots (bounded on the target's own hits)."""
        seen = len(self.target.of("f0"))
        await eventually(lambda: len(self.target.of("f0")) >= seen + n, n * 5 + 10, f"{n} more slots")

    async def steady(self, n: int, slots: int) -> tuple[float, dict[str, set[str]]]:
        """Once ``n`` members own everything, a window of ``slots`` slots in which every probe fired on one
        member only (a late join may still move partitions once: then the next window); its start and owners."""
        await eventually(lambda: self.settled(n), 90, f"{n} members owning 6 partitions and every probe")
        for _ in range(5):
            await self.slots_pass(2)
            start = time.time()
            await self.slots_pass(slots)
            owners = self.target.owners(start, time.time())
            if all(len(ws) == 1 for ws in owners.values()):
                return start, owners
        raise AssertionError(f"no steady window: {owners}")

    def stop(self) -> None:
        for m in self.members.values():
            m.stop()


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str, kafka_broker) -> AsyncIterator[Cluster]:  # type: ignore[no-untyped-def]
    spans, results = unique("otlp_spans"), unique("results")
    await create_topic(kafka_broker.bootstrap, spans, SPANS_PARTITIONS)
    await create_topic(kafka_broker.bootstrap, results, RESULT_PARTITIONS)
    async with ExporterLikeProducer(kafka_broker.bootstrap, "murmur2") as producer, \
            SlackEmulator(channels=["C0OPS"], retry_after_s=0) as slack:
        target = Target(producer, spans)
        async with serve(target.app()) as base:
            config = tmp_path / "suite.yaml"
            config.write_text(suite(base, slack.base_url, unique("g"), spans, results, postgres_url))
            c = Cluster(target, slack, config, postgres_url, kafka_broker.bootstrap, results)
            try:
                yield c
            finally:
                c.stop()


Row = tuple[Any, ...]
"""run_id, probe_id, status, abort_reason, verdict, started_ns, finished_ns"""


async def runs(url: str, where: str = "TRUE") -> list[Row]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(f"SELECT run_id, probe_id, status, abort_reason, verdict, started_ns, finished_ns "
                                 f"FROM runs WHERE {where} ORDER BY started_ns")
        return list(await cur.fetchall())


async def outbox_drained(url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM results_outbox WHERE acked_at IS NULL")).fetchone()
    return row == (0,)


ENQUEUE_MARGIN_S = 3.0
"""A run is recorded finished, then its run-finished hook writes its outbox row: a drained outbox at time T
covers the runs that finished a moment before T (the hook takes milliseconds; this leaves seconds)."""


async def every_final_run_once(c: Cluster, drained_at: float) -> int:
    """``results_topic`` holds each run id at most once, and every final run that ended before the outbox
    was seen drained at ``drained_at`` (less :data:`ENQUEUE_MARGIN_S`)."""
    on_topic = Counter(json.loads(r.value)["run_id"] for r in await topic_records(c.bootstrap, c.results, RESULT_PARTITIONS))
    assert on_topic and max(on_topic.values()) == 1, on_topic.most_common(3)
    before_ns = int((drained_at - ENQUEUE_MARGIN_S) * 1e9)
    final = {r[0] for r in await runs(c.store, f"final = 1 AND status <> 'running' AND finished_ns < {before_ns}")}
    assert not final - set(on_topic), sorted(final - set(on_topic))[:5]
    return len(on_topic)


def two_in_a_slot(t: Target, after: float, before: float, allowed: Callable[[str, int], bool]) -> list[tuple[str, int]]:
    """(probe, slot) fired by more than one member, except where ``allowed`` (an aborted run's slot: its
    new owner ran it again after the abort)."""
    members: dict[tuple[str, int], set[str]] = {}
    for p, who, x in t.hits:
        if p in ALL and after <= x <= before:
            members.setdefault((p, slot(p, x)), set()).add(who)
    return [key for key, ws in members.items() if len(ws) > 1 and not allowed(*key)]


def rerun_slots(aborted: list[Row]) -> set[tuple[str, int]]:
    return {(r[1], slot(r[1], r[5] / 1e9)) for r in aborted}


def missed_slots(t: Target, after: float, before: float) -> list[tuple[str, int]]:
    out = []
    for p in ALL:
        fired = {slot(p, x) for x in t.of(p, after=after, before=before)}
        first, last = slot(p, after) + 1, slot(p, before) - 1
        out += [(p, s) for s in range(first, last + 1) if s not in fired]
    return out


async def test_a_member_cut_from_the_broker_stops_and_the_others_take_over(cluster: Cluster) -> None:
    """Each member reaches the broker through its own proxy; the owner of ``traced`` is cut. Its traced runs
    fired between the cut and the lapse of its leases cannot see their spans: they end ``aborted``
    (reason ``rebalance``) at the lapse, never failed."""
    c = cluster
    async with kafka_proxy(c.bootstrap) as pa, kafka_proxy(c.bootstrap) as pb, kafka_proxy(c.bootstrap) as pc:
        proxies = {"a": pa, "b": pb, "c": pc}
        for who, proxy in proxies.items():
            c.start(who, proxy.bootstrap)
        for m in c.members.values():
            await m.ready(timeout_s=90)
        steady_from, owners = await c.steady(3, 5)
        [victim] = owners["traced"]
        cut_probes = sorted(p for p, ws in owners.items() if ws == {victim})
        witness_name = next(w for w in proxies if w != victim)
        witness = c.members[witness_name]

        proxies[victim].cut()
        cut_at = time.time()
        await eventually(lambda: all(c.target.owners(cut_at, math.inf)[p] - {victim} for p in cut_probes),
                         60, f"{victim}'s probes to fire on the others")
        await eventually(lambda: c.settled(2, via=witness_name), 60, "two members owning everything")
        await c.slots_pass(5)
        await eventually(lambda: outbox_drained(c.store), 60, f"every outbox row published ({victim}'s adopted)")
        drained_at = time.time()
        victim_log = c.members[victim].log_text()
        status, view = await witness.get("/api/cluster")
        metrics = await _metrics(witness)
        stopped_at = time.time()
        c.stop()  # while still cut: nothing the victim sent into its cut connection arrives later

    stopped_s = max(c.target.of(p, who=victim, after=cut_at - 5)[-1] for p in cut_probes) - cut_at
    takeover_s = max(min(x for pp, w, x in c.target.hits if pp == p and w != victim and x > cut_at)
                     for p in cut_probes) - cut_at
    aborted = await runs(c.store, "status = 'aborted'")
    print(f"\nbroker cut: {victim}'s last fire {stopped_s:.2f}s after the cut (session timeout {SESSION_TIMEOUT_S}s), "
          f"its {len(cut_probes)} probes fired on the others {takeover_s:.2f}s after it; aborted "
          f"{Counter((r[1], r[3]) for r in aborted)}")
    assert stopped_s <= SESSION_TIMEOUT_S + 1.0  # a run fired just before the lease lapsed lands a moment later
    assert "leases not renewed: broker unreachable" in victim_log and "leases lapsed" in victim_log
    reran = rerun_slots(aborted)  # an aborted run's slot also holds the new owner's run of it
    assert not two_in_a_slot(c.target, steady_from, time.time(), lambda p, s: (p, s) in reran)
    assert await runs(c.store, f"status = 'running' AND started_ns < {int((stopped_at - 9) * 1e9)}") == []
    assert all(r[3] == "rebalance" and r[1] in cut_probes for r in aborted), aborted
    assert not [r for r in await runs(c.store, "status = 'finished'") if r[1] in HEALTHY and r[4] != "pass"]
    assert len([m for m in c.slack.messages("C0OPS") if m["text"].startswith("broken is failing")]) == 1
    print(f"results_topic: {await every_final_run_once(c, drained_at)} runs, each once")
    # tansu refuses InitProducerId: the fallback is visible and logged once per member
    assert status == 200 and view["results_idempotent"] is False, view
    assert "tracecanary_cluster_results_idempotent 0.0" in metrics
    assert 'tracecanary_cluster_correlate_parked_total{outcome="overflowed"} 0.0' in metrics
    assert witness.log_text().count("the broker refuses idempotent producers") == 1


async def _metrics(d: DaemonProcess) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{d.base}/metrics") as r:
        return await r.text()


async def test_a_fourth_member_joins_and_only_moved_runs_are_aborted_and_rerun(cluster: Cluster) -> None:
    c = cluster
    for who in "abc":
        c.start(who)
    for m in c.members.values():
        await m.ready(timeout_s=90)
    steady_from, before = await c.steady(3, 6)
    await c.start("d").ready(timeout_s=90)
    await eventually(lambda: c.settled(4), 90, "four members owning 6 partitions and every probe")
    await c.slots_pass(2)
    after_from = time.time()
    await c.slots_pass(11)  # two slots of the slow probes
    end = time.time()
    after = c.target.owners(after_from, end)
    c.stop()
    logs = "".join(m.log_text() for m in c.members.values())

    moved = {p for p in ALL if before[p] != after[p]}
    assert all(len(ws) == 1 for ws in after.values()) and "d" in set().union(*after.values()), after
    aborted = await runs(c.store, "status = 'aborted'")
    print(f"\nrebalance: {len(moved)} of {len(ALL)} probes moved; {len(aborted)} runs aborted: "
          f"{Counter((r[1], r[3]) for r in aborted)}")
    assert all(r[3] == "rebalance" and r[1] in moved for r in aborted), aborted
    reruns = []
    for run_id, probe, *_, started_ns, finished_ns in aborted:  # the new owner runs it again at once
        later = [r[5] for r in await runs(c.store, f"probe_id = '{probe}' AND started_ns > {started_ns}")]
        assert later, (run_id, probe)
        reruns.append(((later[0] - finished_ns) / 1e9, (later[0] - started_ns) / 1e9))
    print("re-runs started " * bool(reruns) + ", ".join(f"{a:.1f}s after the abort ({s:.1f}s after the aborted run's start)"
                                         for a, s in reruns))
    assert all(s < EVERY_S["s0"] for _, s in reruns)  # before the slow probe's next slot
    reran = rerun_slots(aborted)
    assert not two_in_a_slot(c.target, steady_from, end, lambda p, s: (p, s) in reran)
    # The eager rebalance pauses every member's consumption between revoke and assign: a trace probe's run
    # in flight then waits for its spans, and a 1 s probe skips the slots meanwhile by its overlap policy
    # (logged and counted); any other missing slot would be a missed one.
    missed = Counter(p for p, _ in missed_slots(c.target, steady_from, end))
    skipped = Counter(re.findall(r"probe overlap skipped probe=(\S+)", logs))
    print(f"slots missed {dict(missed)}, skipped by the overlap policy {dict(skipped)}")
    assert all(n <= skipped[p] for p, n in missed.items()), (missed, skipped)
    finished = await runs(c.store, "status = 'finished'")
    assert not [r for r in finished if r[1] in HEALTHY and r[4] != "pass"]  # no false failure
    assert len([m for m in c.slack.messages("C0OPS") if m["text"].startswith("broken is failing")]) == 1
    assert "Traceback" not in logs
