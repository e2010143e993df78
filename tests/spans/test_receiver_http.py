"""OTLP/HTTP receiver against the real OpenTelemetry SDK exporter and raw aiohttp clients."""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib

import aiohttp
import anyio
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.spans.conftest import LiveReceiver, start_receiver
from tests.spans.sdk import expected, make_sdk_spans
from tracecanary.daemon.spans.otlp import encode_request, spans_to_otlp_json

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}


async def _wait_for(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Bounded wait on state owned by the server (polled: it has no event to await)."""
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.005)


def _sorted(spans):  # type: ignore[no-untyped-def]
    return sorted(spans, key=lambda s: s.span_id)


@pytest.mark.anyio
@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
async def test_sdk_http_exporter_round_trip(receiver: LiveReceiver, compression: Compression) -> None:
    sdk_spans = make_sdk_spans()
    exporter = OTLPSpanExporter(endpoint=receiver.url, compression=compression, timeout=5)
    result = await anyio.to_thread.run_sync(exporter.export, sdk_spans)
    exporter.shutdown()
    assert result is SpanExportResult.SUCCESS
    want = [expected(s) for s in sdk_spans]
    trace_ids = {s.trace_id for s in want}
    got = [s for tid in trace_ids for s in receiver.buffer.trace(tid)]
    assert _sorted(got) == _sorted(want)
    root = next(s for s in got if s.name == "POST /orders")
    assert root.attributes["tags"] == ("a", "b") and root.attributes["http.status_code"] == 201
    assert isinstance(root.attributes["ok"], bool) and isinstance(root.attributes["ratio"], float)
    charge = next(s for s in got if s.name == "charge card")
    assert receiver.buffer.linking_traces(charge.links[0].trace_id) == {charge.trace_id}
    assert receiver.buffer.stats().received_total == 4


@pytest.mark.anyio
async def test_json_body_gets_json_reply_and_spans_equal(receiver: LiveReceiver) -> None:
    want = [expected(s) for s in make_sdk_spans()]
    body = json.dumps(spans_to_otlp_json(want)).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(receiver.url, data=gzip.compress(body), headers={**JS, "Content-Encoding": "gzip"}) as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            assert await r.json() == {}
    got = [s for tid in {s.trace_id for s in want} for s in receiver.buffer.trace(tid)]
    assert _sorted(got) == _sorted(want)


def _json_span(trace_id: str, span_id: str, parent: str = "") -> dict[str, object]:
    return {"traceId": trace_id, "spanId": span_id, "parentSpanId": parent, "name": f"s-{span_id}",
            "kind": 2, "startTimeUnixNano": "1000", "endTimeUnixNano": 2000, "futureField": {"x": 1}}


@pytest.mark.anyio
async def test_json_wrong_id_lengths_partial_success(receiver: LiveReceiver) -> None:
    tid = os.urandom(16).hex().upper()  # ids are case-insensitive hex
    spans = [
        _json_span(tid, "00f067aa0ba902b7"),
        _json_span(tid[:24], "00f067aa0ba902b8"),  # 12-byte trace id: what base64 decoding would give
        _json_span(tid, "00f067aa0ba902"),  # 7-byte span id
        _json_span(tid, "00f067aa0ba902b9", parent="zz"),  # parent not hex
    ]
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]},
                              "scopeSpans": [{"scope": {"name": "s"}, "spans": spans}]}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(receiver.url, data=json.dumps(doc), headers=JS) as r:
            assert r.status == 200
            reply = await r.json()
    assert reply["partialSuccess"]["rejectedSpans"] == "3"
    assert "invalid trace id" in reply["partialSuccess"]["errorMessage"]
    kept = receiver.buffer.trace(tid.lower())
    assert [(s.span_id, s.service, s.start_ns, s.end_ns) for s in kept] == [("00f067aa0ba902b7", "x", 1000, 2000)]


@pytest.mark.anyio
async def test_protobuf_wrong_id_lengths_partial_success(receiver: LiveReceiver) -> None:
    want = [expected(s) for s in make_sdk_spans()]
    req = encode_request(want)
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01" * 12
    req.resource_spans[0].scope_spans[0].spans[1].span_id = b""
    async with aiohttp.ClientSession() as http:
        async with http.post(receiver.url, data=req.SerializeToString(), headers=PB) as r:
            assert r.status == 200 and r.content_type == "application/x-protobuf"
            reply = ExportTraceServiceResponse.FromString(await r.read())
    assert reply.partial_success.rejected_spans == 2
    assert receiver.buffer.stats().spans == 2


@pytest.mark.anyio
async def test_malformed_bodies_get_spec_status_and_server_stays_up(receiver: LiveReceiver) -> None:
    good = encode_request([expected(s) for s in make_sdk_spans()]).SerializeToString()
    async with aiohttp.ClientSession() as http:
        async with http.post(receiver.url, data=good[: len(good) // 2 + 3], headers=PB) as r:
            assert r.status == 400
            status = status_pb2.Status.FromString(await r.read())
            assert status.code == 3 and "undecodable" in status.message
        async with http.post(receiver.url, data=b"{not json", headers=JS) as r:
            assert r.status == 400 and (await r.json())["code"] == 3
        async with http.post(receiver.url, data=b'{"resourceSpans": 7}', headers=JS) as r:
            assert r.status == 400
        async with http.post(receiver.url, data=good, headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
        async with http.post(receiver.url, data=b"\x1f\x8b\x08garbage", headers={**PB, "Content-Encoding": "gzip"}) as r:
            assert r.status == 400
        async with http.post(receiver.url, data=good, headers={**PB, "Content-Encoding": "snappy"}) as r:
            assert r.status == 415
        async with http.post(receiver.url, data=zlib.compress(good), headers={**PB, "Content-Encoding": "deflate"}) as r:
            assert r.status == 200
    assert receiver.buffer.stats().spans == 4


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="session")
def gzip_bomb() -> bytes:
    """~1 MB of valid gzip that inflates to 1 GiB of zeros (one deflate stream, full-flush blocks)."""
    block = bytes(16 * 1024 * 1024)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    comp.compress(block)
    comp.flush(zlib.Z_FULL_FLUSH)
    flushed = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)  # same bytes for every block now
    crc = 0
    for _ in range(64):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + flushed * 64 + comp.flush() + struct.pack("<II", crc, (64 * len(block)) & 0xFFFFFFFF)


@pytest.mark.anyio
async def test_gzip_bomb_is_413_without_inflating_it(gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 2 * 1024 * 1024
    async with anyio.create_task_group() as tg:
        live = await start_receiver(tg, max_body="8MiB")
        rss_before = _peak_rss_mib()
        _peak_rss_reset()
        async with aiohttp.ClientSession() as http:
            async with http.post(live.url, data=gzip_bomb, headers={**PB, "Content-Encoding": "gzip"}) as r:
                assert r.status == 413
                assert "max_body" in status_pb2.Status.FromString(await r.read()).message
            assert _peak_rss_mib() - rss_before < 200
            good = encode_request([expected(s) for s in make_sdk_spans()]).SerializeToString()
            async with http.post(live.url, data=good, headers=PB) as r:
                assert r.status == 200
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_plain_body_over_cap_is_413() -> None:
    async with anyio.create_task_group() as tg:
        live = await start_receiver(tg, max_body=1000)
        async with aiohttp.ClientSession() as http:
            async with http.post(live.url, data=bytes(5000), headers=JS) as r:
                assert r.status == 413 and (await r.json())["code"] == 3
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_bearer_token() -> None:
    async with anyio.create_task_group() as tg:
        live = await start_receiver(tg, token="s3cret")
        sdk_spans = make_sdk_spans()
        bad = OTLPSpanExporter(endpoint=live.url, headers={"Authorization": "Bearer wrong"}, timeout=5)
        assert await anyio.to_thread.run_sync(bad.export, sdk_spans) is SpanExportResult.FAILURE
        good = OTLPSpanExporter(endpoint=live.url, headers={"Authorization": "Bearer s3cret"}, timeout=5)
        assert await anyio.to_thread.run_sync(good.export, sdk_spans) is SpanExportResult.SUCCESS
        async with aiohttp.ClientSession() as http, http.post(live.url, data=b"", headers=PB) as r:
            assert r.status == 401
        assert live.buffer.stats().spans == 4
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_backlog_full_is_429_with_retry_after() -> None:
    async with anyio.create_task_group() as tg:
        live = await start_receiver(tg, max_pending_batches=1, retry_after="2s")
        port = int(live.url.split(":")[2].split("/")[0])
        stream = await anyio.connect_tcp("127.0.0.1", port)
        head = (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 20\r\n\r\n{\"resourceSpans\":")
        await stream.send(head)  # the body stays incomplete: the one ingest slot is busy
        await _wait_for(lambda: live.ingest.pending == 1)
        async with aiohttp.ClientSession() as http:
            async with http.post(live.url, data=b"{}", headers=JS) as r:
                assert r.status == 429
                assert r.headers["Retry-After"] == "2"
                assert (await r.json())["code"] == 8
            await stream.send(b"[]}")
            reply = await stream.receive()
            assert reply.startswith(b"HTTP/1.1 200")
            await stream.aclose()
            await _wait_for(lambda: live.ingest.pending == 0)
            async with http.post(live.url, data=b"{}", headers=JS) as r:
                assert r.status == 200
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_port_in_use_is_startup_error() -> None:
    from tracecanary.daemon.spans.buffer import TraceBuffer
    from tracecanary.daemon.spans.receiver import OtlpSettings, serve_otlp_http
    from tracecanary.errors import StartupError

    async with anyio.create_task_group() as tg:
        live = await start_receiver(tg)
        taken = live.url.split("//")[1].split("/")[0]
        with pytest.raises(StartupError, match="cannot listen"):
            await serve_otlp_http(TraceBuffer(), OtlpSettings(http=taken, grpc=None))
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_routes_mounted_on_an_app_that_inflates_itself() -> None:
    """Mounted on another aiohttp app (default auto_decompress): gzip works, the cap counts inflated bytes."""
    from aiohttp import web

    from tracecanary.daemon.spans.buffer import TraceBuffer
    from tracecanary.daemon.spans.receiver import OtlpSettings, otlp_routes

    buffer = TraceBuffer()
    app = web.Application()
    app.add_routes(otlp_routes(buffer, OtlpSettings(max_body="4MiB")))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/v1/traces"
    try:
        exporter = OTLPSpanExporter(endpoint=url, compression=Compression.Gzip, timeout=5)
        assert await anyio.to_thread.run_sync(exporter.export, make_sdk_spans()) is SpanExportResult.SUCCESS
        assert buffer.stats().spans == 4
        over_cap = gzip.compress(bytes(6 * 1024 * 1024))
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=over_cap, headers={**PB, "Content-Encoding": "gzip"}) as r:
                assert r.status == 413
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_large_body_is_decoded_off_the_event_loop(receiver: LiveReceiver) -> None:
    from tracecanary.assertions.spans import Span

    t = os.urandom(16).hex()
    spans = [Span(trace_id=t, span_id=os.urandom(8).hex(), parent_span_id=None, name=f"bulk-{i}",
                  attributes={"i": i, "payload": "x" * 64}) for i in range(5000)]
    body = json.dumps(spans_to_otlp_json(spans)).encode()
    assert len(body) > 1024 * 1024  # over the threshold for decoding in a worker thread
    async with aiohttp.ClientSession() as http, http.post(receiver.url, data=body, headers=JS) as r:
        assert r.status == 200
    assert len(receiver.buffer.trace(t)) == 5000
