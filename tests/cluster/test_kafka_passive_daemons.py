"""Two `tracecanary run` daemons in ``cluster.mode: kafka`` judge real traffic for one passive probe.

Real traffic (traces nobody minted) is published to the spans topic as the Collector's kafka exporter
does (key = hex trace id, murmur2 = aiokafka's default partitioner), spread over partitions both
members own: each member judges the traces of its own partitions, and the runs of the probe's owner
add up to every trace published, each counted once (3 of them broken)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.cluster.kafka_helpers import ExporterLikeProducer, create_topic, unique
from tests.daemon.support import DaemonProcess, eventually
from tracecanary.assertions.spans import Span, SpanKind

pytestmark = pytest.mark.anyio
PARTITIONS, TRACES, BROKEN = 4, 40, 3


def config_text(bootstrap: str, group: str, spans: str, store: str) -> str:
    return f"""
daemon:
  shutdown_grace: 2s
  store: "{store}"
  cluster: {{mode: kafka, bootstrap: "{bootstrap}", group: {group}, spans_topic: {spans},
             partitioner: murmur2, results_topic: {unique("results")}, session_timeout: 6s}}
probes:
  - id: webhook
    kind: passive
    every: 1s
    timeout: 2s
    entry: {{span: "POST /webhook", service: ingest}}
    fail_if: "failure_ratio > 50%"
    min_traces: 1
    expect: {{trace: {{tree: [{{span: "POST /webhook", service: ingest, children: [{{span: charge}}]}}]}}}}
"""


def real_trace(broken: bool) -> list[Span]:
    tid, entry, now = os.urandom(16).hex(), os.urandom(8).hex(), time.time_ns()
    spans = [Span(tid, entry, None, "POST /webhook", SpanKind.SERVER, now, now + 50_000, "ingest")]
    if not broken:
        spans.append(Span(tid, os.urandom(8).hex(), entry, "charge", SpanKind.CLIENT, now + 10, now + 40_000,
                          "billing"))
    return spans


async def owners(d: DaemonProcess) -> dict[str, list[int]]:
    """Alive members → their partitions (empty while not up yet)."""
    try:
        status, body = await d.get("/api/cluster")
    except aiohttp.ClientError:
        return {}
    return {m["member"]: m["partitions"] or [] for m in body.get("members", []) if m["alive"]} \
        if status == 200 else {}


def judged_by_runs(url: str) -> tuple[int, int, int]:
    """(runs, judged, failed) summed over the probe's finished runs."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT outputs FROM runs WHERE probe_id = 'webhook' AND status = 'finished'").fetchall()
    windows = [json.loads(r[0]).get("passive", {}) for r in rows]
    return len(rows), sum(w.get("judged", 0) for w in windows), sum(w.get("failed", 0) for w in windows)


async def test_members_judge_their_partitions_and_the_owner_sums(
        tmp_path: Path, postgres_url: str, kafka_broker) -> None:  # type: ignore[no-untyped-def]
    spans = unique("otlp_spans")
    await create_topic(kafka_broker.bootstrap, spans, PARTITIONS)
    config = tmp_path / "suite.yaml"
    config.write_text(config_text(kafka_broker.bootstrap, unique("g"), spans, postgres_url))
    members = [DaemonProcess(config, postgres_url, name=w, env={"WHO": w}) for w in "ab"]
    try:
        for m in members:
            m.start()
        for m in members:
            await m.ready(timeout_s=90)

        async def split() -> bool:
            view = await owners(members[0])
            return len(view) == 2 and sorted(p for ps in view.values() for p in ps) == list(range(PARTITIONS))

        await eventually(split, 90, "two members sharing the spans partitions")
        by_partition = {p: m for m, ps in (await owners(members[0])).items() for p in ps}
        landed: set[str] = set()
        async with ExporterLikeProducer(kafka_broker.bootstrap, "murmur2") as producer:
            for i in range(TRACES):
                landed.add(by_partition[await producer.send_trace(spans, real_trace(broken=i < BROKEN))])
        assert len(landed) == 2  # the traffic reached both members
        try:
            await eventually(lambda: judged_by_runs(postgres_url)[1] >= TRACES, 60, "every trace summed by a run")
        except TimeoutError:
            print(judged_by_runs(postgres_url), *(m.log_text()[-3000:] for m in members), sep="\n")
            raise
        time_after = time.time() + 3
        await eventually(lambda: time.time() > time_after, 10, "a few more runs (no trace counted twice)")
        runs, judged, failed = judged_by_runs(postgres_url)
    finally:
        for m in members:
            m.stop()
    assert (judged, failed) == (TRACES, BROKEN) and runs >= 2
