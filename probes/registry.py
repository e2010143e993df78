"""The one place probe kinds are registered; the config discriminator is derived from it."""

from __future__ import annotations

from .base import ProbeSpec
from .github import GithubWebhookProbe
from .http import HttpProbe
from .kafka import KafkaProbe
from .scheduled_job import ScheduledJobProbe
from .slack import SlackMentionProbe
from .steps import StepsProbe

PROBES: dict[str, type[ProbeSpec]] = {
    "http": HttpProbe,
    "github_webhook": GithubWebhookProbe,
    "kafka": KafkaProbe,
    "steps": StepsProbe,
    "scheduled_job": ScheduledJobProbe,
    "slack_mention": SlackMentionProbe,
}
