"""Passive judging throughput: entry traces judged per second on one core with a 10-node expectation
(goal ≥ 5,000/s), and the spans the passive judge holds (bounded by the buffer's ``max_spans``).

    python benchmarks/passive.py [--quick]

Traffic: traces of 10 spans (an entry ``POST /webhook`` of service ``ingest`` and 9 spans below it, in
3 services), exported as an OpenTelemetry SDK does (children first, the entry span last) in OTLP
protobuf batches of 512 spans; 3% of the traces miss a span. Three figures, each single-threaded:

- judge: decoded spans handed to the passive judge (its tap) and judged — the judging alone;
- ingest+judge: protobuf bytes scanned and added to the trace buffer, which decodes the sampled traces
  once and taps them into the judge — what the daemon's receiver does after reading the body;
- sample 10%: the same with ``sample: 10%`` (90% of the traces are never decoded for the judge).

The cyclic GC is tuned as the daemon's engine tunes it (``observe.lag.tune_gc``). CPU time of this process
(``time.process_time``): other work on a shared machine slows it (caches), it is not counted in.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time

from tracecanary.assertions.spans import Span, SpanKind
from tracecanary.daemon.observe.lag import tune_gc
from tracecanary.daemon.run.passive import PassiveJudge
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import scan_protobuf
from tracecanary.daemon.spans.otlp_encode import encode_request
from tracecanary.probes.passive import PassiveProbe

BATCH_SPANS = 512
TIMEOUT_S = 30.0
SHAPE = [  # (name, service, parent index): the 10-node tree below, as spans
    ("POST /webhook", "ingest", None), ("validate-payload", "ingest", 0), ("data-enrichment", "enrich", 0),
    ("fetch-market-data", "enrich", 2), ("fetch-gex-data", "enrich", 2), ("score", "enrich", 2),
    ("orders publish", "ingest", 0), ("orders process", "orders", 6), ("db insert", "orders", 7),
    ("notify", "orders", 7),
]


def probe(sample: str = "100%") -> PassiveProbe:
    def node(i: int) -> dict[str, object]:
        name, service, _ = SHAPE[i]
        kids = [node(j) for j, (_, _, parent) in enumerate(SHAPE) if parent == i]
        return {"span": name, "service": service, **({"children": kids} if kids else {})}

    return PassiveProbe.model_validate({"id": "bench", "kind": "passive", "every": "60s", "timeout": TIMEOUT_S, "sample": sample,
                        "entry": {"span": "POST /webhook", "service": "ingest"},
                                        "expect": {"trace": {"tree": [node(0)]}}})


def traffic(n_traces: int, broken: float = 0.03, seed: int = 1) -> list[list[Span]]:
    """Traces in export order (children before parents, the entry span last)."""
    rnd = random.Random(seed)
    now = time.time_ns()
    out = []
    for _ in range(n_traces):
        tid = f"{rnd.getrandbits(128):032x}"
        ids = [f"{rnd.getrandbits(64) | 1:016x}" for _ in SHAPE]
        spans = [Span(tid, ids[i], None if parent is None else ids[parent], name,
                      SpanKind.SERVER if parent is None else SpanKind.INTERNAL, now + i * 1000, now + 5_000_000 - i,
                      service) for i, (name, service, parent) in enumerate(SHAPE)]
        if rnd.random() < broken:
            spans.pop(rnd.randrange(1, len(spans)))
        out.append(spans[::-1])
    return out


def batches(traces: list[list[Span]]) -> list[bytes]:
    flat = [s for t in traces for s in t]
    return [encode_request(flat[i:i + BATCH_SPANS]).SerializeToString() for i in range(0, len(flat), BATCH_SPANS)]


class Clock:
    """Real time plus an offset: the end of a run jumps past the deadline of the traces left open."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def mono(self) -> float:
        return time.monotonic() + self.offset_s

    def wall_ns(self) -> int:
        return time.time_ns() + int(self.offset_s * 1e9)


async def at_deadline(judge: PassiveJudge, clock: Clock) -> None:
    """The broken traces wait for their deadline (``timeout`` after their entry span): jump there."""
    clock.offset_s += TIMEOUT_S + 1
    await judge.process()


async def judge_only(traces: list[list[Span]]) -> tuple[float, PassiveJudge]:
    clock = Clock()
    judge = PassiveJudge(1_000_000, clock=clock.mono, wall_ns=clock.wall_ns)
    judge.configure([probe()])
    groups = [{bytes.fromhex(t[0].trace_id): t} for t in traces]
    t0 = time.process_time()
    for i in range(0, len(groups), 50):  # 50 traces per receiver call, about one 512-span batch
        for g in groups[i:i + 50]:
            judge.arrived(g)
        await judge.process()
    await at_deadline(judge, clock)
    return time.process_time() - t0, judge


async def ingest_and_judge(bodies: list[bytes], sample: str = "100%") -> tuple[float, PassiveJudge, int]:
    buffer = TraceBuffer(max_spans=2_000_000)
    clock = Clock()
    judge = PassiveJudge(buffer.max_spans, clock=clock.mono, wall_ns=clock.wall_ns)
    judge.configure([probe(sample)])
    buffer.add_tap(judge)
    t0 = time.process_time()
    peak = 0
    for body in bodies:
        buffer.add_batch(scan_protobuf(body))
        peak = max(peak, judge.held_spans)
        await judge.process()
    await at_deadline(judge, clock)
    return time.process_time() - t0, judge, peak


def report(label: str, cpu_s: float, judge: PassiveJudge, n: int) -> None:
    counts = judge.take("bench")
    print(f"{label:<26} {n / cpu_s:>9,.0f} entry traces/s/core  ({counts.judged} judged, {counts.failed} failed "
          f"= {counts.failure_ratio or 0:.1%}, {cpu_s:.2f} s CPU; held now {judge.held_spans} spans)")


async def amain(quick: bool) -> None:
    n = 3_000 if quick else 30_000
    traces = traffic(n)
    bodies = batches(traces)
    gc.collect()
    tune_gc()  # as the daemon's engine does once started
    cpu_s, judge = await judge_only(traces)
    report("judge (decoded spans)", cpu_s, judge, n)
    cpu_s, judge, peak = await ingest_and_judge(bodies)
    report("ingest+judge (protobuf)", cpu_s, judge, n)
    print(f"{'':<26} peak spans held by the passive judge: {peak} (buffer max_spans 2,000,000)")
    cpu_s, judge, _ = await ingest_and_judge(bodies, "10%")
    counts = judge.take("bench")
    print(f"{'sample 10% (protobuf)':<26} {n / cpu_s:>9,.0f} traffic traces/s/core  ({counts.judged} of {n} judged)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run for CI (< 20 s)")
    asyncio.run(amain(ap.parse_args().quick))


if __name__ == "__main__":
    main()
