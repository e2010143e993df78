"""The compose deployment's daemon for real: its command line and suite, both span intake paths the
Collector config feeds (OTLP/HTTP with the bearer token, gzip; Kafka topic otlp_spans in otlp_proto keyed
by trace id), the probe endpoints, then SIGHUP (systemd ExecReload) and SIGTERM (KillSignal) -> exit 0."""

from __future__ import annotations

import ast
import gzip
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiokafka import AIOKafkaProducer
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.deploy.common import SUITE_DIR, clean_env, compose, tracecanary_cmd

TOKEN = "deploy-test-token"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Log:
    """The daemon's stderr, collected line by line; wait for a pattern with a bounded wait."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = anyio.Event()

    async def pump(self, proc: Process) -> None:
        assert proc.stderr is not None
        buf = ""
        async for chunk in TextReceiveStream(proc.stderr):
            buf += chunk
            *done, buf = buf.split("\n")
            self.lines.extend(done)
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, pattern: str, timeout_s: float, start: int = 0) -> re.Match[str]:
        with anyio.fail_after(timeout_s):
            while True:
                for line in self.lines[start:]:
                    m = re.search(pattern, line)
                    if m:
                        return m
                await self._changed.wait()


@asynccontextmanager
async def compose_daemon(tmp_path: Path, bootstrap: str) -> AsyncIterator[tuple[Process, Log, dict[str, str]]]:
    """`tracecanary run` with the compose command, addresses moved to loopback port 0, a temp store."""
    argv = list(compose()["services"]["tracecanary"]["command"])
    subst = {"/etc/tracecanary": str(SUITE_DIR), "sqlite:////var/lib/tracecanary/tracecanary.db":
             f"sqlite:///{tmp_path / 'tc.db'}"}
    argv = [subst.get(a, "127.0.0.1:0" if a.startswith("0.0.0.0:") else a) for a in argv]
    env = clean_env(OTLP_TOKEN=TOKEN, KAFKA_BOOTSTRAP=bootstrap, OTEL_EXPORTER_OTLP_ENDPOINT="",
                    TARGET_URL=f"http://127.0.0.1:{closed_port()}")
    log = Log()
    proc = await anyio.open_process(tracecanary_cmd(*argv), env=env, stdin=None, stdout=None)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.pump, proc)
            m = await log.wait_for(r"daemon ready addresses=(\{.*?\}) probes=", 60)
            addresses: dict[str, str] = ast.literal_eval(m.group(1))
            yield proc, log, addresses
            tg.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await proc.wait()


def export_request(trace_id: str, span_id: str, name: str) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", "deploy-test"
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes.fromhex(trace_id), bytes.fromhex(span_id), name
    span.trace_state = "tracecanary=r-deploy"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_100_000_000
    return req


async def received(session: aiohttp.ClientSession, api: str) -> dict[str, float]:
    with anyio.fail_after(10):
        async with session.get(f"http://{api}/metrics") as r:
            assert r.status == 200
            text = await r.text()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^tracecanary_spans_received_total\{source="(\w+)"\} (\S+)$', text, re.M)}


async def wait_received(session: aiohttp.ClientSession, api: str, source: str, timeout_s: float,
                        nudge: Any = None) -> None:
    """Poll /metrics until ``source`` has taken in a span; ``nudge`` (async) re-sends meanwhile."""
    with anyio.fail_after(timeout_s):
        while (await received(session, api)).get(source, 0) < 1:
            if nudge is not None:
                await nudge()
            await anyio.sleep(0.2)


@pytest.mark.anyio
async def test_compose_daemon_intake_reload_and_drain(tmp_path: Path, kafka_broker: Any) -> None:
    async with compose_daemon(tmp_path, kafka_broker.bootstrap) as (proc, log, addr), \
            aiohttp.ClientSession() as session:
        api, otlp = addr["api"], addr["otlp_http"]
        assert "otlp_grpc" in addr
        with anyio.fail_after(10):
            async with session.get(f"http://{api}/healthz") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with session.get(f"http://{api}/readyz") as r:
                assert r.status == 200 and (await r.json())["status"] == "ready"

        # 1. the Collector's otlphttp exporter: protobuf, gzip, bearer token from OTLP_TOKEN
        body = gzip.compress(export_request("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331",
                                            "POST /webhook").SerializeToString())
        headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
        with anyio.fail_after(10):
            async with session.post(f"http://{otlp}/v1/traces", data=body, headers=headers) as r:
                assert r.status == 401  # daemon.otlp.token is set from OTLP_TOKEN
            async with session.post(f"http://{otlp}/v1/traces", data=body,
                                    headers={**headers, "Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200, await r.text()
        await wait_received(session, api, "otlp_http", 10)

        # 2. the Collector's kafka exporter: topic otlp_spans, otlp_proto, key = hex trace id, gzip.
        # The group starts at `latest`, so re-send until the consumer has joined and taken one in.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, compression_type="gzip")
        with anyio.fail_after(20):
            await producer.start()
        try:
            async def send() -> None:
                trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
                value = export_request(trace_id, span_id, "orders process").SerializeToString()
                with anyio.fail_after(10):
                    await producer.send_and_wait("otlp_spans", value, key=trace_id.encode())

            await wait_received(session, api, "kafka", 45, nudge=send)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await producer.stop()

        # 3. systemctl reload / docker compose kill -s HUP: the suite is re-read, the daemon keeps serving
        mark = len(log.lines)
        proc.send_signal(signal.SIGHUP)
        await log.wait_for(r"config reloaded probes=1", 20, start=mark)
        with anyio.fail_after(10):
            async with session.get(f"http://{api}/readyz") as r:
                assert r.status == 200

        # 4. systemctl stop / docker stop: SIGTERM drains (nothing in flight) and exits 0
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(40):
            assert await proc.wait() == 0
        await log.wait_for(r"shutdown signal=SIGTERM", 5, start=mark)
