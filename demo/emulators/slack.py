"""A Slack Web API + Socket Mode + Events API emulator that the real ``slack_sdk`` clients run against.

Speaks the wire formats documented at api.slack.com: ``{"ok": …}`` JSON bodies, bearer tokens,
``invalid_auth``/``not_authed``, per-method rate limits (HTTP 429 + ``Retry-After`` + ``ratelimited``),
cursor pagination (``response_metadata.next_cursor``, base64 ``next_ts:…``), message metadata, and
``app_mention`` generation when a message mentions the bot user. Events go out two ways: Socket Mode
``events_api`` envelopes (redelivered until acked with ``{"envelope_id"}``) and signed Events API
HTTP POSTs to ``events_url``. Everything is configured through the constructor; ``fail(count, …)``
makes the next Web API calls answer an HTTP 5xx (or drop their connections), for retry tests.

This module holds the server, its lifecycle, auth, rate limits, faults and the writing Web API methods;
``slack_conversations.py`` the reading ones, ``slack_events.py`` event delivery, ``slack_state.py`` the state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web

from tracecanary.demo.emulators.slack_conversations import SlackConversationsMixin
from tracecanary.demo.emulators.slack_events import SlackEventsMixin, slack_signature
from tracecanary.demo.emulators.slack_state import RateLimit, SlackState, SlackToken

__all__ = ["RateLimit", "SlackEmulator", "SlackToken", "slack_signature"]

log = logging.getLogger("tracecanary.demo.slack")

MAX_BODY_BYTES = 1 << 20


class SlackEmulator(SlackConversationsMixin, SlackEventsMixin):
    """An aiohttp app emulating Slack; ``await start()`` returns the Web API base URL (``…/api/``)."""

    state: SlackState

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        team_id: str = "T0TRACECAN",
        team: str = "tracecanary",
        app_id: str = "A0TRACECAN",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        tokens: dict[str, SlackToken] | None = None,
        users: dict[str, dict[str, Any]] | None = None,
        channels: Iterable[str] | None = None,
        signing_secret: str = "signing-secret",
        events_url: str | None = None,
        http_event_types: Iterable[str] = ("app_mention",),
        socket_event_types: Iterable[str] = ("app_mention", "message"),
        rate_limits: dict[str, RateLimit] | None = None,
        storms: dict[str, int] | None = None,
        retry_after_s: int = 1,
        redeliver_after_s: float = 3.0,
        max_redeliveries: int = 3,
        http_ack_timeout_s: float = 3.0,
    ) -> None:
        self.host, self.port = host, port
        self.team_id, self.team, self.app_id = team_id, team, app_id
        self.bot_user_id, self.bot_id = bot_user_id, bot_id
        self.tokens = tokens or {
            "xoxp-user": SlackToken("user", user_id="U0PROBER"),
            "xoxb-bot": SlackToken("bot", user_id=bot_user_id, bot_id=bot_id),
            "xapp-app": SlackToken("app"),
        }
        self.users = users or {
            "U0PROBER": {"name": "prober", "real_name": "Probe Account", "is_bot": False},
            bot_user_id: {"name": "bot", "real_name": "Bot Under Test", "is_bot": True, "bot_id": bot_id},
        }
        self.channels = set(channels) if channels is not None else None
        self.signing_secret = signing_secret
        self.events_url = events_url
        self.http_event_types = set(http_event_types)
        self.socket_event_types = set(socket_event_types)
        self.rate_limits = rate_limits or {}
        self.retry_after_s = retry_after_s
        self.redeliver_after_s = redeliver_after_s
        self.max_redeliveries = max_redeliveries
        self.http_ack_timeout_s = http_ack_timeout_s
        self.state = SlackState(storm_left=dict(storms or {}))
        self._faults_left, self._fault_status, self._fault_disconnect = 0, 503, False
        self._fault_methods: frozenset[str] | None = None
        self._last_ts = 0.0
        self._sockets: list[web.WebSocketResponse] = []
        self._rr = 0
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    # --- lifecycle -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._socket)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://{self.host}:{self.port}/api/"
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._deliver_loop()), asyncio.create_task(self._redeliver_loop())]
        return self.base_url

    async def stop(self) -> None:
        for task in [*self._tasks, *self._sends]:
            task.cancel()
        for task in [*self._tasks, *self._sends]:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        for ws in list(self._sockets):
            await ws.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- inspection ----------------------------------------------------------------------------
    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Every message in ``channel`` (threads included), oldest first."""
        return list(self.state.messages.get(channel, []))

    @property
    def socket_connections(self) -> int:
        return len(self._sockets)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait (bounded) until ``predicate()`` holds; re-checked whenever the emulator's state changes."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()
                self._changed.clear()

    def _touch(self) -> None:
        self._changed.set()

    # --- Web API -------------------------------------------------------------------------------
    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
            else:
                params.update(dict(await request.post()))
        return params

    def _auth(self, request: web.Request, params: dict[str, Any]) -> tuple[SlackToken | None, str | None]:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else params.pop("token", None)
        if not token:
            return None, "not_authed"
        ident = self.tokens.get(str(token))
        return (ident, None) if ident else (None, "invalid_auth")

    def _rate_limited(self, method: str) -> bool:
        if self.state.storm_left.get(method, 0) > 0:
            self.state.storm_left[method] -= 1
            return True
        limit = self.rate_limits.get(method)
        if limit is None:
            return False
        now = time.monotonic()
        calls = self.state.calls[method]
        while calls and calls[0] <= now - limit.window_s:
            calls.popleft()
        if len(calls) >= limit.calls:
            return True
        calls.append(now)
        return False

    def fail(self, count: int, *, status: int = 503, disconnect: bool = False,
             methods: Iterable[str] | None = None) -> None:
        """Answer the next ``count`` Web API calls (of ``methods``; default all) with HTTP ``status`` and
        ``{"ok": false, "error": "service_unavailable"}``, or close their connections unanswered."""
        self._faults_left, self._fault_status, self._fault_disconnect = count, status, disconnect
        self._fault_methods = frozenset(methods) if methods is not None else None

    def _fault(self, request: web.Request, method: str) -> web.Response | None:
        if self._faults_left <= 0 or (self._fault_methods is not None and method not in self._fault_methods):
            return None
        self._faults_left -= 1
        self.state.faults += 1
        if self._fault_disconnect and request.transport is not None:
            request.transport.close()  # the client sees its connection dropped, never this response
        return web.json_response({"ok": False, "error": "service_unavailable"}, status=self._fault_status)

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if (fault := self._fault(request, method)) is not None:
            return fault
        params = await self._params(request)
        ident, error = self._auth(request, params)
        if ident is None:
            return web.json_response({"ok": False, "error": error})
        if self._rate_limited(method):
            self.state.rate_limited[method] += 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429,
                headers={"Retry-After": str(self.retry_after_s)},
            )
        handler = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
            "users.info": self._users_info,
            "apps.connections.open": self._connections_open,
        }.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        if (method == "apps.connections.open") != (ident.kind == "app"):
            return web.json_response({"ok": False, "error": "not_allowed_token_type"})
        body = handler(ident, params)
        return web.json_response(body)

    def _auth_test(self, ident: SlackToken, params: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(ident.user_id, {})
        body: dict[str, Any] = {
            "ok": True, "url": f"https://{self.team}.slack.com/", "team": self.team,
            "user": user.get("name", ""), "team_id": self.team_id, "user_id": ident.user_id,
        }
        if ident.kind == "bot":
            body["bot_id"] = ident.bot_id
        body["is_enterprise_install"] = False
        return body

    def _users_info(self, ident: SlackToken, params: dict[str, Any]) -> dict[str, Any]:
        uid = str(params.get("user", ""))
        user = self.users.get(uid)
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        body = {
            "id": uid, "team_id": self.team_id, "name": user["name"], "deleted": False,
            "real_name": user.get("real_name", user["name"]), "tz": "UTC", "tz_label": "Coordinated Universal Time",
            "tz_offset": 0, "profile": {"real_name": user.get("real_name", user["name"]), "team": self.team_id},
            "is_admin": False, "is_owner": False, "is_primary_owner": False, "is_restricted": False,
            "is_ultra_restricted": False, "is_bot": bool(user.get("is_bot")), "is_app_user": False,
            "updated": 1502138686,
        }
        if user.get("bot_id"):
            body["profile"]["bot_id"] = user["bot_id"]
        return {"ok": True, "user": body}

    def _connections_open(self, ident: SlackToken, params: dict[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        return {"ok": True, "url": f"ws://{self.host}:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"}

    def _next_ts(self) -> str:
        now = max(time.time(), self._last_ts + 1e-6)
        self._last_ts = now
        return f"{now:.6f}"

    def _post_message(self, ident: SlackToken, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel", ""))
        if not self._channel_ok(channel):
            return {"ok": False, "error": "channel_not_found"}
        text = params.get("text")
        blocks = params.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not text and not blocks and not params.get("attachments"):
            return {"ok": False, "error": "no_text"}
        metadata = params.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        ts = self._next_ts()
        msg: dict[str, Any] = {"user": ident.user_id, "type": "message", "ts": ts, "text": text or ""}
        if ident.kind == "bot":
            msg = {"bot_id": ident.bot_id, **msg, "app_id": self.app_id}
        msg["team"] = self.team_id
        if blocks:
            msg["blocks"] = blocks
        thread_ts = params.get("thread_ts")
        if thread_ts:
            msg["thread_ts"] = str(thread_ts)
            parent = self._find(channel, str(thread_ts))
            if parent is not None:
                msg["parent_user_id"] = parent.get("user", "")
                parent["thread_ts"] = parent["ts"]
                parent["reply_count"] = parent.get("reply_count", 0) + 1
                users = parent.setdefault("reply_users", [])
                if ident.user_id not in users:
                    users.append(ident.user_id)
                parent["reply_users_count"] = len(users)
                parent["latest_reply"] = ts
        if isinstance(metadata, dict):
            msg["metadata"] = {"event_type": metadata.get("event_type"), "event_payload": metadata.get("event_payload", {})}
        self.state.messages[channel].append(msg)
        self._emit(channel, msg)
        self._touch()
        public = {k: v for k, v in msg.items() if k not in ("metadata", "reply_users")}
        return {"ok": True, "channel": channel, "ts": ts, "message": public}
