"""The one place side-effect watchers are registered, keyed like ``SideEffect`` fields."""

from __future__ import annotations

from .base import Watcher
from .github import watch_github
from .http_poll import watch_http
from .kafka import watch_kafka
from .sentry import watch_sentry
from .slack import watch_slack

WATCHERS: dict[str, Watcher] = {
    "github": watch_github,
    "slack": watch_slack,
    "kafka": watch_kafka,
    "http": watch_http,
    "sentry": watch_sentry,
}
