"""The grpc probe: one unary gRPC call carrying the run's trace context in its metadata.

The ``.proto`` (inline ``proto:`` or ``proto_file:``) is compiled when the config loads
(``probes/grpc_proto.py``): a syntax error, an unknown service or method, a streaming method or a
request that does not fit its message is a config error at its line. Each run opens a channel
(``grpc.aio``), sends the request with ``traceparent``/``tracestate``/``baggage``/``sentry-trace`` and
the configured metadata, under a deadline of the run's remaining time (or ``timeout``), and records the
response as JSON for ``expect.response``: ``status`` is a gRPC code (``OK``, ``NOT_FOUND`` or its
number), ``json``/``json_fields`` read the response message, ``headers`` the response metadata.
A call that never reached the service (``UNAVAILABLE``: nothing listens, TLS failed) or met the deadline
ends the run in ``error`` like an HTTP connection error, unless ``expect.response.status`` names that code.
"""

from __future__ import annotations

import json as jsonlib
import re
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import grpc
import grpc.aio
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from opentelemetry import trace as otel_trace
from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails

from tracecanary.assertions.response import ResponseExpectation
from tracecanary.assertions.units import Duration
from tracecanary.errors import ProbeError
from tracecanary.model import HEADERS_CREDENTIAL, StrictModel, cross_field_rule
from tracecanary.probes.base import Expect, FireResult, ProbeContext, ProbeSpec, ResponseSummary
from tracecanary.probes.grpc_proto import (
    ProtoError,
    check_message,
    compile_proto,
    message_class,
    to_dict,
    to_message,
)

CODES: dict[str, int] = {c.name: int(c.value[0]) for c in grpc.StatusCode}
"""gRPC status codes by name (``OK`` 0 … ``UNAUTHENTICATED`` 16)."""
NAMES = {v: k for k, v in CODES.items()}
TRANSPORT = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
"""Codes that mean the call did not get an answer from the service: an ``error`` run unless expected."""
MAX_MESSAGE_BYTES = 4 << 20
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")


def _code(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in NAMES:
        return value
    if isinstance(value, str) and value.strip().upper() in CODES:
        return CODES[value.strip().upper()]
    raise ValueError(f"invalid gRPC status {value!r}: expected a code name (OK, NOT_FOUND, …) or 0-16")


class GrpcResponseExpectation(ResponseExpectation):
    """What the call's response must be: ``status`` is a gRPC code (default ``OK``); ``json``/``json_fields``
    read the response message as JSON; ``headers`` the response metadata; ``body`` its JSON text (or the
    status message when the call failed)."""

    status: int | str | list[int | str] | None = Field(  # type: ignore[assignment]  # gRPC codes take names in lists too
        "OK", description="A gRPC status: OK, a code name (NOT_FOUND) or number (5), or a list of them.")

    @field_validator("status")
    @classmethod
    def _status(cls, value: Any) -> Any:
        for v in value if isinstance(value, list) else [value]:
            _code(v)
        return value

    def _codes(self) -> list[int]:
        return [_code(v) for v in (self.status if isinstance(self.status, list) else [self.status or "OK"])]

    def status_holds(self, status: int) -> bool:
        return status in self._codes()

    def describe_status(self) -> str:
        return " or ".join(NAMES[c] for c in self._codes())

    def show_status(self, status: int) -> str:
        return f"{NAMES.get(status, 'UNKNOWN')} ({status})"


class GrpcExpect(Expect):
    """``expect`` of a grpc probe: ``response`` holds gRPC statuses (default: ``status: OK``)."""

    response: GrpcResponseExpectation | None = Field(default_factory=GrpcResponseExpectation)

    @field_validator("response")
    @classmethod
    def _default(cls, value: GrpcResponseExpectation | None) -> GrpcResponseExpectation:
        return value if value is not None else GrpcResponseExpectation()


class GrpcTls(StrictModel):
    """TLS to the server: the CA bundle to trust (default: the system's roots) and the name to verify."""

    ca_file: str | None = Field(None, description="PEM CA bundle (path relative to the config file).")
    server_name: str | None = Field(None, description="Name the certificate must carry (default: the host).")


def _one_proto(raw: Any) -> str | None:
    given = [k for k in ("proto", "proto_file") if raw.get(k) is not None]
    return None if len(given) == 1 else "request takes exactly one of proto, proto_file"


class GrpcRequest(StrictModel):
    """The call to make; ``message`` and ``metadata`` values may hold ``{{ }}`` templates rendered per run."""

    address: str = Field(description="host:port of the server (templated).")
    method: str = Field(description="pkg.Service/Method (Tracetest's pkg.Service.Method is read too); unary only.")
    proto: str | None = Field(None, description="The .proto source, inline (compiled at load).")
    proto_file: str | None = Field(None, description="A .proto file, relative to the config file (its folder "
                                   "is searched for imports); compiled at load.")
    message: dict[str, Any] | str = Field(default_factory=dict, description="The request message in protobuf's "
                                          "JSON mapping: an object, or a JSON string (templated).")
    metadata: Annotated[dict[str, str], HEADERS_CREDENTIAL] = Field(
        default_factory=dict, description="Request metadata (templated; keys lowercase); values are masked like "
        "credentials. Trace headers are added.")
    tls: bool | GrpcTls = Field(False, description="false: plaintext; true: TLS with the system's roots; or "
                                "{ca_file, server_name}.")
    authority: str | None = Field(None, description="The :authority the call carries (default: the address).")
    timeout: Duration | None = Field(None, description="Call deadline (default: the run's remaining time).")

    _one = cross_field_rule(_one_proto)
    _method: MethodDescriptor | None = PrivateAttr(None)
    _folder: Path | None = PrivateAttr(None)

    @field_validator("metadata")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _METADATA_KEY.fullmatch(key.lower()) or key.lower().endswith("-bin"):
                raise ValueError(f"invalid metadata key {key!r}: use letters, digits, '-', '_', '.' (binary "
                                 "'-bin' keys are not supported)")
        return value

    @model_validator(mode="after")
    def _compile(self, info: ValidationInfo) -> GrpcRequest:
        config_path = (info.context or {}).get("config_path") if isinstance(info.context, dict) else None
        folder = Path(str(config_path)).parent if config_path else Path.cwd()
        self._folder = folder
        try:
            if self.proto_file is not None:
                path = folder / self.proto_file
                try:
                    source = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise _at("proto_file", self.proto_file, f"cannot read {path}: {getattr(e, 'strerror', None) or e}"
                              ) from None
                schema = compile_proto(source, path=path)
            else:
                schema = compile_proto(self.proto or "", include=folder)
        except ProtoError as e:
            raise _at("proto_file" if self.proto_file is not None else "proto", None, str(e)) from None
        try:
            self._method = schema.unary(self.method)
        except ProtoError as e:
            raise _at("method", self.method, str(e)) from None
        try:
            check_message(self.message, message_class(self._method.input_type))
        except ProtoError as e:
            raise _at("message", None, f"does not fit {self._method.input_type.full_name}: {e}") from None
        return self

    @property
    def path(self) -> str:
        """The call's path, ``/pkg.Service/Method``."""
        assert self._method is not None
        return f"/{self._method.containing_service.full_name}/{self._method.name}"

    def request_message(self, ctx: ProbeContext) -> Message:
        """The request rendered for this run; ProbeError when it no longer fits the message."""
        assert self._method is not None
        if isinstance(self.message, str):
            text = str(ctx.render(self.message))
            try:
                value = jsonlib.loads(text)
            except ValueError as e:
                raise ProbeError(f"grpc {self.path}: message is not JSON once rendered: {e}") from e
        else:
            value = ctx.templates.render_native(self.message, ctx.template_vars())
        try:
            return to_message(value, message_class(self._method.input_type))
        except ProtoError as e:
            raise ProbeError(f"grpc {self.path}: message does not fit {self._method.input_type.full_name}: {e}"
                             ) from e

    def channel(self, address: str) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if self.authority:
            options.append(("grpc.default_authority", self.authority))
        if self.tls is False:
            return grpc.aio.insecure_channel(address, options=options)
        roots = None
        if isinstance(self.tls, GrpcTls):
            if self.tls.ca_file:
                try:
                    roots = ((self._folder or Path.cwd()) / self.tls.ca_file).read_bytes()
                except OSError as e:
                    raise ProbeError(f"grpc {address}: cannot read tls.ca_file: {e.strerror or e}") from e
            if self.tls.server_name:
                options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots), options=options)


def _at(field: str, value: Any, message: str) -> ValidationError:
    """A config error located at ``request.<field>``."""
    detail: InitErrorDetails = {"type": "value_error", "loc": (field,), "input": value,
                                "ctx": {"error": ValueError(message)}}
    return ValidationError.from_exception_data("GrpcRequest", [detail])


def _metadata(pairs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs or ():
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        out[str(key)] = f"{out[str(key)]}, {text}" if str(key) in out else text
    return out


def _record_status(span_id: str, code: grpc.StatusCode, details: str) -> None:
    """``rpc.grpc.status_code`` (and an error status) on our client span, as OTel's gRPC conventions put
    it there: a Tracetest-style selector on ``rpc.*`` attributes selects that span too."""
    span = otel_trace.get_current_span()
    if format(span.get_span_context().span_id, "016x") != span_id:
        return  # no tracer in this context: no span of ours
    span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
    if code is not grpc.StatusCode.OK:
        span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, f"{code.name}: {details}"))


class GrpcProbe(ProbeSpec):
    """Make one unary gRPC call and judge its status, response, trace and side effects."""

    kind: Literal["grpc"] = "grpc"
    request: GrpcRequest = Field(description="The call to make.")
    expect: GrpcExpect = Field(default_factory=GrpcExpect)

    async def fire(self, ctx: ProbeContext) -> FireResult:
        req = self.request
        address = str(ctx.render(req.address))
        message = req.request_message(ctx)
        assert req._method is not None
        service, name = req._method.containing_service.full_name, req._method.name
        limit_s = ctx.remaining_s() if req.timeout is None else min(req.timeout, ctx.remaining_s())
        output = message_class(req._method.output_type)
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name, "server.address": address}
        with ctx.client_span(f"{service}/{name}", "client", **attributes) as sid:
            metadata = ctx.with_trace_headers({k.lower(): v for k, v in ctx.render(dict(req.metadata)).items()}, sid)
            ctx.log("grpc call", address=address, method=req.path, bytes=message.ByteSize())
            t0 = time.perf_counter()
            async with req.channel(address) as channel:
                stub = channel.unary_unary(req.path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=output.FromString)
                call = stub(message, timeout=max(0.001, limit_s), metadata=tuple(metadata.items()))
                try:
                    with anyio.fail_after(max(0.001, limit_s) + 1.0):  # grpc's own deadline fires first
                        reply: Message | None = await call
                        code, details = grpc.StatusCode.OK, ""
                        initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
                except grpc.aio.AioRpcError as e:
                    reply, code, details = None, e.code(), e.details() or ""
                    initial, trailing = e.initial_metadata(), e.trailing_metadata()
                except TimeoutError as e:
                    raise ProbeError(f"grpc {address} {req.path}: no response within {limit_s:.3g}s") from e
            _record_status(sid, code, details)
            latency_s = time.perf_counter() - t0
        status = int(code.value[0])
        self._transport_error(code, address, req.path, details, limit_s)
        body = to_dict(reply) if reply is not None else None
        summary = ResponseSummary(
            status=status, headers={**_metadata(initial), **_metadata(trailing)},
            body_text=jsonlib.dumps(body, ensure_ascii=False) if body is not None else details, json=body,
            latency_s=latency_s, method=req.path.lstrip("/"), url=f"grpc://{address}")
        ctx.log("grpc response", status=code.name, latency_s=round(latency_s, 4))
        return FireResult(response=summary)

    def _transport_error(self, code: grpc.StatusCode, address: str, path: str, details: str, limit_s: float) -> None:
        """A call that never reached the service ends the run in error (unless that code is expected)."""
        expected = self.expect.response.status_holds(int(code.value[0])) if self.expect.response else False
        if code.name not in TRANSPORT or expected:
            return
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise ProbeError(f"grpc {address} {path}: DEADLINE_EXCEEDED: no response within {limit_s:.3g}s")
        raise ProbeError(f"grpc {address} {path}: {code.name}: {details or 'the service is unreachable'}")
