"""Faults at the OTLP receivers: a client that hangs up mid-body is routine (debug, no traceback), every
refused export is counted by reason (and reaches ``tracecanary_spans_dropped_total``), and the gRPC
receiver answers RESOURCE_EXHAUSTED to a real client while the ingest backlog is really full."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import anyio
import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]

from tests.spans.conftest import start_receiver
from tests.spans.sdk import expected, make_sdk_spans
from tests.spans.test_receiver_grpc import EXPORT
from tests.spans.test_receiver_http import _wait_for
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.engine import Engine, Overrides
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.grpc import serve_otlp_grpc
from tracecanary.daemon.spans.otlp import encode_request
from tracecanary.daemon.spans.receiver import Ingest, OtlpSettings, serve_otlp_http

pytestmark = pytest.mark.anyio
PB = {"Content-Type": "application/x-protobuf"}


async def _open_export(port: int, body: bytes, sent: int) -> anyio.abc.SocketStream:
    """An export whose body stops after ``sent`` bytes: the receiver holds an ingest slot for it."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    await stream.send(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body[:sent])
    return stream


async def test_client_gone_mid_body_is_debug_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    body = encode_request([expected(s) for s in make_sdk_spans()]).SerializeToString()
    with caplog.at_level(logging.DEBUG):
        async with anyio.create_task_group() as tg:
            live = await start_receiver(tg)
            port = int(live.url.split(":")[2].split("/")[0])
            for _ in range(3):
                stream = await _open_export(port, body, 10)
                await _wait_for(lambda: live.ingest.pending == 1)
                await stream.aclose()  # the exporter crashed
                await _wait_for(lambda: live.ingest.pending == 0)
            async with aiohttp.ClientSession() as http, http.post(live.url, data=body, headers=PB) as r:
                assert r.status == 200  # the slot came back every time
            tg.cancel_scope.cancel()
    assert live.ingest.refused == {"disconnected": 3}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sum("disconnected mid-body" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG) == 3


async def test_every_refusal_is_counted_by_reason() -> None:
    refused: list[str] = []
    async with anyio.create_task_group() as tg:
        cfg = OtlpSettings.model_validate({"http": "127.0.0.1:0", "grpc": None, "token": "t0ken-value",
                                           "max_body": "1KiB", "body_timeout": "200ms"})
        buffer = TraceBuffer()
        ingest = Ingest(buffer, cfg, on_refused=refused.append)
        port = await tg.start(lambda task_status: serve_otlp_http(buffer, cfg, ingest=ingest, task_status=task_status))
        url = f"http://127.0.0.1:{port}/v1/traces"
        auth = {**PB, "Authorization": "Bearer t0ken-value"}
        async with aiohttp.ClientSession() as http:
            for headers, data, status in [
                (PB, b"", 401),
                ({**auth, "Content-Type": "text/plain"}, b"x", 415),
                ({**auth, "Content-Encoding": "br"}, b"x", 415),
                (auth, bytes(2048), 413),
                (auth, b"\xff\xff\xff", 400),
            ]:
                async with http.post(url, data=data, headers=headers) as r:
                    assert r.status == status
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.send(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                              b"Authorization: Bearer t0ken-value\r\nContent-Length: 100\r\n\r\nxx")
            assert (await stream.receive()).startswith(b"HTTP/1.1 408")  # the body never came
            await stream.aclose()
        tg.cancel_scope.cancel()
    assert refused == ["unauthorized", "unsupported", "unsupported", "too_large", "undecodable", "timeout"]
    assert ingest.refused == {"unauthorized": 1, "unsupported": 2, "too_large": 1, "undecodable": 1, "timeout": 1}


async def test_grpc_resource_exhausted_while_the_backlog_is_really_full() -> None:
    """One ingest shared by both receivers (as the daemon's limit would be), one slot: an HTTP export
    stuck mid-body holds it, so a real gRPC client is told RESOURCE_EXHAUSTED with RetryInfo."""
    body = encode_request([expected(s) for s in make_sdk_spans()]).SerializeToString()
    async with anyio.create_task_group() as tg:
        cfg = OtlpSettings.model_validate({"http": "127.0.0.1:0", "grpc": "127.0.0.1:0", "max_pending_batches": 1,
                                           "retry_after": "3s"})
        buffer = TraceBuffer()
        ingest = Ingest(buffer, cfg)
        http_port = await tg.start(lambda task_status: serve_otlp_http(buffer, cfg, ingest=ingest,
                                                                       task_status=task_status))
        grpc_port = await tg.start(lambda task_status: serve_otlp_grpc(buffer, cfg, ingest=ingest,
                                                                       task_status=task_status))
        stream = await _open_export(http_port, body, 10)
        await _wait_for(lambda: ingest.pending == 1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as err, anyio.fail_after(10):
                await export(body)
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(err.value.trailing_metadata() or ())
            assert RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 3
            await stream.send(body[10:])  # the HTTP export completes and frees the slot
            assert (await stream.receive()).startswith(b"HTTP/1.1 200")
            await stream.aclose()
            await _wait_for(lambda: ingest.pending == 0)
            with anyio.fail_after(10):
                await export(body)  # now accepted
        tg.cancel_scope.cancel()
    assert ingest.refused == {"throttled": 1}
    assert buffer.stats().received_total == 8  # 4 spans by HTTP, then the same 4 by gRPC


async def test_refusals_reach_the_dropped_spans_metric(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("daemon: {otlp: {token: t0ken-value}}\n")
    engine = Engine(load_config(suite), Overrides(listen="127.0.0.1:0", otlp_http="127.0.0.1:0", otlp_grpc="none"))
    async with engine.started(temporary_store=True), aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(f"http://{engine.addresses['otlp_http']}/v1/traces", data=b"", headers=PB) as r:
                assert r.status == 401
        async with http.get(f"http://{engine.addresses['api']}/metrics") as r:
            text = await r.text()
    assert 'tracecanary_spans_dropped_total{reason="unauthorized"} 2.0' in text
