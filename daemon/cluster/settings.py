"""``daemon.cluster``: how replicas of one config share the work (single, standby, kafka)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from tracecanary.assertions.units import Duration
from tracecanary.model import StrictModel, cross_field_rule

ClusterMode = Literal["single", "standby", "kafka"]
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    """A store URL of the PostgreSQL backend (``postgresql://…`` or ``postgres://…``)."""
    return url.startswith(POSTGRES_SCHEMES)


def _kafka_fields(fields: Mapping[str, Any]) -> str | None:
    if fields.get("mode") != "kafka":
        return None
    missing = [name for name in ("bootstrap", "group") if not fields.get(name)]
    return f"mode kafka needs {' and '.join(missing)}" if missing else None


class ClusterSettings(StrictModel):
    """``daemon.cluster``: ``single`` (one process, default), ``standby`` (replicas on one PostgreSQL store,
    one active, elected with an advisory lock) or ``kafka`` (replicas in one consumer group share the probes)."""

    mode: ClusterMode = Field("single", description="single | standby (needs a postgresql:// store) | kafka "
                              "(needs a postgresql:// store, bootstrap and group).")
    bootstrap: str | None = Field(None, description="mode kafka: Kafka bootstrap servers (host:port, comma-separated).")
    group: str | None = Field(None, description="mode kafka: the consumer group the replicas form.")
    spans_topic: str = Field("otlp_spans", description="mode kafka: the topic the OTel Collector's kafka exporter "
                             "writes (partition_traces_by_id).")
    partitioner: Literal["sarama_compat", "murmur2"] = Field(
        "sarama_compat", description="mode kafka: the partitioner of the producer writing spans_topic "
        "(the Collector: sarama_compat; Java clients: murmur2).")
    results_topic: str = Field("tracecanary.results", description="mode kafka: where run results are published.")
    session_timeout: Duration = Field(
        10.0, gt=0, description="mode kafka: consumer group session timeout: the broker drops a silent member "
        "after it, and the member's probes move (plus the broker's join round); leases lapse after it too. "
        "Members heartbeat every third of it, at most every 1s.")

    _kafka = cross_field_rule(_kafka_fields)


def _mode_of(cluster: Any) -> str | None:
    """The mode of ``daemon.cluster`` as validated or as written (None when it cannot be told)."""
    if isinstance(cluster, ClusterSettings):
        return cluster.mode
    if isinstance(cluster, Mapping):
        mode = cluster.get("mode", "single")
        return mode if isinstance(mode, str) else None
    return None


def store_rule(fields: Mapping[str, Any]) -> str | None:
    """``daemon:`` rule: standby and kafka keep their state in PostgreSQL. Without ``daemon.store`` the
    store comes from ``--store``, checked at start (exit 2)."""
    mode, store = _mode_of(fields.get("cluster")), fields.get("store")
    if mode in ("standby", "kafka") and isinstance(store, str) and not is_postgres_url(store):
        return f"mode {mode} needs a postgresql:// store (daemon.store is {_scheme(store)})"
    return None


def kafka_source_rule(fields: Mapping[str, Any]) -> str | None:
    """``daemon:`` rule: in mode kafka the replicas consume the spans topic themselves."""
    if _mode_of(fields.get("cluster")) == "kafka" and fields.get("kafka") is not None:
        return ("daemon.kafka cannot be set with cluster mode kafka: the replicas consume "
                "daemon.cluster.spans_topic themselves")
    return None


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://…" if sep else repr(url)
