"""The one place probe kinds are registered; the config discriminator is derived from it."""

from __future__ import annotations

from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.github import GithubWebhookProbe
from tracecanary.probes.grpc import GrpcProbe
from tracecanary.probes.http import HttpProbe
from tracecanary.probes.kafka import KafkaProbe
from tracecanary.probes.passive import PassiveProbe
from tracecanary.probes.scheduled_job import ScheduledJobProbe
from tracecanary.probes.slack import SlackMentionProbe
from tracecanary.probes.steps import StepsProbe

PROBES: dict[str, type[ProbeSpec]] = {
    "http": HttpProbe,
    "github_webhook": GithubWebhookProbe,
    "kafka": KafkaProbe,
    "grpc": GrpcProbe,
    "steps": StepsProbe,
    "scheduled_job": ScheduledJobProbe,
    "slack_mention": SlackMentionProbe,
    "passive": PassiveProbe,
}
