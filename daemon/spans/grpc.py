"""OTLP/gRPC trace receiver: ``TraceService/Export`` (grpcio aio) into the TraceBuffer.

Same semantics as OTLP/HTTP: bearer token (UNAUTHENTICATED), bounded in-flight exports
(RESOURCE_EXHAUSTED with ``google.rpc.RetryInfo``), undecodable bodies (INVALID_ARGUMENT),
``partial_success`` for spans with invalid ids. gRPC inflates gzip itself and enforces ``max_body``
as the largest (decompressed) message. The request arrives as raw bytes (no deserializer) so the
receiver's lazy protobuf path applies unchanged.
"""

from __future__ import annotations

import logging

import anyio
import anyio.abc
import grpc
from google.protobuf.duration_pb2 import Duration as PbDuration
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import OtlpDecodeError
from tracecanary.daemon.spans.receiver import PROTOBUF, Ingest, OtlpSettings, authorized, split_address
from tracecanary.errors import StartupError

log = logging.getLogger("tracecanary.spans.grpc")

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_STOP_GRACE_S = 5.0


class TraceServiceHandler:
    """``TraceService/Export`` on raw request bytes."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.settings = ingest.settings

    def _retry_metadata(self) -> tuple[tuple[str, bytes], ...]:
        delay_s = self.settings.retry_after
        info = error_details_pb2.RetryInfo(
            retry_delay=PbDuration(seconds=int(delay_s), nanos=int((delay_s % 1) * 1e9))
        )
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="ingest backlog full")
        status.details.add().Pack(info)
        return (
            ("google.rpc.retryinfo-bin", info.SerializeToString()),
            ("grpc-status-details-bin", status.SerializeToString()),
        )

    async def export(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        if not authorized(metadata.get("authorization"), self.settings.token):
            self.ingest.refuse("unauthorized")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if not self.ingest.try_acquire():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "ingest backlog full, retry later",
                                trailing_metadata=self._retry_metadata())
        try:
            rejected, message = await self.ingest.ingest(request, PROTOBUF)
        except OtlpDecodeError as e:
            self.ingest.refuse("undecodable")
            log.info("otlp grpc bad request peer=%s error=%r", context.peer(), str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finally:
            self.ingest.release()
        resp = ExportTraceServiceResponse()
        if rejected:
            resp.partial_success.rejected_spans = rejected
            resp.partial_success.error_message = message
        return bytes(resp.SerializeToString())


def make_grpc_server(ingest: Ingest) -> grpc.aio.Server:
    """A gRPC server with the trace service registered (not bound, not started)."""
    handler = TraceServiceHandler(ingest)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", ingest.settings.max_body),
        ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared
    ])
    generic = grpc.method_handlers_generic_handler(
        SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(handler.export)}
    )
    server.add_generic_rpc_handlers((generic,))
    return server


async def serve_otlp_grpc(
    buffer: TraceBuffer,
    settings: OtlpSettings,
    *,
    ingest: Ingest | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve OTLP/gRPC on ``settings.grpc`` until cancelled, then stop gracefully.

    Reports the bound port through ``task_status`` (useful with port 0); a port in use is a StartupError.
    """
    if settings.grpc is None:
        raise StartupError("otlp grpc receiver is disabled (daemon.otlp.grpc is null)")
    host, port = split_address(settings.grpc)
    server = make_grpc_server(ingest or Ingest(buffer, settings))
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError as e:
        bound = 0
        reason = str(e)
    else:
        reason = "address in use"
    if not bound:
        raise StartupError(f"otlp grpc: cannot listen on {settings.grpc}: {reason}")
    await server.start()
    log.info("otlp grpc listening address=%s:%d", host, bound)
    try:
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop(_STOP_GRACE_S)
