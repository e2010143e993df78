"""Two `tracecanary run` daemons in ``cluster.mode: standby`` on one real PostgreSQL database.

A target counts requests by probe and by replica (``?who=`` from each process's environment: the config
text is the same). Only the active one fires (no probe twice in one schedule slot); kill -9 of the active
→ the standby takes over (within 15 s), records the dead one's in-flight run ``aborted``/``failover``,
keeps the schedule, and continues the failing probe's incident: announced once in total on the Slack
emulator, and its recovery threads under that message. A replica whose Postgres connection is cut
through a blackholed loopback proxy stops firing within 3 s and its late writes are refused."""

from __future__ import annotations

import math
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.cluster.targets import RecordingTarget
from tests.daemon.support import DaemonProcess, eventually
from tests.probes.helpers import serve
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.demo.tcpproxy import tcp_proxy

pytestmark = pytest.mark.anyio
EVERY_S = 2.0
SLOW_S = 3.0


@dataclass
class CountingTarget(RecordingTarget):
    """``/tick`` answers 200, ``/broken`` 500 until healed, ``/slow`` after SLOW_S; every hit is recorded."""

    broken: bool = True

    async def answer(self, path: str, request: web.Request) -> web.Response:
        if path == "slow":
            await anyio.sleep(SLOW_S)
        status = 500 if path == "broken" and self.broken else 200
        return web.json_response({"ok": status == 200}, status=status)


def suite(target: str, slack: str, *, every: str = "2s", extra: str = "") -> str:
    probes = "".join(f"""
  - id: {pid}
    kind: http
    every: {every}
    timeout: 10s
    request: {{url: "{target}/{pid}?who=${{WHO}}"}}
    alert: {{policy: {"pager" if pid == "broken" else "quiet"}}}
""" for pid in ("tick", "broken", "slow"))
    return f"""
daemon:
  shutdown_grace: 2s
  cluster: {{mode: standby}}
  store_health: {{check_interval: 1s}}
alerts:
  channels:
    oncall: {{type: slack, channel: C0OPS, token: xoxb-bot, base_url: "{slack}"}}
  policies:
    pager: {{channels: [oncall], failure_threshold: 1}}
    quiet: {{channels: []}}
  retry_delays: [100ms, 500ms]
probes:{probes}{extra}"""


@pytest.fixture
async def target() -> AsyncIterator[tuple[CountingTarget, str]]:
    t = CountingTarget()
    async with serve(t.app()) as base:
        yield t, base


async def get(d: DaemonProcess, path: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(f"{d.base}{path}") as r:
        return r.status, await r.json()


async def page(d: DaemonProcess, path: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{d.base}{path}") as r:
        assert r.status == 200
        return await r.text()


async def role(d: DaemonProcess) -> str:
    status, body = await get(d, "/api/cluster")
    assert status == 200, body
    return str(body["role"])


async def metric(d: DaemonProcess, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{d.base}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def slots(times: list[float]) -> Counter[int]:
    return Counter(math.floor(t / EVERY_S + 0.25) for t in times)  # a slot's runs land just after it


async def start_pair(tmp_path: Path, url_a: str, url_b: str, config: Path) -> tuple[DaemonProcess, DaemonProcess]:
    a = DaemonProcess(config, url_a, name="a", env={"WHO": "a"})
    b = DaemonProcess(config, url_b, name="b", env={"WHO": "b"})
    a.start()
    await a.ready()  # alone: a takes the lock
    b.start()
    await b.ready("/healthz")
    await eventually(lambda: _standby_ready(b), 60, "b waiting as standby")
    return a, b


async def _standby_ready(d: DaemonProcess) -> bool:
    try:
        status, body = await get(d, "/readyz")
    except aiohttp.ClientError:
        return False
    return status == 503 and body.get("reasons") == [{"name": "cluster", "reason": "standby"}]


async def test_kill9_of_the_active_the_standby_takes_over_and_announces_nothing_twice(
        tmp_path: Path, postgres_url: str, target: tuple[CountingTarget, str]) -> None:
    t, base = target
    async with SlackEmulator(channels=["C0OPS"], retry_after_s=0) as slack:
        config = tmp_path / "suite.yaml"
        config.write_text(suite(base, slack.base_url))
        a, b = await start_pair(tmp_path, postgres_url, postgres_url, config)
        try:
            assert (await role(a), await role(b)) == ("active", "standby")
            assert 'class="role role-standby"' in await page(b, "/")  # the dashboard header
            status, refused = await b.post("/api/probes/tick/run", {})
            assert status == 503 and "this replica is a standby" in str(refused)
            _, cluster = await get(b, "/api/cluster")
            assert cluster["mode"] == "standby" and len(cluster["members"]) == 2  # type: ignore[arg-type]
            await slack.wait_until(lambda: len(slack.messages("C0OPS")) == 1, timeout_s=60)
            assert await metric(a, 'tracecanary_cluster_role{role="active"}') == 1
            # kill the active while a slow run of it is in flight
            seen = len(t.of("slow", "a"))
            await eventually(lambda: len(t.of("slow", "a")) > seen, 30, "a slow run in flight")
            killed_at = time.time()
            await a.kill9()
            await b.ready(timeout_s=30)
            took_over_s = time.time() - killed_at
            assert await role(b) == "active" and 'class="role role-active"' in await page(b, "/")
            await eventually(lambda: len(t.of("tick", "b")) >= 3, 30, "b firing ticks")
            first_tick_s = t.of("tick", "b")[0] - killed_at
            t.broken = False
            await slack.wait_until(lambda: len(slack.messages("C0OPS")) == 2, timeout_s=60)
            _, runs = await get(b, "/api/probes/slow/runs?limit=50")
            aborted = [r for r in runs["runs"] if r["status"] == "aborted"]  # type: ignore[index, union-attr]
        finally:
            a.stop()
            b.stop()
        messages = slack.messages("C0OPS")
    print(f"\nfailover: kill -9 -> standby /readyz 200 after {took_over_s:.2f}s; first tick of the new "
          f"active {first_tick_s:.2f}s after the kill")
    assert took_over_s <= 15
    assert first_tick_s <= took_over_s + EVERY_S + 1.0  # the schedule continues within one interval
    assert [slot for slot, n in slots(t.of("tick")).items() if n > 1] == []  # no probe fired twice in one slot
    failing, recovered = messages
    assert failing["text"].startswith("broken is failing")
    assert failing.get("thread_ts", failing["ts"]) == failing["ts"]  # a thread's parent, not a reply
    assert recovered["thread_ts"] == failing["ts"] and "recovered" in recovered["text"]
    assert any(r["abort_reason"] == "failover" for r in aborted), aborted  # type: ignore[index]


async def test_a_replica_cut_from_postgres_stops_firing_and_its_late_writes_are_refused(
        tmp_path: Path, postgres_url: str, target: tuple[CountingTarget, str]) -> None:
    t, base = target
    port = urlsplit(postgres_url).port
    assert port is not None
    async with SlackEmulator(channels=["C0OPS"], retry_after_s=0) as slack, tcp_proxy("127.0.0.1", port) as proxy:
        parts = urlsplit(postgres_url)
        via_proxy = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        config = tmp_path / "suite.yaml"
        config.write_text(suite(base, slack.base_url, every="500ms"))
        a, b = await start_pair(tmp_path, via_proxy, postgres_url, config)
        try:
            seen = len(t.of("slow", "a"))
            await eventually(lambda: len(t.of("slow", "a")) > seen, 30, "a slow run in flight")
            proxy.blackhole()
            cut_at = time.time()
            await eventually(lambda: _role_is(a, "standby"), 30, "a deposed")
            stopped_s = time.time() - cut_at
            last_a_s = max(t.of("tick", "a")) - cut_at
            await eventually(lambda: _role_is(b, "active"), 30, "b takes over")
            took_over_s = time.time() - cut_at
            await eventually(lambda: len(t.of("tick", "b")) >= 2, 30, "b firing")
            proxy.heal()
            await eventually(lambda: _fenced(a), 60, "a's late writes refused")
            assert await role(b) == "active" and await role(a) == "standby"
            _, runs = await get(b, "/api/probes/slow/runs?limit=50")
            a_after_3s = [h for h in t.hits if h[1] == "a" and h[2] > cut_at + 3.0]
            for d in (a, b):  # SIGTERM: the standby, then the active (drained), each exits 0
                d.signal(signal.SIGTERM)
                assert await d.wait_exit() == 0, d.log_text()[-2000:]
        finally:
            a.stop()
            b.stop()
    print(f"\npartition: the cut replica stopped acting {stopped_s:.2f}s after the cut (its last tick "
          f"{last_a_s:.2f}s after it); the standby took over after {took_over_s:.2f}s")
    assert a_after_3s == []  # the cut replica fired nothing from 3 s after the cut on
    assert "cluster.deposed" in a.log_text() and "reason=no answer from PostgreSQL for" in a.log_text()
    slow_runs = runs["runs"]  # type: ignore[index]
    assert any(r["status"] == "aborted" and r["abort_reason"] == "failover" for r in slow_runs), slow_runs


async def _role_is(d: DaemonProcess, want: str) -> bool:
    try:
        return await role(d) == want
    except aiohttp.ClientError:
        return False


async def _fenced(d: DaemonProcess) -> bool:
    return await metric(d, "tracecanary_cluster_fenced_writes_total") > 0


RETRIED = """
  - id: retried
    kind: http
    timeout: 5s
    retries: {count: 1, delay: 4s}
    request: {url: "TARGET/broken?who=${WHO}"}
    alert: {policy: quiet}
"""


async def test_a_retry_chain_waiting_at_the_kill_is_resumed_by_the_new_active(
        tmp_path: Path, postgres_url: str, target: tuple[CountingTarget, str]) -> None:
    t, base = target
    async with SlackEmulator(channels=["C0OPS"], retry_after_s=0) as slack:
        config = tmp_path / "suite.yaml"
        config.write_text(suite(base, slack.base_url, every="1h", extra=RETRIED.replace("TARGET", base)))
        a, b = await start_pair(tmp_path, postgres_url, postgres_url, config)
        try:
            await a.run_now("retried")
            await eventually(lambda: _attempts(b, "finished"), 30, "attempt 1 recorded, its retry pending")
            await a.kill9()
            await b.ready(timeout_s=30)
            await eventually(lambda: len(t.of("broken", "b")) >= 1, 30, "the new active runs the retry")
            await eventually(lambda: _attempts(b, "finished", 2), 30, "attempt 2 recorded")
            _, runs = await get(b, "/api/probes/retried/runs")
        finally:
            a.stop()
            b.stop()
    first, second = sorted(runs["runs"], key=lambda r: r["attempt"])  # type: ignore[index]
    assert (first["attempt"], first["final"], second["attempt"], second["final"]) == (1, False, 2, True)
    assert second["first_run_id"] == first["run_id"] and t.of("broken", "a") and len(t.of("broken", "b")) == 1


async def _attempts(d: DaemonProcess, status: str, attempt: int = 1) -> bool:
    try:
        _, body = await get(d, "/api/probes/retried/runs")
    except aiohttp.ClientError:
        return False
    return any(r["status"] == status and r["attempt"] == attempt for r in body["runs"])  # type: ignore[union-attr]
