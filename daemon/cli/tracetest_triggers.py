"""Tracetest triggers → a probe's kind and trigger fields (see ``tracetest_import.py`` for the mapping)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from tracecanary.daemon.cli.tracetest_docs import LList, LMap, line_of
from tracecanary.errors import TracecanaryError

UNSUPPORTED = {
    "grpc": "tracecanary has no gRPC probe kind",
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


def convert_trigger(spec: LMap, path: Path, conv: Texts) -> dict[str, Any]:
    """``{kind, request|message}`` for a test's trigger; raises :class:`TriggerError` when it cannot be one."""
    trigger = spec.get("trigger")
    line = spec.line_of("trigger")
    if not isinstance(trigger, LMap):
        raise TriggerError("no trigger", line)
    kind = str(trigger.get("type") or "")
    if kind in UNSUPPORTED:
        raise TriggerError(f"trigger type {kind}: {UNSUPPORTED[kind]}", trigger.line_of("type"))
    fields = {"http": ("httpRequest", _http), "graphql": ("graphql", _graphql), "kafka": ("kafka", _kafka)}
    if kind not in fields:
        raise TriggerError(f"unknown trigger type {kind!r}", trigger.line_of("type"))
    key, convert = fields[kind]
    body = trigger.get(key)
    if not isinstance(body, LMap):
        raise TriggerError(f"trigger type {kind} without {key}", trigger.line)
    return convert(conv, body, path)


__all__ = ["UNSUPPORTED", "TriggerError", "convert_trigger"]
