"""Webhook alert channel: a JSON POST, optionally signed and optionally templated.

Default body (``version`` 1)::

    {
      "version": 1,
      "event": "failing",            # failing | reminder | degraded | recovered | channel_failing | channel_recovered
                                     # | system_failing | system_recovered
      "title": "orders-webhook is failing (FAIL)",
      "summary": "…plain text with findings and links…",
      "dedup_key": "orders-webhook:r-01H…:failing",   # the same on every retry: deduplicate on it
      "incident": {"id": "orders-webhook:r-01H…", "started_at": "2026-11-23T23:40:00+00:00"},
      "probe": {"id": "orders-webhook", "kind": "http", "tags": ["payments"]},
      "verdict": "fail",
      "run": {"id": "r-01H…", "trace_id": "4bf92f35…", "duration_s": 1.84},
      "consecutive_failures": 2,
      "findings": [{"type": "trace.missing", "path": "expect.trace.tree[0]", "message": "…",
                    "expected": …, "observed": …}],
      "links": {"sentry": "https://…/trace/4bf92f35…"},
      "dashboard_url": "https://canary.example/runs/r-01H…",
      "detail": "",
      "time": "2026-11-23T23:41:00+00:00"
    }

Headers: ``Content-Type``, ``X-Tracecanary-Event``, ``X-Tracecanary-Delivery`` and ``Idempotency-Key``
(both the dedup key: incident id + transition, the same on every retry and after a restart) and,
with a ``secret``, ``X-Tracecanary-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`` (the
GitHub scheme: verify over the exact bytes received, compare in constant time).

``body_template`` is a Jinja2 template rendered in a sandbox with ``n`` (the notification fields)
and ``body`` (the default body above) — e.g. ``{"text": {{ n.summary | tojson }}}``.
5xx, 429 and connection errors are retryable (``Retry-After`` honoured); other 4xx are not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import aiohttp
from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import Field, field_validator

from tracecanary.daemon.alerts.base import (
    Channel,
    ChannelConfigBase,
    DeliveryError,
    EventKind,
    Notification,
    post_for_delivery,
)
from tracecanary.integrations import Integrations
from tracecanary.model import CREDENTIAL, HEADERS_CREDENTIAL

log = logging.getLogger("tracecanary.alerts.webhook")
SIGNATURE_HEADER = "X-Tracecanary-Signature"
_ENV = SandboxedEnvironment(autoescape=False)


def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Check a received signature header against the raw body (constant-time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


class WebhookChannelConfig(ChannelConfigBase):
    """POST alerts as JSON to a URL."""

    type: Literal["webhook"] = "webhook"
    url: Annotated[str, CREDENTIAL] = Field(
        description="Where to POST, e.g. https://hooks.example/tracecanary (masked like a credential: hook URLs often carry one).")
    secret: Annotated[str | None, CREDENTIAL] = Field(
        None, description="HMAC-SHA256 key for the X-Tracecanary-Signature header.")
    headers: Annotated[dict[str, str], HEADERS_CREDENTIAL] = Field(
        default_factory=dict, description="Extra request headers (values masked like credentials).")
    body_template: str | None = Field(None, description="Jinja2 template (sandboxed) for the body; "
                                      "variables n (notification) and body (default body).")
    content_type: str = Field("application/json", description="Content-Type of the body.")
    events: list[EventKind] | None = Field(None, description="Only these events (default: all).")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("no webhook URL (url is empty: is its ${VARIABLE} set?)")
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            raise ValueError(f"invalid webhook URL {value!r}: expected http(s)://host/path")
        return value

    @field_validator("body_template")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _ENV.from_string(value)
            except TemplateSyntaxError as e:
                raise ValueError(f"body_template line {e.lineno}: {e.message}") from e
        return value

    def build(self, name: str, integrations: Integrations) -> Channel:
        return WebhookChannel(name, self)


def _iso(ns: int | None) -> str | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def default_body(note: Notification) -> dict[str, Any]:
    """The documented version-1 body."""
    return {
        "version": 1,
        "event": note.event,
        "title": note.title,
        "summary": note.summary,
        "dedup_key": note.dedup_key,
        "incident": {"id": note.incident_id, "started_at": _iso(note.incident_started_ns)},
        "probe": {"id": note.probe_id, "kind": note.kind, "tags": note.tags},
        "verdict": note.verdict,
        "run": {"id": note.run_id, "trace_id": note.trace_id, "duration_s": note.duration_s},
        "consecutive_failures": note.consecutive_failures,
        "findings": [f.model_dump() for f in note.findings],
        "links": note.links,
        "dashboard_url": note.dashboard_url,
        "detail": note.detail,
        "time": _iso(note.time_ns),
    }


def render_body(config: WebhookChannelConfig, note: Notification) -> bytes:
    body = default_body(note)
    if config.body_template is None:
        return json.dumps(body, default=str).encode()
    template = _ENV.from_string(config.body_template)
    return template.render(n=note.model_dump(mode="json") | {"title": note.title, "summary": note.summary},
                           body=body).encode()


class WebhookChannel:
    def __init__(self, name: str, config: WebhookChannelConfig) -> None:
        self.name = name
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def accepts(self, event: EventKind) -> bool:
        return self.config.events is None or event in self.config.events

    async def send(self, note: Notification, thread: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            body = render_body(self.config, note)
        except Exception as e:  # template runtime errors are config errors: never retried
            raise DeliveryError(f"body_template: {type(e).__name__}: {e}", retryable=False) from e
        headers = {
            "Content-Type": self.config.content_type, "User-Agent": "tracecanary-alerts/1",
            "X-Tracecanary-Event": note.event, "X-Tracecanary-Delivery": note.dedup_key,
            "Idempotency-Key": note.dedup_key, **self.config.headers,
        }
        if self.config.secret:
            headers[SIGNATURE_HEADER] = sign(self.config.secret, body)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        status, _ = await post_for_delivery(self._session, self.config.url, data=body, headers=headers,
                                            timeout_s=self.config.timeout, what="webhook")
        log.info("webhook.sent channel=%s probe=%s event=%s status=%d", self.name, note.probe_id, note.event, status)
        return None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
