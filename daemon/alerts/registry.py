"""The one place alert channels are registered; the config discriminator (``type``) is derived from it."""

from __future__ import annotations

from .base import ChannelConfigBase
from .sentry import SentryChannelConfig
from .slack import SlackChannelConfig
from .webhook import WebhookChannelConfig

CHANNELS: dict[str, type[ChannelConfigBase]] = {
    "slack": SlackChannelConfig,
    "webhook": WebhookChannelConfig,
    "sentry": SentryChannelConfig,
}
