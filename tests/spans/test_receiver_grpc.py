"""OTLP/gRPC receiver against the real OpenTelemetry SDK gRPC exporter and a raw grpcio client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.spans.sdk import expected, make_sdk_spans
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.grpc import serve_otlp_grpc
from tracecanary.daemon.spans.otlp import encode_request
from tracecanary.daemon.spans.receiver import Ingest, OtlpSettings
from tracecanary.errors import StartupError

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class GrpcReceiver:
    def __init__(self, target: str, buffer: TraceBuffer, ingest: Ingest) -> None:
        self.target, self.buffer, self.ingest = target, buffer, ingest


async def _start(tg: anyio.abc.TaskGroup, **settings: object) -> GrpcReceiver:
    cfg = OtlpSettings.model_validate({"http": None, "grpc": "127.0.0.1:0", **settings})
    buffer = TraceBuffer()
    ingest = Ingest(buffer, cfg)
    port = await tg.start(lambda task_status: serve_otlp_grpc(buffer, cfg, ingest=ingest, task_status=task_status))
    return GrpcReceiver(f"127.0.0.1:{port}", buffer, ingest)


@pytest.fixture
async def grpc_receiver() -> AsyncIterator[GrpcReceiver]:
    async with anyio.create_task_group() as tg:
        yield await _start(tg)
        tg.cancel_scope.cancel()


async def _call(target: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    async with grpc.aio.insecure_channel(target) as channel:
        export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        with anyio.fail_after(5):
            return await export(body, metadata=metadata)  # type: ignore[no-any-return]


@pytest.mark.anyio
@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip])
async def test_sdk_grpc_exporter_round_trip(grpc_receiver: GrpcReceiver, compression: grpc.Compression | None) -> None:
    sdk_spans = make_sdk_spans()
    exporter = OTLPSpanExporter(endpoint=grpc_receiver.target, insecure=True, compression=compression, timeout=5)
    result = await anyio.to_thread.run_sync(exporter.export, sdk_spans)
    exporter.shutdown()
    assert result is SpanExportResult.SUCCESS
    want = sorted((expected(s) for s in sdk_spans), key=lambda s: s.span_id)
    got = sorted((s for t in {w.trace_id for w in want} for s in grpc_receiver.buffer.trace(t)), key=lambda s: s.span_id)
    assert got == want


@pytest.mark.anyio
async def test_grpc_partial_success_and_invalid_argument(grpc_receiver: GrpcReceiver) -> None:
    req = encode_request([expected(s) for s in make_sdk_spans()])
    req.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x01\x02"
    reply = ExportTraceServiceResponse.FromString(await _call(grpc_receiver.target, req.SerializeToString()))
    assert reply.partial_success.rejected_spans == 1
    assert "invalid span id" in reply.partial_success.error_message
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(grpc_receiver.target, req.SerializeToString()[:-7])
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_receiver.buffer.stats().spans == 3


@pytest.mark.anyio
async def test_grpc_token_and_backlog() -> None:
    async with anyio.create_task_group() as tg:
        live = await _start(tg, token="t0k", max_pending_batches=1, retry_after="3s")
        body = encode_request([expected(s) for s in make_sdk_spans()]).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(live.target, body, (("authorization", "Bearer nope"),))
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        await _call(live.target, body, (("authorization", "Bearer t0k"),))
        assert live.buffer.stats().spans == 4
        live.ingest.pending = 1  # the one slot is taken by an export being decoded
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(live.target, body, (("authorization", "Bearer t0k"),))
        live.ingest.pending = 0
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(err.value.trailing_metadata() or ())
        from google.rpc.error_details_pb2 import RetryInfo

        assert RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 3
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_grpc_port_in_use_is_startup_error(grpc_receiver: GrpcReceiver) -> None:
    with pytest.raises(StartupError, match="cannot listen"):
        await serve_otlp_grpc(TraceBuffer(), OtlpSettings(http=None, grpc=grpc_receiver.target))


@pytest.mark.anyio
async def test_grpc_message_over_max_body_after_decompression() -> None:
    async with anyio.create_task_group() as tg:
        live = await _start(tg, max_body="1MiB")
        async with grpc.aio.insecure_channel(live.target, compression=grpc.Compression.Gzip) as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as err, anyio.fail_after(10):
                await export(bytes(4 * 1024 * 1024))  # ~4 KiB on the wire, 4 MiB inflated
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert live.buffer.stats().received_total == 0
        tg.cancel_scope.cancel()
