"""Credentials and endpoints probes and watchers use (the ``integrations:`` section).

Token, secret and DSN fields are ``Credential``: their values are masked wherever data leaves the
daemon (store, API, dashboard, reports, logs, alerts).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from tracecanary.assertions.units import Duration
from tracecanary.model import CREDENTIAL, HEADERS_CREDENTIAL, StrictModel

Secret = Annotated[str | None, CREDENTIAL]
"""An optional credential (masked wherever data leaves the daemon)."""


class SlackIntegration(StrictModel):
    """Slack Web API access; ``base_url`` points at an emulator in tests and the demo."""

    user_token: Secret = Field(None, description="xoxp- token that posts mentions as a person.")
    bot_token: Secret = Field(None, description="xoxb- token for reading replies and alerting.")
    app_token: Secret = Field(None, description="xapp- token for Socket Mode (event-driven watching).")
    signing_secret: Secret = Field(None, description="Signs Events API deliveries.")
    base_url: str = "https://slack.com/api/"


class GithubIntegration(StrictModel):
    """GitHub REST access and webhook secret; ``base_url`` for GitHub Enterprise or the emulator."""

    token: Secret = Field(None, description="Token for the REST API (watchers' polling and reconciling).")
    webhook_secret: Secret = Field(None, description="Secret of the webhook pointed at /hooks/github "
                                                     "(X-Hub-Signature-256); the github_webhook probe signs with it.")
    allow_unsigned_webhooks: bool = Field(
        False, description="Accept /hooks/github deliveries without a signature check when no webhook_secret "
        "is set (default: refused with 401, so a forged delivery cannot pass a probe).")
    base_url: str = Field("https://api.github.com", description="REST API root; GitHub Enterprise: https://HOST/api/v3.")
    watch: Literal["auto", "webhook", "poll"] = Field(
        "auto",
        description="How github side effects are watched. webhook: deliveries to /hooks/github, reconciled over "
                    "REST once before the window closes. poll: the REST API every daemon.poll_interval from the "
                    "window's start, with conditional requests (ETag) and the rate-limit headers respected. "
                    "auto: webhook when webhook_secret is set and /hooks/github is reachable from GitHub "
                    "(daemon.public_url, a listen address other than loopback, or a GitHub on this host), else poll.",
    )


class SentryIntegration(StrictModel):
    """Sentry: trace lookups (org, token, api_url) and the one DSN for self-reporting and check-ins."""

    org: str | None = None
    token: Secret = Field(None, description="Auth token for trace lookups (event:read).")
    api_url: str = "https://sentry.io"
    dsn: Secret = Field(None, description="The one DSN: self-reporting, crons check-ins, the sentry alert channel.")
    org_id: str | None = Field(None, description="Numeric org id (sent as sentry-org_id); default: from the DSN host.")

    def resolved_org_id(self) -> str | None:
        """``org_id``, or the ``o<digits>`` of a sentry.io DSN host (``…@o123.ingest.sentry.io/…``)."""
        if self.org_id:
            return self.org_id
        if self.dsn:
            m = re.search(r"@o(\d+)\.", self.dsn)
            if m:
                return m.group(1)
        return None


class KafkaIntegration(StrictModel):
    """Kafka used by kafka probes and watchers (the span source is daemon.kafka)."""

    bootstrap: str = "127.0.0.1:9092"


class PrometheusIntegration(StrictModel):
    """A Prometheus server's HTTP API for ``expect.metrics`` checks written as ``query:`` (PromQL)."""

    url: str | None = Field(None, description="Server root, e.g. http://prometheus:9090 (/api/v1/query is appended).")
    token: Secret = Field(None, description="Sent as Authorization: Bearer <token> (a proxy in front of Prometheus).")


class JaegerIntegration(StrictModel):
    """Jaeger's query service, for ``expect.trace.source: jaeger`` and ``trace show --source jaeger``."""

    url: str | None = Field(None, description="Query service root, e.g. http://jaeger-query:16686 (where /api/v3/traces "
                                              "and /api/traces are served; include a base path if one is set).")
    headers: Annotated[dict[str, str], HEADERS_CREDENTIAL] = Field(
        default_factory=dict, description="Headers sent with every query (e.g. Authorization for a proxy in front).")
    query_window: Duration | None = Field(
        900.0, description="Search each run's trace only in [trigger - query_window, now + query_window] "
                           "(the time parameters of both query APIs), so the backend reads only the blocks of that "
                           "time instead of its whole retention; covers clock skew between us and the traced "
                           "services. null: ask without a window.")


class TempoIntegration(StrictModel):
    """Grafana Tempo's query frontend, for ``expect.trace.source: tempo`` and ``trace show --source tempo``."""

    url: str | None = Field(None, description="Query frontend root, e.g. http://tempo:3200 (where /api/v2/traces and "
                                              "/api/traces are served).")
    headers: Annotated[dict[str, str], HEADERS_CREDENTIAL] = Field(
        default_factory=dict, description="Headers sent with every query (e.g. Authorization for Grafana Cloud).")
    tenant: str | None = Field(None, description="Tenant of a multi-tenant Tempo, sent as X-Scope-OrgID.")
    format: Literal["json", "protobuf"] = Field(
        "json", description="What to ask Tempo for (Accept: application/json or application/protobuf).")
    query_window: Duration | None = Field(
        900.0, description="Search each run's trace only in [trigger - query_window, now + query_window] "
                           "(the time parameters of both query APIs), so the backend reads only the blocks of that "
                           "time instead of its whole retention; covers clock skew between us and the traced "
                           "services. null: ask without a window.")


class Integrations(StrictModel):
    """The ``integrations:`` section."""

    slack: SlackIntegration = Field(default_factory=SlackIntegration)
    github: GithubIntegration = Field(default_factory=GithubIntegration)
    sentry: SentryIntegration = Field(default_factory=SentryIntegration)
    kafka: KafkaIntegration = Field(default_factory=KafkaIntegration)
    prometheus: PrometheusIntegration = Field(default_factory=PrometheusIntegration)
    jaeger: JaegerIntegration = Field(default_factory=JaegerIntegration)
    tempo: TempoIntegration = Field(default_factory=TempoIntegration)
