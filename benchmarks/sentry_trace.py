"""Sentry trace source figures, against the in-process Sentry emulator over loopback HTTP.

- fetch + convert throughput of the new trace view and of the legacy view (events-trace + one event
  fetch per transaction), for one trace of ``--transactions`` × ``--spans`` spans;
- conversion alone (JSON already parsed → Span objects);
- poll overhead: time from the moment the trace becomes visible (the emulator's ingest delay) to
  ``poll()`` returning it, with the default backoff (1 s doubling to 10 s) and a fast one.

    python benchmarks/sentry_trace.py            # 10 transactions x 100 spans, 20 rounds
    python benchmarks/sentry_trace.py --quick
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from typing import Any

import aiohttp
import anyio
from sentry_sdk.envelope import Envelope, Item, PayloadRef

from tracecanary.daemon.spans.sentry import SentryTraceSource
from tracecanary.daemon.spans.sentry_convert import convert_trace
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.demo.emulators.sentry_views import trace_view
from tracecanary.integrations import SentryIntegration


def _transactions(trace_id: str, count: int, spans: int) -> list[dict[str, Any]]:
    t0 = time.time()
    out: list[dict[str, Any]] = []
    parent = secrets.token_hex(8)
    for i in range(count):
        root = secrets.token_hex(8)
        children = [
            {"trace_id": trace_id, "span_id": secrets.token_hex(8), "parent_span_id": root, "op": "db.query",
             "description": f"SELECT {j}", "start_timestamp": t0 + i + j / 1e4, "timestamp": t0 + i + j / 1e4 + 1e-4,
             "status": "ok"}
            for j in range(spans)
        ]
        out.append({
            "type": "transaction", "event_id": secrets.token_hex(16), "transaction": f"worker {i}",
            "start_timestamp": t0 + i, "timestamp": t0 + i + 0.5,
            "contexts": {"trace": {"trace_id": trace_id, "span_id": root, "parent_span_id": parent,
                                   "op": "queue.process", "status": "ok"}},
            "spans": children,
        })
        parent = children[-1]["span_id"]
    return out


async def _ingest(session: aiohttp.ClientSession, emu: SentryEmulator, txns: list[dict[str, Any]]) -> None:
    for txn in txns:
        env = Envelope(headers={})
        env.add_item(Item(payload=PayloadRef(json=txn), type="transaction"))
        with anyio.fail_after(10):
            async with session.post(f"{emu.base_url}/api/1/envelope/", data=env.serialize(),
                                    params={"sentry_key": emu.public_key}) as resp:
                assert resp.status == 200, resp.status


async def _fetch_rate(source: SentryTraceSource, trace_id: str, rounds: int) -> tuple[float, int]:
    times = []
    n = 0
    for _ in range(rounds):
        t = time.perf_counter()
        n = len(await source.fetch(trace_id))
        times.append(time.perf_counter() - t)
    return statistics.median(times), n


async def main(transactions: int, spans: int, rounds: int) -> None:
    trace_id = secrets.token_hex(16)
    total = transactions * (spans + 1)
    async with SentryEmulator(projects={"1": "bench"}) as emu, aiohttp.ClientSession() as session:
        await _ingest(session, emu, _transactions(trace_id, transactions, spans))
        integ = SentryIntegration(org=emu.org, token=emu.token, api_url=emu.base_url)
        new_s, n = await _fetch_rate(SentryTraceSource(session, integ), trace_id, rounds)
        assert n == total, (n, total)
        print(f"new trace view: {total} spans fetched+converted in {new_s * 1e3:.1f} ms "
              f"(median of {rounds}) = {total / new_s:,.0f} spans/s")
        emu.legacy_only = True
        legacy_s, n = await _fetch_rate(SentryTraceSource(session, integ), trace_id, rounds)
        assert n == total, (n, total)
        print(f"legacy view ({transactions} event fetches): {legacy_s * 1e3:.1f} ms = {total / legacy_s:,.0f} spans/s")
        emu.legacy_only = False

        nodes = trace_view(emu.store, trace_id, ["span.status"])
        t = time.perf_counter()
        for _ in range(rounds):
            convert_trace(trace_id, nodes)
        conv_s = (time.perf_counter() - t) / rounds
        print(f"conversion only: {total / conv_s:,.0f} spans/s")

        for label, initial_s, max_s in (("default backoff 1s..10s", 1.0, 10.0), ("fast backoff 0.1s..1s", 0.1, 1.0)):
            tid = secrets.token_hex(16)
            emu.ingest_delay_s = 2.0
            await _ingest(session, emu, _transactions(tid, 1, 5))
            visible_at = time.monotonic() + 2.0
            source = SentryTraceSource(session, integ, poll_initial_s=initial_s, poll_max_s=max_s)
            await source.poll(tid, lambda ss: len(ss) == 6, anyio.current_time() + 30)
            print(f"poll ({label}), 2 s ingest delay: trace returned {time.monotonic() - visible_at:.2f} s "
                  f"after it became visible, {sum(tid in p for p in emu.api_requests)} requests")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        anyio.run(main, 4, 50, 5)
    else:
        anyio.run(main, 10, 100, 20)
