"""The one place probe kinds are registered; the config discriminator is derived from it."""

from __future__ import annotations

from .base import ProbeSpec
from .http import HttpProbe
from .slack import SlackMentionProbe

PROBES: dict[str, type[ProbeSpec]] = {
    "http": HttpProbe,
    "slack_mention": SlackMentionProbe,
}
