"""Reading conversations in the Slack emulator: ``conversations.history`` and ``conversations.replies``.

Time windows (``oldest``/``latest``/``inclusive``), cursor pagination (``response_metadata.next_cursor``)
and message metadata (``include_all_metadata``), as api.slack.com documents them.
"""

from __future__ import annotations

from typing import Any

from tracecanary.demo.emulators.slack_state import SlackState, SlackToken, decode_cursor, encode_cursor


class SlackConversationsMixin:
    """Conversation half of ``SlackEmulator``'s Web API (which sets every attribute declared here)."""

    channels: set[str] | None
    state: SlackState

    def _channel_ok(self, channel: str) -> bool:
        if self.channels is not None:
            return channel in self.channels
        return bool(channel) and channel[0] in "CGD"


    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        for msg in self.state.messages.get(channel, []):
            if msg["ts"] == ts:
                return msg
        return None

    @staticmethod
    def _limit(params: dict[str, Any], default: int) -> int:
        try:
            return max(1, min(999, int(params.get("limit", default))))
        except ValueError:
            return default

    @staticmethod
    def _view(msg: dict[str, Any], with_metadata: bool) -> dict[str, Any]:
        return {k: v for k, v in msg.items() if with_metadata or k != "metadata"}

    def _window(self, msgs: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
        oldest = float(params.get("oldest") or 0)
        latest = float(params.get("latest") or 0) or float("inf")
        inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
        keep = []
        for m in msgs:
            t = float(m["ts"])
            if (oldest < t < latest) or (inclusive and t in (oldest, latest)):
                keep.append(m)
        return keep

    def _page(
        self, msgs: list[dict[str, Any]], params: dict[str, Any], default_limit: int, newest_first: bool
    ) -> tuple[list[dict[str, Any]], str | None] | None:
        cursor = params.get("cursor")
        if cursor:
            start_ts = decode_cursor(str(cursor))
            if start_ts is None:
                return None
            start = float(start_ts)
            msgs = [m for m in msgs if (float(m["ts"]) <= start if newest_first else float(m["ts"]) >= start)]
        limit = self._limit(params, default_limit)
        page, rest = msgs[:limit], msgs[limit:]
        return page, (encode_cursor(rest[0]["ts"]) if rest else None)

    def _history(self, ident: SlackToken, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel", ""))
        if not self._channel_ok(channel):
            return {"ok": False, "error": "channel_not_found"}
        top = [m for m in self.state.messages.get(channel, []) if m.get("thread_ts") in (None, m["ts"])]
        msgs = sorted(self._window(top, params), key=lambda m: float(m["ts"]), reverse=True)
        paged = self._page(msgs, params, 100, newest_first=True)
        if paged is None:
            return {"ok": False, "error": "invalid_cursor"}
        page, nxt = paged
        meta = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
        body: dict[str, Any] = {"ok": True, "messages": [self._view(m, meta) for m in page], "has_more": nxt is not None,
                                "pin_count": 0, "channel_actions_ts": None, "channel_actions_count": 0}
        if nxt:
            body["response_metadata"] = {"next_cursor": nxt}
        return body

    def _replies(self, ident: SlackToken, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel", ""))
        if not self._channel_ok(channel):
            return {"ok": False, "error": "channel_not_found"}
        ts = str(params.get("ts", ""))
        thread = [m for m in self.state.messages.get(channel, []) if m["ts"] == ts or m.get("thread_ts") == ts]
        parent = [m for m in thread if m["ts"] == ts]
        if not parent:
            # Slack: ts must be an existing message. Replies posted under a ts that is no message (a
            # synthetic events_api mention's) do not make it one.
            return {"ok": False, "error": "thread_not_found"}
        replies = self._window([m for m in thread if m["ts"] != ts], params)
        msgs = parent + sorted(replies, key=lambda m: float(m["ts"]))
        paged = self._page(msgs, params, 1000, newest_first=False)
        if paged is None:
            return {"ok": False, "error": "invalid_cursor"}
        page, nxt = paged
        meta = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
        body: dict[str, Any] = {"ok": True, "messages": [self._view(m, meta) for m in page], "has_more": nxt is not None}
        if nxt:
            body["response_metadata"] = {"next_cursor": nxt}
        return body
