"""Event delivery for the Slack emulator: Socket Mode envelopes and signed Events API POSTs.

A message posted through the emulator becomes a ``message`` event and, when it mentions the bot
user, an ``app_mention`` event. Socket Mode connections get ``events_api`` envelopes that are
redelivered (``retry_attempt``, ``retry_reason: timeout``) until acked with ``{"envelope_id"}``;
the Events API URL gets ``event_callback`` POSTs signed like Slack's (``X-Slack-Signature``,
``X-Slack-Request-Timestamp``), retried with ``X-Slack-Retry-Num`` on errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("tracecanary.demo.slack")

MENTION_RE = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``v0=`` + hex HMAC-SHA256(secret, ``v0:{ts}:{body}``), as Slack signs requests."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass
class Envelope:
    """One Socket Mode envelope and its delivery attempts."""

    envelope_id: str
    payload: dict[str, Any]
    attempts: int = 0
    sent_at: float = 0.0


@dataclass
class EventState:
    """Inspectable delivery state: envelopes awaiting an ack, acked ids, Events API attempts."""

    unacked: dict[str, Envelope] = field(default_factory=dict)
    acked: list[str] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)


class SlackEventsMixin:
    """Event delivery half of ``SlackEmulator`` (which sets every attribute declared here)."""

    team_id: str
    app_id: str
    bot_user_id: str
    signing_secret: str
    events_url: str | None
    http_event_types: set[str]
    socket_event_types: set[str]
    redeliver_after_s: float
    max_redeliveries: int
    http_ack_timeout_s: float
    state: EventState
    _sockets: list[web.WebSocketResponse]
    _rr: int
    _outbox: asyncio.Queue[dict[str, Any]]
    _sends: set[asyncio.Task[None]]
    _session: aiohttp.ClientSession | None

    def _touch(self) -> None:
        raise NotImplementedError

    def _event_payload(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "token": "verification-token-deprecated", "team_id": self.team_id, "api_app_id": self.app_id,
            "event": event, "type": "event_callback", "event_id": "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()), "event_context": uuid.uuid4().hex,
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
            "is_ext_shared_channel": False,
        }

    def _emit(self, channel: str, msg: dict[str, Any]) -> None:
        base = {k: v for k, v in msg.items() if k not in ("reply_users", "reply_count", "reply_users_count", "latest_reply")}
        events = [("message", {**base, "channel": channel, "event_ts": msg["ts"], "channel_type": "channel"})]
        mentioned = set(MENTION_RE.findall(msg.get("text") or ""))
        if self.bot_user_id in mentioned and msg.get("user") != self.bot_user_id:
            mention = {"type": "app_mention", "user": msg["user"], "text": msg["text"], "ts": msg["ts"],
                       "channel": channel, "event_ts": msg["ts"]}
            for key in ("thread_ts", "metadata", "blocks", "team"):
                if key in msg:
                    mention[key] = msg[key]
            events.append(("app_mention", mention))
        for kind, event in events:
            payload = self._event_payload(event)
            if kind in self.socket_event_types and self._sockets:
                env = Envelope(envelope_id=str(uuid.uuid4()), payload=payload)
                self.state.unacked[env.envelope_id] = env
                task = asyncio.get_running_loop().create_task(self._send_envelope(env))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            if kind in self.http_event_types and self.events_url:
                try:
                    self._outbox.put_nowait(payload)
                except asyncio.QueueFull:
                    log.warning("slack emulator outbox full dropped=event_callback")

    async def _send_envelope(self, env: Envelope) -> None:
        env.attempts += 1
        env.sent_at = time.monotonic()
        if not self._sockets:
            return
        ws = self._sockets[self._rr % len(self._sockets)]
        self._rr += 1
        retry = env.attempts - 1
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json({
            "envelope_id": env.envelope_id, "payload": env.payload, "type": "events_api",
                "accepts_response_payload": False, "retry_attempt": retry,
                "retry_reason": "timeout" if retry else "",
            })

    async def _redeliver_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.05, self.redeliver_after_s / 4))
            now = time.monotonic()
            for env in list(self.state.unacked.values()):
                if env.attempts and now - env.sent_at >= self.redeliver_after_s:
                    if env.attempts > self.max_redeliveries:
                        self.state.unacked.pop(env.envelope_id, None)
                    else:
                        await self._send_envelope(env)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self._touch()
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets),
                            "debug_info": {"host": "applink-emulator", "build_number": 1,
                                           "approximate_connection_time": 18060},
                            "connection_info": {"app_id": self.app_id}})
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                eid = data.get("envelope_id") if isinstance(data, dict) else None
                if eid and self.state.unacked.pop(eid, None) is not None:
                    self.state.acked.append(eid)
                    self._touch()
        finally:
            self._sockets.remove(ws)
            self._touch()
        return ws

    async def _deliver_loop(self) -> None:
        while True:
            payload = await self._outbox.get()
            await self._deliver_http(payload)

    async def _deliver_http(self, payload: dict[str, Any]) -> None:
        assert self._session is not None and self.events_url is not None
        body = json.dumps(payload).encode()
        for attempt in range(self.max_redeliveries + 1):
            ts = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts,
                       "X-Slack-Signature": slack_signature(self.signing_secret, ts, body),
                       "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}
            if attempt:
                headers |= {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "http_error"}
            record: dict[str, Any] = {"event_id": payload["event_id"], "attempt": attempt, "status": None}
            self.state.deliveries.append(record)
            try:
                async with asyncio.timeout(self.http_ack_timeout_s):
                    async with self._session.post(self.events_url, data=body, headers=headers) as resp:
                        record["status"] = resp.status
                        if resp.status < 300:
                            return
            except (TimeoutError, aiohttp.ClientError) as e:
                record["error"] = type(e).__name__
            await asyncio.sleep(min(1.0, self.redeliver_after_s))
