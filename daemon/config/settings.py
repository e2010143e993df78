"""Daemon settings (the ``daemon:`` section) and the other top-level sections beside ``probes:``."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from tracecanary.assertions.units import Duration
from tracecanary.daemon.alerts.policy import AlertsSettings, reference_problems
from tracecanary.daemon.config.links import LinkSettings
from tracecanary.daemon.spans.buffer import BufferSettings
from tracecanary.daemon.spans.kafka import KafkaSpanSettings
from tracecanary.daemon.spans.receiver import OtlpSettings
from tracecanary.daemon.store.guard import StoreHealthSettings
from tracecanary.integrations import Integrations
from tracecanary.model import StrictModel


class RetentionSettings(StrictModel):
    """How long recorded runs are kept."""

    max_age: Duration = Field(30 * 86400.0, description="Delete runs older than this.")
    max_runs_per_probe: int = Field(10_000, ge=1, description="Keep at most this many runs per probe.")


class TelemetrySettings(StrictModel):
    """The daemon's own spans (probe root spans included) exported over OTLP."""

    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP endpoint; unset = off. Never our own receiver.")
    service_name: str = Field("tracecanary", description="service.name of the daemon's own spans.")


class DaemonSettings(StrictModel):
    """The ``daemon:`` section."""

    listen: str = Field("127.0.0.1:8080", description="API, dashboard, /metrics, /healthz, /hooks/github.")
    public_url: str | None = Field(None, description="Dashboard URL used in alerts (default: http://<listen>).")
    otlp: OtlpSettings = Field(default_factory=OtlpSettings)
    store: str = Field("sqlite:///tracecanary.db", description="Results store URL (sqlite:////abs/path.db).")
    store_health: StoreHealthSettings = Field(default_factory=StoreHealthSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    buffer: BufferSettings = Field(default_factory=BufferSettings)
    kafka: KafkaSpanSettings | None = Field(None, description="Kafka span source; unset = off.")
    max_concurrent_runs: int = Field(64, ge=1, description="Runs in flight at once, all probes together.")
    shutdown_grace: Duration = Field(30.0, description="On SIGTERM, how long in-flight runs may finish.")
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    api_token: str | None = Field(None, description="Bearer token for API writes (and reads with protect_reads).")
    protect_reads: bool = Field(False, description="Require the api_token for reads too (API and dashboard).")
    @field_validator("api_token")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None  # `${TRACECANARY_TOKEN:-}` unset means no token, not an empty one

    poll_interval: Duration = Field(2.0, description="Default poll interval of polling watchers.")


class ExtraSections(StrictModel):
    """``links:``, ``alerts:`` and ``demo:``."""

    links: LinkSettings = Field(default_factory=LinkSettings, description="Trace link URL templates by name.")
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    demo: dict[str, Any] | None = None

    def policy_names(self) -> set[str]:
        return set(self.alerts.policies) | {"default"} if not self.alerts.policies else set(self.alerts.policies)

    def reference_errors(self, integrations: Integrations | None = None) -> list[tuple[tuple[str | int, ...], str]]:
        """(path inside alerts, message) for each policy naming an unknown channel and, with
        ``integrations``, each channel lacking credentials here and in ``integrations:``."""
        return reference_problems(self.alerts, integrations)
