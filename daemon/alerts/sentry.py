"""Sentry alert channel: one error event per incident, grouped by probe.

The event is sent as a raw envelope (``POST {dsn host}/api/{project}/envelope/`` with
``X-Sentry-Auth``) built with sentry-sdk's ``Envelope`` and ``Dsn`` — not through the process-global
sentry-sdk client, which the daemon's own error reporting owns, and so that every delivery attempt
has a real outcome (the SDK's transport drops failures in a background thread).

Event: ``fingerprint: [probe_id]`` (incidents of one probe group into one issue), level ``error``
(``warning`` for degraded), tags ``probe``, ``kind``, ``verdict``, ``incident``; ``contexts.trace``
carries the probe run's trace id so Sentry links the event into that trace, and
``contexts.tracecanary`` carries the run, the incident and the trace links. Recoveries and reminders
are not sent: Sentry's own issue lifecycle (and its alert rules) takes over after the first event.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import aiohttp
from pydantic import Field
from sentry_sdk.envelope import Envelope
from sentry_sdk.utils import BadDsn, Dsn

from tracecanary.daemon.alerts.base import (
    Channel,
    ChannelConfigBase,
    DeliveryError,
    EventKind,
    Notification,
    post_for_delivery,
)
from tracecanary.integrations import Integrations
from tracecanary.model import CREDENTIAL

if TYPE_CHECKING:
    from sentry_sdk.types import Event

log = logging.getLogger("tracecanary.alerts.sentry")
CLIENT = "tracecanary-alerts/1.0"


class SentryChannelConfig(ChannelConfigBase):
    """Capture one Sentry event per incident (fingerprint = probe id)."""

    type: Literal["sentry"] = "sentry"
    dsn: Annotated[str | None, CREDENTIAL] = Field(
        None, description="Project DSN; defaults to integrations.sentry.dsn.")
    environment: str | None = Field(None, description="Sentry environment of the events.")

    def build(self, name: str, integrations: Integrations) -> Channel:
        return SentryChannel(name, self, self.dsn or integrations.sentry.dsn)

    def problems(self, integrations: Integrations) -> list[str]:
        dsn = self.dsn or integrations.sentry.dsn
        if not dsn:
            return ["dsn: no Sentry DSN (set dsn here or integrations.sentry.dsn)"]
        try:
            Dsn(dsn)
        except BadDsn as e:
            return [f"dsn: invalid Sentry DSN: {e}"]
        return []


EVENT_ID_NAMESPACE = uuid.UUID("5b0c8f1e-4a2b-4f3c-9d6e-7a8b9c0d1e2f")


def event_id(dedup_key: str) -> str:
    """The Sentry event id of a notification, derived from its dedup key: a delivery retried (or
    repeated after a restart) carries the same id, and Sentry keeps one event per id."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, dedup_key).hex


def build_event(note: Notification, *, environment: str | None = None) -> dict[str, Any]:
    """The Sentry event for a notification (public for tests and previews)."""
    level = "warning" if note.event == "degraded" else "error"
    top = note.findings[0].message if note.findings else note.detail
    message = note.title + (f": {top}" if top else "")
    event: dict[str, Any] = {
        "event_id": event_id(note.dedup_key),
        "timestamp": datetime.fromtimestamp((note.time_ns or 0) / 1e9, UTC).isoformat(),
        "platform": "other",
        "level": level,
        "logger": "tracecanary.alerts",
        "logentry": {"formatted": message[:8192]},
        "fingerprint": [note.probe_id],
        "tags": {"probe": note.probe_id, "kind": note.kind, "verdict": note.verdict or note.event,
                 "incident": note.incident_id[:200]},
        "contexts": {"tracecanary": {
            "incident_id": note.incident_id, "run_id": note.run_id, "trace_id": note.trace_id,
            "links": note.links, "dashboard_url": note.dashboard_url, "summary": note.summary[:4000],
            "findings": [f.model_dump(mode="json") for f in note.findings]}},
        "extra": {"dedup_key": note.dedup_key},
    }
    if note.trace_id:
        event["contexts"]["trace"] = {"trace_id": note.trace_id, "span_id": secrets.token_hex(8),
                                      "op": "tracecanary.probe", "status": "internal_error"}
    if environment:
        event["environment"] = environment
    return event


class SentryChannel:
    def __init__(self, name: str, config: SentryChannelConfig, dsn: str | None) -> None:
        self.name = name
        self.config = config
        self._dsn = dsn
        self._session: aiohttp.ClientSession | None = None

    def accepts(self, event: EventKind) -> bool:
        return event in ("failing", "degraded", "channel_failing", "system_failing")

    async def send(self, note: Notification, thread: dict[str, Any] | None) -> dict[str, Any] | None:
        if not self._dsn:
            raise DeliveryError("no Sentry DSN (set dsn or integrations.sentry.dsn)", retryable=False)
        try:
            auth = Dsn(self._dsn).to_auth(client=CLIENT)
        except BadDsn as e:
            raise DeliveryError(f"bad Sentry DSN: {e}", retryable=False) from e
        event = build_event(note, environment=self.config.environment)
        envelope = Envelope(headers={"event_id": event["event_id"], "dsn": self._dsn,
                                     "sent_at": datetime.now(UTC).isoformat()})
        envelope.add_event(cast("Event", event))
        headers = {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": auth.to_header(),
                   "User-Agent": CLIENT}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        _, text = await post_for_delivery(self._session, auth.get_api_url(), data=envelope.serialize(),
                                          headers=headers, timeout_s=self.config.timeout, what="sentry")
        log.info("sentry.sent channel=%s probe=%s event_id=%s", self.name, note.probe_id, event["event_id"])
        return {"event_id": _event_id(text) or event["event_id"]}

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _event_id(text: str) -> str | None:
    try:
        value = json.loads(text).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
