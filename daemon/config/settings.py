"""Daemon settings (the ``daemon:`` section) and the other top-level sections beside ``probes:``."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from tracecanary.assertions.units import Duration
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.cluster.settings import ClusterSettings, kafka_source_rule, store_rule
from tracecanary.daemon.config.links import LinkSettings
from tracecanary.daemon.spans.buffer import BufferSettings
from tracecanary.daemon.spans.kafka import KafkaSpanSettings
from tracecanary.daemon.spans.receiver import OtlpSettings
from tracecanary.daemon.store.guard import StoreHealthSettings
from tracecanary.model import CREDENTIAL, StrictModel, cross_field_rule

_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def listen_address(value: str) -> str:
    """Check ``host:port`` (``[::1]:8080``, ``0.0.0.0:8080``, ``localhost:0``) at load, not at bind time."""
    host, sep, port = value.rpartition(":")
    bad = f"invalid listen address {value!r}: expected host:port, e.g. 127.0.0.1:8080"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(bad)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as e:
            raise ValueError(bad) from e
        return value
    if host and not _is_ip(host) and (not _HOSTNAME_RE.fullmatch(host) or host.replace(".", "").isdigit()):
        raise ValueError(bad)
    return value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


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

    listen: str = Field("127.0.0.1:8080", description="API, dashboard, /metrics, /healthz, /hooks/github (host:port).")
    public_url: str | None = Field(None, description="Dashboard URL used in alerts (default: http://<listen>).")
    otlp: OtlpSettings = Field(default_factory=OtlpSettings)
    store: str = Field("sqlite:///tracecanary.db", description="Results store URL: sqlite:////abs/path.db (four "
                       "slashes: an absolute path) or postgresql://user:password@host:5432/db (also "
                       "postgres://); the schema is created or migrated at start.")
    store_health: StoreHealthSettings = Field(default_factory=StoreHealthSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    buffer: BufferSettings = Field(default_factory=BufferSettings)
    kafka: KafkaSpanSettings | None = Field(None, description="Kafka span source; unset = off.")
    cluster: ClusterSettings = Field(default_factory=ClusterSettings,
                                     description="How replicas share the work: single, standby or kafka.")
    max_concurrent_runs: int = Field(64, ge=1, description="Runs in flight at once, all probes together.")
    shutdown_grace: Duration = Field(30.0, description="On SIGTERM, how long in-flight runs may finish.")
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    api_token: Annotated[str | None, CREDENTIAL] = Field(
        None, description="Bearer token for API writes (and reads with protect_reads).")
    protect_reads: bool = Field(False, description="Require the api_token for reads too (API and dashboard).")
    public_status: bool = Field(False, description="With protect_reads: keep the status badges (/badge/<probe>.svg) "
                                "and the read-only status page (/status) open.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return listen_address(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"invalid public_url {value!r}: expected an http:// or https:// URL")
        return value

    @field_validator("api_token")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None  # `${TRACECANARY_TOKEN:-}` unset means no token, not an empty one

    poll_interval: Duration = Field(2.0, description="Default poll interval of polling watchers.")

    _cluster_store = cross_field_rule(store_rule, at="cluster")
    _cluster_kafka = cross_field_rule(kafka_source_rule, at="kafka")


class ExtraSections(StrictModel):
    """``links:``, ``alerts:`` and ``demo:``."""

    links: LinkSettings = Field(default_factory=LinkSettings, description="Trace link URL templates by name.")
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    demo: dict[str, Any] | None = None

