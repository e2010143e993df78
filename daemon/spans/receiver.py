"""OTLP/HTTP trace receiver: ``POST /v1/traces`` into the TraceBuffer.

Protobuf and JSON bodies, ``Content-Encoding: gzip`` and ``deflate`` (aiohttp inflates the stream in
bounded chunks; the size cap counts decompressed bytes as they stream in, so a small gzip bomb is cut
off at the cap), replies in the request's content type, ``partial_success`` for spans with invalid
ids, ``google.rpc.Status`` error bodies, 429 + ``Retry-After`` when too many exports are in flight.

Mounting :func:`otlp_routes` on another app works with aiohttp's default inflation too, but run that
app's ``AppRunner(..., auto_decompress=False)`` (the handler inflates by itself): otherwise aiohttp's
lingering close inflates the rest of a rejected gzip bomb (bounded memory, but seconds of CPU).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import anyio
import anyio.abc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]
from opentelemetry import context as otel_context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.trace import Tracer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tracecanary.assertions.units import Duration, Size
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import DecodedBatch, OtlpDecodeError, RawBatch, decode_json, scan_protobuf
from tracecanary.errors import StartupError
from tracecanary.model import CREDENTIAL

log = logging.getLogger("tracecanary.spans.receiver")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
OFFLOAD_BYTES = 1024 * 1024
"""Default: decode bodies larger than this in a worker thread (the event loop keeps serving)."""


class OtlpSettings(BaseModel):
    """The OTLP receiver (``daemon.otlp``)."""

    model_config = ConfigDict(extra="forbid")

    http: str | None = Field("127.0.0.1:4318", description="OTLP/HTTP listen address host:port; null = off.")
    grpc: str | None = Field("127.0.0.1:4317", description="OTLP/gRPC listen address host:port; null = off.")
    token: Annotated[str | None, CREDENTIAL] = Field(
        None, description="Bearer token exporters must send (Authorization: Bearer …); empty = no auth."
    )
    max_body: Size = Field(64 * 1024**2, gt=0, description="Largest export body after decompression, e.g. 64MiB.")
    max_pending_batches: int = Field(
        32, gt=0, description="Exports received or decoded at once; beyond it the receiver answers 429/RESOURCE_EXHAUSTED."
    )
    retry_after: Duration = Field(1.0, gt=0, description="Retry-After sent with 429 and RESOURCE_EXHAUSTED.")
    body_timeout: Duration = Field(30.0, gt=0, description="Time limit for receiving one export body.")

    @field_validator("token")
    @classmethod
    def _empty_token_is_none(cls, v: str | None) -> str | None:
        return v or None

    @field_validator("http", "grpc")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v.lower() in ("", "none", "off"):
            return None
        split_address(v)
        return v


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:4318"`` → ``("127.0.0.1", 4318)``; ``"[::1]:4318"`` works too."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {address!r}: expected host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class BodyTooLargeError(OtlpDecodeError):
    """The decompressed body exceeds ``max_body``."""


def authorized(header: str | None, token: str | None) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>``."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


_NO_PARENT = otel_context.Context()  # receiver spans are roots: never children of a caller's span


class Ingest:
    """Shared by the HTTP and gRPC receivers: the in-flight bound and decode → buffer."""

    def __init__(self, buffer: TraceBuffer, settings: OtlpSettings,
                 on_spans: Callable[[int, int], None] | None = None, tracer: Tracer | None = None,
                 offload_bytes: int = OFFLOAD_BYTES, on_refused: Callable[[str], None] | None = None) -> None:
        self.buffer = buffer
        self.offload_bytes = offload_bytes
        """Bodies larger than this are decoded in a worker thread."""
        self.settings = settings
        self.on_spans = on_spans
        """Called with (accepted, rejected) span counts of every export (metrics)."""
        self.tracer = tracer
        """The daemon's own tracer: one span per export (exported out, never into this buffer)."""
        self.on_refused = on_refused
        """Called with the reason of every refused export (metrics: ``tracecanary_spans_dropped_total``)."""
        self.pending = 0
        self.throttled_total = 0
        self.exports: Counter[str] = Counter()  # accepted export requests by content type
        self.refused: Counter[str] = Counter()
        """Refused exports by reason: unauthorized, unsupported, throttled, too_large, undecodable,
        timeout, disconnected (their spans were never decoded, so each export counts once)."""

    def refuse(self, reason: str) -> None:
        """Count an export refused before its spans were read."""
        self.refused[reason] += 1
        if self.on_refused is not None:
            self.on_refused(reason)

    def try_acquire(self) -> bool:
        if self.pending >= self.settings.max_pending_batches:
            self.throttled_total += 1
            self.refuse("throttled")
            return False
        self.pending += 1
        return True

    def release(self) -> None:
        self.pending -= 1

    async def ingest(self, body: bytes, content_type: str) -> tuple[int, str]:
        """Decode and buffer; returns (rejected spans, error message). Raises OtlpDecodeError."""
        if self.tracer is None:
            return await self._ingest(body, content_type)
        with self.tracer.start_as_current_span(
            "tracecanary otlp ingest", context=_NO_PARENT,
            attributes={"otlp.content_type": content_type, "otlp.body_bytes": len(body)},
        ) as span:
            rejected, message = await self._ingest(body, content_type)
            span.set_attribute("otlp.rejected_spans", rejected)
            return rejected, message

    async def _ingest(self, body: bytes, content_type: str) -> tuple[int, str]:
        decoded: RawBatch | DecodedBatch
        self.exports[content_type] += 1
        decode = scan_protobuf if content_type == PROTOBUF else decode_json
        if len(body) > self.offload_bytes:
            decoded = await anyio.to_thread.run_sync(decode, body)
        else:
            decoded = decode(body)
        if isinstance(decoded, RawBatch):
            self.buffer.add_batch(decoded)
            if self.on_spans is not None:
                self.on_spans(decoded.span_count - decoded.rejected, decoded.rejected)
            return decoded.rejected, decoded.error_message
        self.buffer.add_spans(decoded.spans)
        if self.on_spans is not None:
            self.on_spans(len(decoded.spans), decoded.rejected)
        if decoded.rejected:
            log.info("otlp partial_success rejected=%d message=%r", decoded.rejected, decoded.error_message)
        return decoded.rejected, decoded.error_message


def _status_body(content_type: str, code: int, message: str) -> bytes:
    if content_type == JSON:
        return json.dumps({"code": code, "message": message}).encode()
    return bytes(status_pb2.Status(code=code, message=message).SerializeToString())


def _error(status: int, content_type: str, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    ctype = content_type if content_type in (PROTOBUF, JSON) else PROTOBUF
    return web.Response(status=status, body=_status_body(ctype, code, message), content_type=ctype, headers=headers)


def _success(content_type: str, rejected: int, message: str) -> web.Response:
    if content_type == JSON:
        doc: dict[str, Any] = {}
        if rejected:
            doc["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": message}
        return web.Response(body=json.dumps(doc).encode(), content_type=JSON)
    resp = ExportTraceServiceResponse()
    if rejected:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    return web.Response(body=resp.SerializeToString(), content_type=PROTOBUF)


async def read_body(request: web.BaseRequest, max_body: int) -> bytes:
    """Read and inflate the body, failing as soon as it grows past ``max_body`` decompressed bytes.

    When aiohttp already inflates the stream (its default), the stream is read as is; our own
    ``AppRunner`` turns that off so that a rejected bomb's remaining compressed bytes are drained
    without being inflated.
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    inflated_by_aiohttp = getattr(request.content, "total_compressed_bytes", None) is not None
    if encoding in ("", "identity") and (request.content_length or 0) > max_body:
        raise BodyTooLargeError(f"body of {request.content_length} bytes exceeds max_body {max_body}")
    inflater = None if inflated_by_aiohttp or encoding in ("", "identity") else _Inflater(encoding, max_body)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        pieces = inflater.feed(chunk) if inflater else (chunk,)
        for piece in pieces:
            size += len(piece)
            if size > max_body:
                raise BodyTooLargeError(f"decompressed body exceeds max_body {max_body} bytes")
            chunks.append(piece)
    if inflater:
        inflater.finish()
    return b"".join(chunks)


class _Inflater:
    """Streaming gzip/deflate with every output piece capped: a bomb never inflates past the cap."""

    _MAX_MEMBERS = 64

    def __init__(self, encoding: str, max_body: int) -> None:
        self.gzip = encoding in ("gzip", "x-gzip")
        self.max_piece = max_body + 1
        self.members = 1
        self.obj: Any = zlib.decompressobj(31) if self.gzip else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.obj is None:  # deflate: zlib-wrapped per RFC 9110, raw deflate accepted too
            self.obj = zlib.decompressobj(15 if data[:1] and data[0] & 0x0F == 8 else -15)
        try:
            while data:
                piece = self.obj.decompress(data, self.max_piece)
                yield piece
                data = self.obj.unconsumed_tail
                if self.obj.eof and self.obj.unused_data and self.gzip:
                    data = self.obj.unused_data  # concatenated gzip members
                    self.members += 1
                    if self.members > self._MAX_MEMBERS:
                        raise OtlpDecodeError(f"more than {self._MAX_MEMBERS} gzip members")
                    self.obj = zlib.decompressobj(31)
        except zlib.error as e:
            raise OtlpDecodeError(f"undecodable {'gzip' if self.gzip else 'deflate'} body: {e}") from e

    def finish(self) -> None:
        if self.obj is None or not self.obj.eof:
            raise OtlpDecodeError("truncated compressed body")


class OtlpHttpHandler:
    """The ``POST /v1/traces`` handler."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.settings = ingest.settings

    async def handle(self, request: web.Request) -> web.Response:
        ctype = request.content_type.lower()
        if not authorized(request.headers.get("Authorization"), self.settings.token):
            self.ingest.refuse("unauthorized")
            return _error(401, ctype, code_pb2.UNAUTHENTICATED, "missing or wrong bearer token")
        if ctype not in (PROTOBUF, JSON):
            self.ingest.refuse("unsupported")
            return _error(415, ctype, code_pb2.INVALID_ARGUMENT,
                          f"unsupported content type {ctype!r}: use {PROTOBUF} or {JSON}")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate", ""):
            self.ingest.refuse("unsupported")
            return _error(415, ctype, code_pb2.INVALID_ARGUMENT, f"unsupported content encoding {encoding!r}")
        if not self.ingest.try_acquire():
            retry = f"{max(1, round(self.settings.retry_after))}"
            return _error(429, ctype, code_pb2.RESOURCE_EXHAUSTED, "ingest backlog full, retry later",
                          headers={"Retry-After": retry})
        try:
            return await self._receive(request, ctype)
        finally:
            self.ingest.release()

    async def _receive(self, request: web.Request, ctype: str) -> web.Response:
        try:
            with anyio.fail_after(self.settings.body_timeout):
                body = await read_body(request, self.settings.max_body)
            rejected, message = await self.ingest.ingest(body, ctype)
        except BodyTooLargeError as e:
            self.ingest.refuse("too_large")
            log.warning("otlp body too large peer=%s error=%r", request.remote, str(e))
            return _error(413, ctype, code_pb2.INVALID_ARGUMENT, str(e), headers={"Connection": "close"})
        except OtlpDecodeError as e:
            self.ingest.refuse("undecodable")
            log.info("otlp bad request peer=%s error=%r", request.remote, str(e))
            return _error(400, ctype, code_pb2.INVALID_ARGUMENT, str(e))
        except TimeoutError:
            self.ingest.refuse("timeout")
            log.info("otlp body not received in time peer=%s timeout_s=%g", request.remote, self.settings.body_timeout)
            return _error(408, ctype, code_pb2.DEADLINE_EXCEEDED, "export body not received in time")
        except RequestPayloadError as e:  # broken gzip/deflate stream
            self.ingest.refuse("undecodable")
            return _error(400, ctype, code_pb2.INVALID_ARGUMENT, f"undecodable body: {str(e).strip()}",
                          headers={"Connection": "close"})
        except ConnectionError as e:
            # The exporter went away mid-body (crash, timeout on its side): routine, and nobody reads a reply.
            self.ingest.refuse("disconnected")
            log.debug("otlp client disconnected mid-body peer=%s error=%r", request.remote, str(e))
            return _error(400, ctype, code_pb2.CANCELLED, "client disconnected")
        return _success(ctype, rejected, message)


def otlp_routes(buffer: TraceBuffer, settings: OtlpSettings, ingest: Ingest | None = None) -> list[web.RouteDef]:
    """Routes serving ``POST /v1/traces`` (mount on any aiohttp app)."""
    return [web.post("/v1/traces", OtlpHttpHandler(ingest or Ingest(buffer, settings)).handle)]


def make_otlp_app(buffer: TraceBuffer, settings: OtlpSettings, ingest: Ingest | None = None) -> web.Application:
    """A stand-alone aiohttp app serving only the OTLP routes."""
    app = web.Application(client_max_size=settings.max_body)
    app.add_routes(otlp_routes(buffer, settings, ingest))
    return app


async def serve_otlp_http(
    buffer: TraceBuffer,
    settings: OtlpSettings,
    *,
    ingest: Ingest | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve OTLP/HTTP on ``settings.http`` until cancelled; reports the bound port as started."""
    if settings.http is None:
        raise StartupError("otlp http receiver is disabled (daemon.otlp.http is null)")
    host, port = split_address(settings.http)
    runner = web.AppRunner(make_otlp_app(buffer, settings, ingest), access_log=None, auto_decompress=False)
    await runner.setup()
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise StartupError(f"otlp http: cannot listen on {settings.http}: {e.strerror or e}") from e
        site = web.SockSite(runner, sock)
        await site.start()
        bound = sock.getsockname()
        log.info("otlp http listening address=%s:%d", bound[0], bound[1])
        task_status.started(int(bound[1]))
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
