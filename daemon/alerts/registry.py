"""The one place alert channels are registered; the config discriminator (``type``) is derived from it."""

from __future__ import annotations

from tracecanary.daemon.alerts.base import ChannelConfigBase
from tracecanary.daemon.alerts.sentry import SentryChannelConfig
from tracecanary.daemon.alerts.slack import SlackChannelConfig
from tracecanary.daemon.alerts.webhook import WebhookChannelConfig

CHANNELS: dict[str, type[ChannelConfigBase]] = {
    "slack": SlackChannelConfig,
    "webhook": WebhookChannelConfig,
    "sentry": SentryChannelConfig,
}
