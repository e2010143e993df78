"""The process's own output: log lines as text for people or as JSON objects for log shippers.

``setup_logging(level, fmt)`` puts one handler on the root logger, writing to stderr. With ``json``
every line is one JSON object, whatever wrote it: tracecanary's loggers and third-party ones
(aiohttp, aiokafka, sentry-sdk …), the daemon's access log (:class:`AccessLog`), warnings (the
``warnings`` module, captured into the ``py.warnings`` logger), and uncaught exceptions (the
``sys``, ``threading`` and unraisable hooks log them with their traceback in the ``exception`` field;
an anyio task group's errors arrive as one exception group). A record's ``fields`` extra (a dict)
adds keys to the object; the text format appends them as ``key=value``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

LogFormat = Literal["text", "json"]
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
_BASE_KEYS = ("time", "level", "logger", "message")
log = logging.getLogger("tracecanary.process")


def parse_level(name: str) -> int:
    """``--log-level``'s value (any case) as a logging level; ValueError names the accepted ones."""
    level = LEVELS.get(name.strip().lower())
    if level is None:
        raise ValueError(f"unknown log level {name!r}: expected one of {', '.join(LEVELS)}")
    return level


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = record.__dict__.get("fields")
    return fields if isinstance(fields, Mapping) else {}


def _kv(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' ="\n') else text


class TextFormatter(logging.Formatter):
    """``time level logger message``, then the record's ``fields`` as key=value, then ``trace_id=…`` when
    the record was logged inside a run."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{k}={_kv(v)}" for k, v in _fields(record).items())
        if extra:
            head, sep, tail = text.partition("\n")  # after the message, before a traceback
            text = f"{head} {extra}{sep}{tail}"
        trace_id = record.__dict__.get("trace_id", "")
        return f"{text} trace_id={trace_id}" if trace_id else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, RFC 3339 with ms), ``level``, ``logger``,
    ``message``, ``trace_id``/``span_id`` inside a run, the record's ``fields``, ``exception`` and ``stack``
    (tracebacks as text with escaped newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                               "logger": record.name, "message": record.getMessage().rstrip("\n")}
        for key in ("trace_id", "span_id"):
            if value := record.__dict__.get(key):
                out[key] = value
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info and not record.exc_text:  # the secrets filter may have set (and masked) it
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def is_json(logger: logging.Logger | None = None) -> bool:
    """Whether the root logger (or ``logger``) writes JSON lines."""
    return any(isinstance(h.formatter, JsonFormatter) for h in (logger or logging.getLogger()).handlers)


def setup_logging(level: int, fmt: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """One stderr handler on the root logger (replacing any), warnings and uncaught exceptions routed
    through it. Idempotent; returns the handler."""
    from tracecanary.daemon.observe.telemetry import TraceContextFilter

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    if fmt == "json":
        sys.excepthook = _excepthook
        threading.excepthook = _thread_excepthook
        sys.unraisablehook = _unraisablehook
    else:
        sys.excepthook, threading.excepthook = sys.__excepthook__, threading.__excepthook__
        sys.unraisablehook = sys.__unraisablehook__
    return handler


def log_uncaught(exc: BaseException, *, where: str = "") -> None:
    """An exception nothing handled, logged with its traceback (as one JSON object in json format)."""
    info = (type(exc), exc, exc.__traceback__)
    log.critical("uncaught exception%s: %s: %s", f" in {where}" if where else "", type(exc).__name__, exc,
                 exc_info=info)


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    log_uncaught(exc.with_traceback(tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
        log_uncaught(args.exc_value, where=f"thread {args.thread.name if args.thread else '?'}")


def _unraisablehook(args: Any) -> None:  # sys.UnraisableHookArgs is not importable at run time
    exc = args.exc_value
    what = f"{args.err_msg or 'exception ignored'}: {args.object!r}"
    if exc is None:
        log.error("%s", what)
    else:
        log.error("%s: %s: %s", what, type(exc).__name__, exc, exc_info=(type(exc), exc, exc.__traceback__))


class AccessLog(AbstractAccessLogger):
    """aiohttp's access log as one structured line per request (``request method=… path=… status=…
    bytes=… duration_ms=… remote=…``). Reads and OTLP exports that succeed go out at debug (scrapes,
    health checks, dashboard polling and span exports would drown the rest); other writes (run now,
    silences …) and every response >= 400 at info. The query string is left out (it may carry a token)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        quiet = response.status < 400 and (request.method in ("GET", "HEAD", "OPTIONS")
                                            or request.path.startswith("/v1/"))  # OTLP exports
        level = logging.DEBUG if quiet else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        fields = {"method": request.method, "path": request.path, "status": response.status,
                  "bytes": response.body_length, "duration_ms": round(time * 1000, 1),
                  "remote": request.remote or ""}
        self.logger.log(level, "request", extra={"fields": fields})

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)  # DEBUG enabled implies INFO enabled
