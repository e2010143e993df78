"""The one place side-effect watchers are registered, keyed like ``SideEffect`` fields."""

from __future__ import annotations

from tracecanary.daemon.watchers.base import Watcher
from tracecanary.daemon.watchers.github import watch_github
from tracecanary.daemon.watchers.http_poll import watch_http
from tracecanary.daemon.watchers.kafka import watch_kafka
from tracecanary.daemon.watchers.sentry import watch_sentry
from tracecanary.daemon.watchers.slack import watch_slack

WATCHERS: dict[str, Watcher] = {
    "github": watch_github,
    "slack": watch_slack,
    "kafka": watch_kafka,
    "http": watch_http,
    "sentry": watch_sentry,
}
