"""The one place side-effect watchers are registered, keyed like ``SideEffect`` fields."""

from __future__ import annotations

from .base import Watcher
from .kafka import watch_kafka
from .sentry import watch_sentry

WATCHERS: dict[str, Watcher] = {
    "kafka": watch_kafka,
    "sentry": watch_sentry,
}
