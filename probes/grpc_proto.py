"""The grpc probe's schema: a ``.proto`` compiled once at config load, its unary methods and message classes.

protoc (grpcio-tools' ``grpc_tools.protoc``, with its bundled well-known types such as
``google/protobuf/timestamp.proto``) writes a ``FileDescriptorSet`` into a temporary directory; the set is
loaded into a private ``DescriptorPool`` (never the process-wide default pool: two probes may define the
same message names differently) and message classes come from ``message_factory``. protoc runs as a child
process so its diagnostics (``file:line:col: message``) are read from its stderr instead of this process's
file descriptor 2. Compiled schemas are cached by source text: a reload with unchanged protos compiles nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

PROTOC_TIMEOUT_S = 60.0
INLINE_NAME = "inline.proto"
"""The name an inline ``proto:`` is compiled under (protoc's messages name it ``proto line N``)."""
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)


class ProtoError(ValueError):
    """A proto that does not compile, a method it lacks, or a message that does not fit it."""


def _well_known_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).resolve().parent / "_proto")


@lru_cache(maxsize=64)
def _descriptor_set(source: str, name: str, include: str, label: str) -> bytes:
    """protoc over ``source`` (saved as ``name``) → a serialized FileDescriptorSet with its imports."""
    with tempfile.TemporaryDirectory(prefix="tracecanary-proto-") as tmp:
        (Path(tmp) / name).write_text(source, encoding="utf-8")
        out = Path(tmp) / "set.pb"
        args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp}", f"-I{_well_known_include()}",
                "--include_imports", f"--descriptor_set_out={out}", name]
        if include:
            args.insert(4, f"-I{include}")
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=PROTOC_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as e:
            raise ProtoError(f"protoc did not finish within {PROTOC_TIMEOUT_S:g}s") from e
        if proc.returncode != 0:
            raise ProtoError(_diagnostics(proc.stderr, name, label))
        return out.read_bytes()


def _diagnostics(stderr: str, name: str, label: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    shown = [re.sub(rf"^(?:.*/)?{re.escape(name)}:(\d+):(\d+):", lambda m: f"{label}{m[1]}:{m[2]}:", line)
             for line in lines[:5]]
    return "; ".join(shown) or "protoc failed without a message"


@dataclass(frozen=True)
class ProtoSchema:
    """Every service and message one compiled ``.proto`` (and its imports) defines."""

    pool: descriptor_pool.DescriptorPool
    services: tuple[str, ...]

    def unary(self, method: str) -> MethodDescriptor:
        """``pkg.Service/Method`` or Tracetest's ``pkg.Service.Method`` → the method; ProtoError unless it
        exists and is unary (neither side streams)."""
        service_name, sep, method_name = method.rpartition("/")
        if not sep:
            service_name, _, method_name = method.rpartition(".")
        if not service_name or not method_name:
            raise ProtoError(f"method {method!r}: expected pkg.Service/Method")
        try:
            service = self.pool.FindServiceByName(service_name)
        except KeyError:
            raise ProtoError(f"unknown service {service_name!r} (the proto defines: "
                             f"{', '.join(self.services) or 'no service'})") from None
        found = service.methods_by_name.get(method_name)
        if found is None:
            raise ProtoError(f"service {service_name} has no method {method_name!r} (it has: "
                             f"{', '.join(m.name for m in service.methods)})")
        if found.client_streaming or found.server_streaming:
            sides = " and ".join(s for s, on in (("client", found.client_streaming),
                                                  ("server", found.server_streaming)) if on)
            raise ProtoError(f"{service_name}/{method_name} is {sides} streaming: the grpc probe makes unary "
                             "calls only (one request, one response)")
        return found


def compile_proto(source: str, *, path: Path | None = None, include: Path | None = None) -> ProtoSchema:
    """Compile ``source`` (read from ``path``, or inline); ``include`` (default: ``path``'s folder) is searched
    for its ``import``s. Raises ProtoError with protoc's words, located ``path:line:col`` or ``line L:C``."""
    name, label = (path.name, f"{path}:") if path is not None else (INLINE_NAME, "proto line ")
    folder = include if include is not None else path.parent if path is not None else None
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        _descriptor_set(source, name, str(folder.resolve()) if folder is not None else "", label))
    pool = descriptor_pool.DescriptorPool()
    services: list[str] = []
    for f in fds.file:
        pool.Add(f)
        services += [f"{f.package}.{s.name}" if f.package else s.name for s in f.service]
    return ProtoSchema(pool, tuple(services))


def message_class(descriptor: Any) -> type[Message]:
    """The message class of a descriptor from a :class:`ProtoSchema`'s pool."""
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


def to_message(value: Any, cls: type[Message]) -> Message:
    """A JSON value (protobuf's JSON mapping: lowerCamelCase or proto names) as a ``cls`` message."""
    if not isinstance(value, dict):
        raise ProtoError(f"expected a JSON object for {cls.DESCRIPTOR.full_name}, got {type(value).__name__}")
    try:
        return json_format.ParseDict(value, cls())
    except json_format.ParseError as e:
        raise ProtoError(" ".join(str(e).split())) from e


def to_dict(message: Message) -> dict[str, Any]:
    """A response as JSON (lowerCamelCase names, fields without presence shown with their defaults, like
    Tracetest's and grpcurl's output)."""
    out: dict[str, Any] = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return out


def check_message(value: Any, cls: type[Message]) -> None:
    """At load: whether the configured request fits ``cls`` — field names always, values where no ``{{ }}``
    template decides them (a templated value is checked when the run renders it)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(_TEMPLATE.sub("0", value))
        except ValueError as e:
            raise ProtoError(f"message is not JSON: {e}") from e
        to_message(_untemplated(parsed, every_leaf=_TEMPLATE.search(value) is not None), cls)
    else:
        to_message(_untemplated(value, every_leaf=False), cls)


def _untemplated(value: Any, *, every_leaf: bool) -> Any:
    """``value`` with templated leaves (or every leaf) as null: protobuf's JSON reads null as "not set"."""
    if isinstance(value, dict):
        return {k: _untemplated(v, every_leaf=every_leaf) for k, v in value.items()}
    if isinstance(value, list):
        items = [_untemplated(v, every_leaf=every_leaf) for v in value]
        return [] if any(v is None for v in items) else items
    if every_leaf or (isinstance(value, str) and _TEMPLATE.search(value)):
        return None
    return value


__all__ = ["ProtoError", "ProtoSchema", "check_message", "compile_proto", "message_class", "to_dict", "to_message"]
