"""deploy/compose/kafka-cluster: the replicas' suite and the Collector's kafka exporter agree."""

from __future__ import annotations

from pathlib import Path

import yaml

from tracecanary.daemon.config.load import load_config

HERE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "kafka-cluster"


def test_replicas_collector_and_suite_agree() -> None:
    compose = yaml.safe_load((HERE / "compose.yaml").read_text())
    collector = yaml.safe_load((HERE / "otel-collector.yaml").read_text())
    cluster = load_config(HERE / "tracecanary").daemon.cluster
    svc = compose["services"]["tracecanary"]
    assert svc["deploy"]["replicas"] == 3
    assert cluster.mode == "kafka" and cluster.bootstrap == "kafka:9092"
    exporter = collector["exporters"]["kafka/otlp_spans"]
    assert exporter["partition_traces_by_id"] is True  # key = hex trace id: what the members predict
    assert exporter["traces"]["topic"] == cluster.spans_topic
    assert exporter["traces"]["encoding"] == "otlp_proto"
    # The exporter's default hasher is sarama_compat; an explicit one must match the daemons'.
    hasher = exporter.get("record_partitioner", {}).get("sticky_key", {}).get("hasher", "sarama_compat")
    assert hasher == cluster.partitioner
    init = " ".join(compose["services"]["kafka-init"]["command"])
    assert f"--topic {cluster.spans_topic} --partitions 12" in init
    assert f"--topic {cluster.results_topic}" in init
