"""What every alert channel shares: the Notification it renders, the Channel protocol, delivery errors.

A channel module (``slack.py`` is the reference) holds a config model subclassing ``ChannelConfigBase``
with ``type: Literal["…"]`` and a ``build()`` returning a ``Channel``; it is registered once in
``registry.py`` (``CHANNELS``), from which the config discriminator is derived.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import aiohttp
import anyio
from pydantic import BaseModel, ConfigDict, Field

from tracecanary.assertions.units import Duration
from tracecanary.errors import TracecanaryError
from tracecanary.integrations import Integrations

EventKind = Literal["failing", "recovered", "degraded", "reminder", "channel_failing", "channel_recovered",
                    "system_failing", "system_recovered"]
"""What a notification announces. ``channel_*`` are about an alert channel, ``system_*`` about another part
of tracecanary itself (results store, telemetry …: see ``system.py``), not a probe."""
SYSTEM_EVENTS: frozenset[str] = frozenset({"channel_failing", "channel_recovered", "system_failing",
                                           "system_recovered"})
"""Events about tracecanary itself; ``probe_id`` then names the channel or the system incident key."""


class NotifiedFinding(BaseModel):
    """A finding as shown in a notification: the sentence plus expected and observed values."""

    model_config = ConfigDict(extra="forbid")

    type: str
    message: str
    path: str = ""
    expected: Any = None
    observed: Any = None


class Notification(BaseModel):
    """One message to deliver; JSON-serialisable so it can wait in the store's outbox across restarts."""

    model_config = ConfigDict(extra="forbid")

    event: EventKind
    dedup_key: str = Field(description="Unique per (probe, incident, event); replicas claim it once.")
    incident_id: str = Field(description="Deterministic: '<probe id>:<first failing run id>'.")
    probe_id: str
    kind: str = ""
    tags: list[str] = Field(default_factory=list)
    verdict: str | None = None
    run_id: str = ""
    trace_id: str = ""
    time_ns: int = 0
    incident_started_ns: int | None = None
    duration_s: float | None = None
    consecutive_failures: int = 0
    findings: list[NotifiedFinding] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict, description="Trace links by backend name.")
    dashboard_url: str | None = None
    detail: str = Field("", description="Free text, e.g. the failing channel's last error.")
    headline: str = Field("", description="System events: the incident's one-line summary.")

    @property
    def title(self) -> str:
        """One line a person reads first."""
        verdict = (self.verdict or "").upper()
        match self.event:
            case "failing":
                return f"{self.probe_id} is failing ({verdict})"
            case "reminder":
                return f"{self.probe_id} is still failing ({verdict})"
            case "degraded":
                return f"{self.probe_id} is degraded"
            case "recovered":
                return f"{self.probe_id} recovered"
            case "channel_failing":
                return f"alert channel {self.probe_id} is failing"
            case "channel_recovered":
                return f"alert channel {self.probe_id} recovered"
            case "system_failing":
                return f"tracecanary: {self.headline or self.probe_id}"
            case "system_recovered":
                return f"tracecanary recovered: {self.headline or self.probe_id}"
        return self.probe_id  # pragma: no cover

    @property
    def summary(self) -> str:
        """Plain-text body: title, top findings, duration, links (used as fallback text)."""
        lines = [self.title]
        lines += [f"- {f.message}" for f in self.findings]
        if self.detail:
            lines.append(self.detail)
        if self.duration_s is not None:
            lines.append(f"run duration: {self.duration_s:.3g}s")
        lines += [f"{name}: {url}" for name, url in self.links.items()]
        if self.dashboard_url:
            lines.append(f"dashboard: {self.dashboard_url}")
        return "\n".join(lines)


class DeliveryError(TracecanaryError):
    """A channel could not deliver. ``retryable`` errors are retried with backoff (``retry_after_s``
    from the remote's ``Retry-After`` takes precedence); others (bad token, unknown channel) are not."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Channel(Protocol):
    """A built channel: sends notifications, returns an optional reference (e.g. Slack's ``ts``)
    that later notifications of the same incident receive as ``thread`` (recovery threads under it)."""

    name: str

    def accepts(self, event: EventKind) -> bool:
        """False for events this channel never sends (Sentry sends no recovery messages)."""

    async def send(self, note: Notification, thread: dict[str, Any] | None) -> dict[str, Any] | None:
        """Deliver once; raise DeliveryError on failure."""

    async def aclose(self) -> None:
        """Release connections; idempotent."""


class ChannelConfigBase(BaseModel):
    """Base of every channel's config model (``type`` is the discriminator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    timeout: Duration = Field(10.0, description="Deadline for one delivery request, e.g. 10s.")

    def build(self, name: str, integrations: Integrations) -> Channel:
        """The live channel for this config."""
        raise NotImplementedError

    def problems(self, integrations: Integrations) -> list[str]:
        """Cross-section errors as ``(field): message`` (e.g. no token here nor in integrations)."""
        return []


def retry_after_s(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds (HTTP dates are rare here and ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


async def post_for_delivery(session: aiohttp.ClientSession, url: str, *, data: bytes, headers: dict[str, str],
                            timeout_s: float, what: str) -> tuple[int, str]:
    """POST one delivery; ``(status, first 2 KiB of the body)`` on a 2xx, else a DeliveryError.

    Connection failures, timeouts, 429 and 5xx are retryable (with the server's Retry-After); other
    statuses are not — a 4xx will not get better by retrying.
    """
    try:
        with anyio.fail_after(timeout_s):
            async with session.post(url, data=data, headers=headers) as resp:
                text = (await resp.content.read(2048)).decode(errors="replace")
                status, after = resp.status, resp.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise DeliveryError(f"{what} unreachable: {type(e).__name__}: {e}", retryable=True) from e
    if status >= 300:
        retryable = status == 429 or status >= 500
        raise DeliveryError(f"{what} {status}: {text[:200]}", retryable=retryable,
                            retry_after_s=retry_after_s(after) if retryable else None)
    return status, text
