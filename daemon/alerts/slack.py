"""Slack alert channel — the reference channel the others copy.

``chat.postMessage`` through slack-sdk's ``AsyncWebClient`` with Block Kit: probe, verdict, top
findings with observed values, run duration, trace link(s), dashboard link. The firing message's
``ts`` is returned and kept by the manager, so reminders and the recovery thread under it. Rate
limits (HTTP 429 + ``Retry-After``) are retried by slack-sdk's ``AsyncRateLimitErrorRetryHandler``;
server errors and connection failures surface as retryable ``DeliveryError``s, Slack's own errors
(``invalid_auth``, ``channel_not_found`` …) as permanent ones.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

import aiohttp
import anyio
from pydantic import Field
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tracecanary.daemon.alerts.base import (
    Channel,
    ChannelConfigBase,
    DeliveryError,
    EventKind,
    Notification,
    retry_after_s,
)
from tracecanary.integrations import Integrations
from tracecanary.model import CREDENTIAL

log = logging.getLogger("tracecanary.alerts.slack")

_EMOJI = {
    "failing": ":red_circle:", "reminder": ":red_circle:", "degraded": ":large_yellow_circle:",
    "recovered": ":large_green_circle:", "channel_failing": ":warning:", "channel_recovered": ":white_check_mark:",
    "system_failing": ":warning:", "system_recovered": ":white_check_mark:",
}
MAX_FINDINGS = 5


class SlackChannelConfig(ChannelConfigBase):
    """Post alerts to a Slack channel with a bot token (``chat:write``)."""

    type: Literal["slack"] = "slack"
    channel: str = Field(description="Channel id (C…) or name to post to.")
    token: Annotated[str | None, CREDENTIAL] = Field(
        None, description="Bot token; defaults to integrations.slack.bot_token.")
    base_url: str | None = Field(None, description="Web API base URL; defaults to integrations.slack.base_url.")
    mention: str | None = Field(None, description="Prepended to firing messages, e.g. '<!here>'.")
    rate_limit_retries: int = Field(2, ge=0, le=10, description="Retries of a rate-limited call (HTTP 429).")

    def build(self, name: str, integrations: Integrations) -> Channel:
        return SlackChannel(name, self, integrations)

    def problems(self, integrations: Integrations) -> list[str]:
        if self.token or integrations.slack.bot_token:
            return []
        return ["token: no Slack token (set token here or integrations.slack.bot_token)"]


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_blocks(note: Notification) -> list[dict[str, Any]]:
    """Block Kit for a notification (public so the dashboard/tests can preview it)."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{_EMOJI[note.event]} {note.title}"[:150]}},
    ]
    fields = [f"*Probe*\n`{_esc(note.probe_id)}`"]
    if note.kind:
        fields.append(f"*Kind*\n{_esc(note.kind)}")
    if note.verdict:
        fields.append(f"*Verdict*\n{_esc(note.verdict)}")
    if note.duration_s is not None:
        fields.append(f"*Run duration*\n{note.duration_s:.3g}s")
    if note.consecutive_failures:
        fields.append(f"*Consecutive failures*\n{note.consecutive_failures}")
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]})
    for f in note.findings[:MAX_FINDINGS]:
        text = f"*{_esc(f.type)}*" + (f" `{_esc(f.path)}`" if f.path else "") + f"\n{_esc(f.message)}"
        if f.expected is not None or f.observed is not None:
            text += f"\nexpected `{_esc(_short(f.expected))}` · observed `{_esc(_short(f.observed))}`"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    if note.detail:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _esc(note.detail)[:3000]}})
    links = [f"<{url}|Trace in {_esc(name)}>" for name, url in note.links.items()]
    if note.dashboard_url:
        links.append(f"<{note.dashboard_url}|Dashboard>")
    if links:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": " · ".join(links)}})
    ids = [f"run `{note.run_id}`"] if note.run_id else []
    ids += [f"trace `{note.trace_id}`"] if note.trace_id else []
    ids.append(f"incident `{_esc(note.incident_id)}`")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(ids)}]})
    return blocks


class SlackChannel:
    """A live Slack channel (one AsyncWebClient over one aiohttp session)."""

    def __init__(self, name: str, config: SlackChannelConfig, integrations: Integrations) -> None:
        self.name = name
        self.config = config
        self._token = config.token or integrations.slack.bot_token
        self._base_url = config.base_url or integrations.slack.base_url
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None

    def accepts(self, event: EventKind) -> bool:
        return True

    def _web(self) -> AsyncWebClient:
        if self._client is None:
            self._session = aiohttp.ClientSession()
            self._client = AsyncWebClient(
                token=self._token, base_url=self._base_url, session=self._session,
                timeout=max(1, int(self.config.timeout)),
                retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=self.config.rate_limit_retries)],
            )
        return self._client

    async def send(self, note: Notification, thread: dict[str, Any] | None) -> dict[str, Any] | None:
        if not self._token:
            raise DeliveryError("no Slack token (set token or integrations.slack.bot_token)", retryable=False)
        text = note.summary
        if self.config.mention and note.event in ("failing", "channel_failing", "system_failing"):
            text = f"{self.config.mention} {text}"
        kwargs: dict[str, Any] = {
            "channel": (thread or {}).get("channel") or self.config.channel,
            "text": text[:3000],
            "blocks": render_blocks(note),
            "metadata": {"event_type": "tracecanary_alert", "event_payload": {
                "probe_id": note.probe_id, "incident_id": note.incident_id, "event": note.event,
                "verdict": note.verdict or "", "run_id": note.run_id, "trace_id": note.trace_id}},
            "unfurl_links": False,
        }
        if thread and thread.get("ts"):
            kwargs["thread_ts"] = thread["ts"]
            kwargs["reply_broadcast"] = note.event == "recovered"
        try:
            # slack-sdk may sleep out a Retry-After inside the call: leave room for it.
            with anyio.fail_after(self.config.timeout * (1 + self.config.rate_limit_retries) + 5):
                resp = await self._web().chat_postMessage(**kwargs)
        except SlackApiError as e:
            raise _classify(e) from e
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise DeliveryError(f"slack unreachable: {type(e).__name__}: {e}", retryable=True) from e
        log.info("slack.sent channel=%s probe=%s event=%s ts=%s", self.name, note.probe_id, note.event, resp["ts"])
        return {"ts": resp["ts"], "channel": resp["channel"]}

    async def aclose(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.close()


def _classify(e: SlackApiError) -> DeliveryError:
    status = e.response.status_code
    error = e.response.get("error") if isinstance(e.response.data, dict) else None
    message = f"slack {status}: {error or e.response.data!r}"
    if status == 429 or status >= 500 or error in ("ratelimited", "service_unavailable", "fatal_error"):
        headers = {k.lower(): v for k, v in (e.response.headers or {}).items()}
        after = headers.get("retry-after")
        after = after[0] if isinstance(after, list) else after
        return DeliveryError(message, retryable=True, retry_after_s=retry_after_s(after))
    return DeliveryError(message, retryable=False)
