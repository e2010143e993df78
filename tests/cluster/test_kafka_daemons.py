"""Three `tracecanary run` daemons in ``cluster.mode: kafka`` on one tansu broker and one PostgreSQL database.

A target counts requests by probe and by member (``?who=`` from each process's environment: the config
text is the same) and, for the traced probe, publishes the server span of each request to the spans
topic as the Collector's kafka exporter would (key = hex trace id, murmur2 = aiokafka's own default
partitioner): the span must reach the member that owns the run. 30 probes every second: each fires in
every slot exactly once across the group; kill -9 one member → its probes fire again on the others
within 25 s, no run is left ``running``, the failing probe's incident is announced once (the Slack
emulator's messages), and ``results_topic`` holds every final run once."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import psycopg
import pytest
from aiohttp import web

from tests.cluster.kafka_helpers import ExporterLikeProducer, create_topic, span, topic_records, unique
from tests.cluster.targets import RecordingTarget
from tests.daemon.support import DaemonProcess, eventually
from tests.probes.helpers import serve
from tracecanary.assertions.spans import Span
from tracecanary.demo.emulators.slack import SlackEmulator

pytestmark = pytest.mark.anyio
PROBES = [f"p{i:02d}" for i in range(30)]
SPANS_PARTITIONS, RESULT_PARTITIONS = 6, 3


@dataclass
class Target(RecordingTarget):
    """``/pNN`` 200, ``/broken`` 500, ``/traced`` 200 and its span published to Kafka; hits recorded."""

    producer: ExporterLikeProducer
    spans_topic: str
    background: anyio.abc.TaskGroup

    async def answer(self, path: str, request: web.Request) -> web.Response:
        if path in ("traced", "linked"):
            _, trace_id, parent, _ = request.headers["traceparent"].split("-")
            server = span(trace_id, f"GET /{path}", service="shop", parent_span_id=parent)
            await self.producer.send_trace(self.spans_topic, [server])
            if path == "linked":  # a queue consumer's own trace, linking back: lands on any member's partition
                consumer = span(os.urandom(16).hex(), "orders process", service="worker",
                                links=[(trace_id, server.span_id)])
                self.background.start_soon(self._later, [consumer])
        if path == "job":  # a scheduled job's own trace, found by its job.id (announced once the run judges)
            job = span(os.urandom(16).hex(), "job run", service="worker", attributes={"job.id": request.query["id"]})
            self.background.start_soon(self._later, [job])
        return web.json_response({}, status=500 if path == "broken" else 200)

    async def _later(self, spans: list[Span]) -> None:
        await anyio.sleep(0.5)  # the other process picks the message up a moment later
        await self.producer.send_trace(self.spans_topic, spans)


def suite(target: str, slack: str, bootstrap: str, group: str, spans: str, results: str, store: str) -> str:
    plain = "".join(f"""
  - {{id: {pid}, kind: http, every: 1s, timeout: 5s, request: {{url: "{target}/{pid}?who=${{WHO}}"}},
      alert: {{policy: quiet}}}}""" for pid in PROBES)
    return f"""
daemon:
  shutdown_grace: 2s
  store: "{store}"
  store_health: {{check_interval: 1s}}
  cluster: {{mode: kafka, bootstrap: "{bootstrap}", group: {group}, spans_topic: {spans},
             partitioner: murmur2, results_topic: {results}, session_timeout: 6s}}
alerts:
  channels:
    oncall: {{type: slack, channel: C0OPS, token: xoxb-bot, base_url: "{slack}"}}
  policies:
    pager: {{channels: [oncall], failure_threshold: 1}}
    quiet: {{channels: []}}
  retry_delays: [100ms, 500ms]
probes:{plain}
  - {{id: broken, kind: http, every: 1s, timeout: 5s, request: {{url: "{target}/broken?who=${{WHO}}"}},
      alert: {{policy: pager}}}}
  - id: traced
    kind: http
    every: 1s
    timeout: 8s
    request: {{url: "{target}/traced?who=${{WHO}}"}}
    expect: {{trace: {{tree: [{{span: "GET /traced", service: shop}}]}}}}
    alert: {{policy: quiet}}
  - id: linked
    kind: http
    every: 1s
    timeout: 8s
    request: {{url: "{target}/linked?who=${{WHO}}"}}
    expect: {{trace: {{tree: [{{span: "GET /linked", linked: [{{span: "orders process", service: worker}}]}}]}}}}
    alert: {{policy: quiet}}
  - id: job
    kind: http
    every: 1s
    timeout: 8s
    request: {{url: "{target}/job?who=${{WHO}}&id={{{{ run_id }}}}"}}
    expect: {{trace: {{correlate: {{attribute: job.id, equals: "{{{{ run_id }}}}"}}, tree: [{{span: "job run"}}]}}}}
    alert: {{policy: quiet}}
"""


def slot_counts(times: list[float]) -> Counter[int]:
    return Counter(math.floor(t + 0.25) for t in times)  # every 1s; a slot's run lands just after it


async def cluster_view(d: DaemonProcess) -> dict[str, object]:
    status, body = await d.get("/api/cluster")
    assert status == 200, body
    return dict(body)


async def settled(d: DaemonProcess, n: int) -> bool:
    try:
        members = [m for m in (await cluster_view(d))["members"] if m["alive"]]  # type: ignore[attr-defined]
    except (aiohttp.ClientError, AssertionError):  # not up yet
        return False
    parts = [p for m in members for p in (m["partitions"] or [])]
    return (len(members) == n and sorted(parts) == list(range(SPANS_PARTITIONS))
            and sum(m["probes"] or 0 for m in members) == len(PROBES) + 4)


async def topic_run_ids(bootstrap: str, topic: str) -> list[str]:
    return [json.loads(r.value)["run_id"] for r in await topic_records(bootstrap, topic, RESULT_PARTITIONS)]


@pytest.fixture
async def world(kafka_broker) -> AsyncIterator[tuple[Target, str, str, str]]:  # type: ignore[no-untyped-def]
    spans, results = unique("otlp_spans"), unique("results")
    await create_topic(kafka_broker.bootstrap, spans, SPANS_PARTITIONS)
    await create_topic(kafka_broker.bootstrap, results, RESULT_PARTITIONS)
    async with ExporterLikeProducer(kafka_broker.bootstrap, "murmur2") as producer, \
            anyio.create_task_group() as background:
        t = Target(producer, spans, background)
        async with serve(t.app()) as base:
            yield t, base, spans, results
        background.cancel_scope.cancel()


async def test_three_members_share_probes_and_survive_kill9(
        tmp_path: Path, postgres_url: str, kafka_broker, world: tuple[Target, str, str, str]) -> None:  # type: ignore[no-untyped-def]
    t, base, spans, results = world
    async with SlackEmulator(channels=["C0OPS"], retry_after_s=0) as slack:
        config = tmp_path / "suite.yaml"
        config.write_text(suite(base, slack.base_url, kafka_broker.bootstrap, unique("g"), spans, results,
                                 postgres_url))
        members = [DaemonProcess(config, postgres_url, name=w, env={"WHO": w}) for w in "abc"]
        try:
            for m in members:
                m.start()
            for m in members:
                await m.ready(timeout_s=90)
            a, _, c = members
            await eventually(lambda: settled(a, 3), 90, "three members owning 6 partitions and 34 probes")
            steady_from = time.time() + 2.0
            await eventually(lambda: time.time() > steady_from + 6, 30, "six steady slots")
            steady_to = time.time() - 1.0
            owners_before = {p: {w for _, w, _ in [h for h in t.hits if h[0] == p and steady_from <= h[2] <= steady_to]}
                             for p in PROBES}
            c_probes = [p for p, ws in owners_before.items() if ws == {"c"}]
            status, refused = await a.post(f"/api/probes/{c_probes[0]}/run", {})  # a does not own it
            assert status == 503 and "fired by another member" in str(refused), refused
            status, traced = await a.get("/api/probes/traced/runs?limit=20")
            assert status == 200
            assert any(r["verdict"] == "pass" for r in traced["runs"]), traced  # spans reached the owner
            for probe in ("linked", "job"):  # traces the run did not mint, forwarded to its owner
                status, runs = await a.get(f"/api/probes/{probe}/runs?limit=20")
                verdicts = Counter(r["verdict"] for r in runs["runs"] if r["status"] == "finished")
                print(f"{probe}: {dict(verdicts)}")
                assert verdicts["pass"] >= 3 and verdicts["fail"] == 0, runs
            await slack.wait_until(lambda: len(slack.messages("C0OPS")) >= 1, timeout_s=60)

            killed_at = time.time()
            await c.kill9()
            await eventually(lambda: settled(a, 2), 60, "two members owning everything")
            await eventually(lambda: all(t.of(p, after=killed_at + 0.5) and
                                         any(w != "c" for _, w, tt in t.hits if _ == p and tt > killed_at)
                                         for p in c_probes), 60, "c's probes firing on a and b")
            refire_s = max(min(tt for pp, w, tt in t.hits if pp == p and w != "c" and tt > killed_at) - killed_at
                           for p in c_probes)
            await anyio.sleep(3)  # a few more slots (observation window, not a sync point)
            # c's outbox rows are adopted by the new owners of its probes; a's and b's are published
            try:
                await eventually(lambda: _drained(postgres_url), 60, "the outbox to drain")
            except TimeoutError:
                print(await _outbox_report(postgres_url), *(m.log_text()[-3000:] for m in members), sep="\n")
                raise
            published_by = time.time() - 2.0
        finally:
            for m in members:
                m.stop()
        messages = slack.messages("C0OPS")
    # each probe fired in every steady slot exactly once across the group
    for p in PROBES:
        counts = slot_counts(t.of(p, after=steady_from))
        steady = {s: n for s, n in counts.items() if s <= math.floor(steady_to)}
        assert steady and max(steady.values()) == 1, (p, steady)
        assert all(len(ws) == 1 for ws in owners_before.values()), owners_before
    print(f"\nkafka mode: c's {len(c_probes)} probes fired again on a/b at most {refire_s:.1f}s after kill -9")
    assert c_probes and refire_s <= 25
    assert len([m for m in messages if m["text"].startswith("broken is failing")]) == 1, messages
    with psycopg.connect(postgres_url) as conn:
        running = conn.execute("SELECT count(*) FROM runs WHERE status = 'running' AND started_ns < %s",
                               (int((killed_at - 10) * 1e9),)).fetchone()
        final = {r[0] for r in conn.execute("SELECT run_id FROM runs WHERE final = 1 AND status <> 'running' "
                                            "AND finished_ns < %s", (int(published_by * 1e9),))}
    assert running == (0,)  # what c left running was recorded aborted by the new owners
    on_topic = Counter(await topic_run_ids(kafka_broker.bootstrap, results))
    print(f"results_topic: {len(on_topic)} runs; {len(final)} final runs stored before the outbox drained")
    assert max(on_topic.values()) == 1  # each run id at most once
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cur = await conn.execute("SELECT run_id, probe_id, status, abort_reason, attempt FROM runs "
                                 "WHERE run_id = ANY(%s)", (sorted(final - set(on_topic)),))
        unpublished = await cur.fetchall()
    assert not unpublished  # every final run published


async def _drained(url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM results_outbox WHERE acked_at IS NULL")
        row = await cur.fetchone()
    return row == (0,)


async def _outbox_report(url: str) -> str:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT o.run_id, o.probe_id, o.session_id, now() - o.created_at, now() - s.seen_at, l.session_id, "
            "l.expires_at - now() FROM results_outbox o LEFT JOIN cluster_sessions s USING (session_id) "
            "LEFT JOIN cluster_leases l ON l.probe_id = o.probe_id WHERE o.acked_at IS NULL")
        return "\n".join(map(str, await cur.fetchall()))
