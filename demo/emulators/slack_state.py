"""The Slack emulator's state: tokens, rate limits, the workspace's messages and pagination cursors."""

from __future__ import annotations

import base64
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from tracecanary.demo.emulators.slack_events import EventState


@dataclass(frozen=True)
class SlackToken:
    """Who a token authenticates as: ``kind`` is user, bot or app."""

    kind: str
    user_id: str = ""
    bot_id: str = ""


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls`` per ``window_s`` for one method; beyond that, 429 with ``Retry-After``."""

    calls: int
    window_s: float = 60.0


@dataclass
class SlackState(EventState):
    """What the emulated workspace holds: messages per channel, rate-limit windows, storms, fault counts."""

    messages: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    calls: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    storm_left: dict[str, int] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    faults: int = 0


def encode_cursor(ts: str) -> str:
    """A pagination cursor as Slack shapes it: base64 of ``next_ts:`` + the ts without its dot."""
    return base64.b64encode(f"next_ts:{ts.replace('.', '')}".encode()).decode()


def decode_cursor(cursor: str) -> str | None:
    """The ts an ``encode_cursor`` cursor names; None when it is not one."""
    try:
        raw = base64.b64decode(cursor.encode(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if not raw.startswith("next_ts:") or len(raw) < 15:
        return None
    digits = raw[len("next_ts:"):]
    return f"{digits[:-6]}.{digits[-6:]}"
