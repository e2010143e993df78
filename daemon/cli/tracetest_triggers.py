"""Tracetest triggers → a probe's kind and trigger fields (see ``tracetest_import.py`` for the mapping)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Protocol

from tracecanary.daemon.cli.tracetest_docs import LList, LMap, line_of
from tracecanary.errors import TracecanaryError
from tracecanary.probes.grpc_proto import ProtoError, check_message, compile_proto, message_class

UNSUPPORTED = {
    "traceid": "a traceid trigger judges a trace some other tool started; tracecanary starts its own",
    "cypress": "browser tests trigger from the browser, not from tracecanary",
    "playwright": "browser tests trigger from the browser, not from tracecanary",
    "playwrightengine": "browser tests trigger from the browser, not from tracecanary",
    "k6": "load tests trigger from k6, not from tracecanary",
    "artillery": "load tests trigger from Artillery, not from tracecanary",
}


class TriggerError(TracecanaryError):
    """A trigger that cannot become a probe; ``line`` is where it is."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class Texts(Protocol):
    """Rewrites a string's variables (``${var:X}`` → ``${X}``), or notes it and returns None."""

    def text(self, value: str, path: Path, line: int, what: str) -> str | None: ...

    def omit(self, path: Path, line: int, why: str) -> None: ...


def _text(conv: Texts, value: Any, path: Path, line: int, what: str) -> str:
    out = conv.text(str(value), path, line, what)
    if out is None:
        raise TriggerError(f"{what} holds a Tracetest expression", line)
    return out


def _headers(conv: Texts, raw: Any, path: Path, line: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for i, h in enumerate(raw or ()):
        where = raw.line_of(i) if isinstance(raw, LList) else line
        if isinstance(h, LMap) and h.get("key"):
            headers[str(h["key"])] = _text(conv, h.get("value", ""), path, where, f"header {h['key']}")
    return headers


def _auth(conv: Texts, auth: Any, path: Path, line: int, request: dict[str, Any]) -> None:
    if not isinstance(auth, LMap) or not auth.get("type"):
        return
    kind, where = str(auth["type"]), line_of(auth, line)
    found = auth.get(kind)
    body: LMap = found if isinstance(found, LMap) else LMap()
    if kind == "basic":
        request["auth"] = {"basic": {"username": _text(conv, body.get("username", ""), path, where, "username"),
                                     "password": _text(conv, body.get("password", ""), path, where, "password")}}
    elif kind == "bearer":
        request["auth"] = {"bearer": _text(conv, body.get("token", ""), path, where, "bearer token")}
    elif kind == "apiKey":
        target = "query" if body.get("in") == "query" else "headers"
        request.setdefault(target, {})[str(body.get("key"))] = _text(conv, body.get("value", ""), path, where, "apiKey")
    else:
        conv.omit(path, where, f"auth type {kind!r} is not converted")


def _http(conv: Texts, req: LMap, path: Path) -> dict[str, Any]:
    line = req.line
    if not req.get("url"):
        raise TriggerError("httpRequest without url", line)
    request: dict[str, Any] = {"method": str(req.get("method") or "GET").upper(),
                               "url": _text(conv, req["url"], path, req.line_of("url"), "url")}
    headers = _headers(conv, req.get("headers"), path, req.line_of("headers"))
    if headers:
        request["headers"] = headers
    if req.get("body"):
        request["body"] = _text(conv, req["body"], path, req.line_of("body"), "body")
    _auth(conv, req.get("auth"), path, req.line_of("auth"), request)
    if req.get("sslVerification") is False:
        request["verify_tls"] = False
    return {"kind": "http", "request": request}


def _graphql(conv: Texts, req: LMap, path: Path) -> dict[str, Any]:
    found = req.get("body")
    body: LMap = found if isinstance(found, LMap) else LMap()
    doc = {k: body[k] for k in ("query", "variables", "operationName") if body.get(k) is not None}
    text = LMap({"url": req.get("url"), "method": "POST", "headers": req.get("headers"), "auth": req.get("auth"),
                 "sslVerification": req.get("sslVerification"), "body": json.dumps(doc)})
    text.line, text.lines = req.line, dict(req.lines)
    probe = _http(conv, text, path)
    headers = probe["request"].setdefault("headers", {})
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    return probe


def _kafka(conv: Texts, req: LMap, path: Path) -> dict[str, Any]:
    line = req.line
    if not req.get("topic"):
        raise TriggerError("kafka trigger without topic", line)
    message: dict[str, Any] = {"topic": _text(conv, req["topic"], path, req.line_of("topic"), "topic")}
    brokers = [str(b) for b in req.get("brokerUrls") or ()]
    if brokers:
        message["bootstrap"] = _text(conv, ",".join(brokers), path, req.line_of("brokerUrls"), "brokerUrls")
    if req.get("messageKey") is not None:
        message["key"] = _text(conv, req["messageKey"], path, req.line_of("messageKey"), "messageKey")
    if req.get("messageValue") is not None:
        message["value"] = _text(conv, req["messageValue"], path, req.line_of("messageValue"), "messageValue")
    headers = _headers(conv, req.get("headers"), path, req.line_of("headers"))
    if headers:
        message["headers"] = headers
    authentication = req.get("authentication")
    if isinstance(authentication, LMap) and authentication.get("type"):
        conv.omit(path, req.line_of("authentication"),
                  "kafka authentication is not converted (the kafka probe connects without SASL)")
    if req.get("sslVerification"):
        conv.omit(path, req.line_of("sslVerification"), "kafka sslVerification is not converted (no TLS in the kafka probe)")
    return {"kind": "kafka", "message": message}


def _proto(conv: Texts, req: LMap, path: Path) -> dict[str, str]:
    """``protobufFile`` is the .proto text, or (as the Tracetest CLI reads it) a file next to the test: its
    text is inlined, so the suite needs nothing beside it."""
    raw, line = str(req.get("protobufFile") or ""), req.line_of("protobufFile")
    if not raw.strip():
        raise TriggerError("grpc trigger without protobufFile", line)
    if "\n" not in raw.strip() and raw.strip().endswith(".proto"):
        target = path.parent / raw.strip()
        try:
            raw = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TriggerError(f"protobufFile {raw.strip()!r}: cannot read {target}: "
                               f"{getattr(e, 'strerror', None) or e}", line) from None
    return {"proto": _text(conv, raw, path, line, "protobufFile")}


def _grpc_auth(conv: Texts, auth: Any, path: Path, line: int, metadata: dict[str, str]) -> None:
    """Tracetest documents ``auth`` on gRPC triggers as on HTTP ones (its agent sends none of it:
    ``AuthenticateGRPC`` is a no-op there); here it becomes metadata, as a gRPC server reads credentials."""
    if not isinstance(auth, LMap) or not auth.get("type"):
        return
    kind, where = str(auth["type"]), line_of(auth, line)
    found = auth.get(kind)
    body: LMap = found if isinstance(found, LMap) else LMap()
    if kind == "bearer":
        metadata["authorization"] = "Bearer " + _text(conv, body.get("token", body.get("bearer", "")), path, where,
                                                      "bearer token")
    elif kind == "apiKey" and body.get("in") != "query":
        metadata[str(body.get("key")).lower()] = _text(conv, body.get("value", ""), path, where, "apiKey")
    elif kind == "basic" and "${" not in f"{body.get('username', '')}{body.get('password', '')}":
        pair = f"{body.get('username', body.get('user', ''))}:{body.get('password', '')}"
        metadata["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        why = {"apiKey": "an apiKey in the query has no place in a gRPC call",
               "basic": "basic credentials from variables cannot be encoded at import (set an authorization "
                        "metadata entry)"}.get(kind, f"auth type {kind!r} is not converted")
        conv.omit(path, where, why)


def _callable(request: dict[str, Any], req: LMap) -> None:
    """The grpc probe compiles the proto at load: a test whose method is streaming or missing, or whose
    request does not fit, is listed here rather than written into a suite that will not load."""
    try:
        method = compile_proto(request["proto"]).unary(request["method"])
        if "${" not in json.dumps(request.get("message", {})):
            check_message(request.get("message", {}), message_class(method.input_type))
    except ProtoError as e:
        where = req.line_of("protobufFile") if "proto line" in str(e) else req.line_of("method")
        raise TriggerError(str(e), where) from None


def _grpc(conv: Texts, req: LMap, path: Path) -> dict[str, Any]:
    line = req.line
    if not req.get("address") or not req.get("method"):
        raise TriggerError("grpc trigger without address or method", line)
    method = str(req["method"])
    if "." not in method and "/" not in method and req.get("service"):
        method = f"{req['service']}/{method}"  # older tests name the service apart
    request: dict[str, Any] = {"address": _text(conv, req["address"], path, req.line_of("address"), "address"),
                               "method": method, **_proto(conv, req, path)}
    if str(req.get("request") or "").strip():
        text = _text(conv, req["request"], path, req.line_of("request"), "request")
        try:
            request["message"] = json.loads(text)
        except ValueError:
            request["message"] = text  # a ${VAR} stands for a number: JSON once the suite loads
    _callable(request, req)
    metadata = {k.lower(): v for k, v in _headers(conv, req.get("metadata"), path, req.line_of("metadata")).items()}
    _grpc_auth(conv, req.get("auth"), path, req.line_of("auth"), metadata)
    if metadata:
        request["metadata"] = metadata
    return {"kind": "grpc", "request": request}


def convert_trigger(spec: LMap, path: Path, conv: Texts) -> dict[str, Any]:
    """``{kind, request|message}`` for a test's trigger; raises :class:`TriggerError` when it cannot be one."""
    trigger = spec.get("trigger")
    line = spec.line_of("trigger")
    if not isinstance(trigger, LMap):
        raise TriggerError("no trigger", line)
    kind = str(trigger.get("type") or "")
    if kind in UNSUPPORTED:
        raise TriggerError(f"trigger type {kind}: {UNSUPPORTED[kind]}", trigger.line_of("type"))
    fields = {"http": ("httpRequest", _http), "graphql": ("graphql", _graphql), "kafka": ("kafka", _kafka),
              "grpc": ("grpc", _grpc)}
    if kind not in fields:
        raise TriggerError(f"unknown trigger type {kind!r}", trigger.line_of("type"))
    key, convert = fields[kind]
    body = trigger.get(key)
    if not isinstance(body, LMap):
        raise TriggerError(f"trigger type {kind} without {key}", trigger.line)
    return convert(conv, body, path)


__all__ = ["UNSUPPORTED", "TriggerError", "convert_trigger"]
