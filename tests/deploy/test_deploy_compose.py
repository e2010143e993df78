"""deploy/compose, deploy/Dockerfile and the Collector config: structure, wiring and CLI agreement."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import yaml

from tests.deploy.common import (
    COMPOSE_DIR,
    DEFAULTS,
    DEPLOY,
    ROOT,
    SUITE_DIR,
    clean_env,
    collector,
    compose,
    default_ports,
    parse_run_args,
    port_of,
    run_tracecanary,
)
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.config.settings import TelemetrySettings
from tracecanary.daemon.observe.telemetry import is_own_endpoint


def test_every_deploy_file_parses() -> None:
    yamls = [p for p in DEPLOY.rglob("*.y*ml") if "templates" not in p.parts]
    assert len(yamls) >= 5
    for p in yamls:
        docs = list(yaml.safe_load_all(p.read_text(encoding="utf-8")))
        assert docs and all(d is not None for d in docs), p
    for p in DEPLOY.rglob("*.json"):
        json.loads(p.read_text(encoding="utf-8"))


def test_compose_suite_validates() -> None:
    proc = run_tracecanary("validate", str(SUITE_DIR), env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok (1 probes)" in proc.stdout


def test_compose_suite_wires_both_intake_paths() -> None:
    d = load_config(SUITE_DIR).daemon
    assert d.kafka is not None
    assert d.kafka.bootstrap == "kafka:9092" and d.kafka.spans_topics == ["otlp_spans"]
    assert d.store == "sqlite:////var/lib/tracecanary/tracecanary.db"
    assert d.shutdown_grace == DEFAULTS.shutdown_grace
    assert d.telemetry.otlp_endpoint == "http://otel-collector:4318"


def test_compose_tracecanary_service_matches_cli() -> None:
    svc = compose()["services"]["tracecanary"]
    command = svc["command"]
    args = parse_run_args(command)
    assert args.config == "/etc/tracecanary"
    assert args.store == "sqlite:////var/lib/tracecanary/tracecanary.db"
    ports = default_ports()
    assert (port_of(args.listen), port_of(args.otlp_http), port_of(args.otlp_grpc)) == (
        ports["http"], ports["otlp_http"], ports["otlp_grpc"])
    assert all(a.startswith("0.0.0.0:") for a in (args.listen, args.otlp_http, args.otlp_grpc))
    # `tracecanary run --help` (a real subprocess) lists every flag the compose command uses
    help_text = run_tracecanary("run", "--help").stdout
    for flag in (a for a in command if a.startswith("--")):
        assert flag in help_text, flag
    published = {int(p.split(":")[-1]) for p in svc["ports"]}
    assert published == {ports["http"]}  # OTLP stays on the compose network, via the Collector
    mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
    assert (COMPOSE_DIR / mounts["/etc/tracecanary"]).resolve() == SUITE_DIR
    assert mounts["/var/lib/tracecanary"] in compose()["volumes"]
    assert svc["stop_signal"] == "SIGTERM"
    assert float(svc["stop_grace_period"].rstrip("s")) > DEFAULTS.shutdown_grace
    assert (COMPOSE_DIR / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    env = svc["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"


def test_compose_telemetry_endpoint_is_not_refused_as_a_feedback_loop() -> None:
    """The daemon refuses to export to its own receiver; the Collector's address must not look like one."""
    args = parse_run_args(compose()["services"]["tracecanary"]["command"])
    endpoint = compose()["services"]["tracecanary"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert not is_own_endpoint(endpoint, [args.otlp_http, args.otlp_grpc])
    assert is_own_endpoint("http://127.0.0.1:4318", [args.otlp_http])  # the check itself bites


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    ins = dockerfile_instructions()

    def get(word: str) -> list[str]:
        return [v for w, v in ins if w == word]

    assert get("FROM") == ["python:3.11-slim"]
    assert get("USER") and not get("USER")[-1].startswith(("root", "0"))
    assert get("STOPSIGNAL") == ["SIGTERM"]
    assert sorted(int(p) for p in get("EXPOSE")[0].split()) == sorted(default_ports().values())
    assert "/healthz" in get("HEALTHCHECK")[0]
    assert json.loads(get("ENTRYPOINT")[0]) == ["tracecanary"]
    cmd = json.loads(re.sub(r"\s+", " ", get("CMD")[0]))
    assert cmd == compose()["services"]["tracecanary"]["command"]  # the image default = the compose command
    assert any("pip install ." in v for v in get("RUN"))
    # the COPY set covers everything `pip install .` needs: pyproject's package-dir folders + metadata
    copied = {shlex.split(v)[0] for v in get("COPY")} | set(shlex.split(get("COPY")[0])[:-1])
    pyproject = (ROOT / "pyproject.toml").read_text()
    package_dirs = set(re.findall(r'"tracecanary[.\w]*" = "(\w+)"', pyproject))
    assert package_dirs and package_dirs <= copied, package_dirs - copied
    assert {"pyproject.toml", "README.md"} <= copied


def test_compose_collector_and_broker_wiring() -> None:
    services = compose()["services"]
    otel = services["otel-collector"]
    assert otel["image"].startswith("otel/opentelemetry-collector-contrib:")
    version = tuple(int(x) for x in otel["image"].split(":")[1].split("."))
    assert version >= (0, 124, 0)  # kafka exporter's traces::topic / traces::encoding
    config_mount = next(v for v in otel["volumes"] if v.endswith(":ro"))
    assert (COMPOSE_DIR / config_mount.split(":")[0]).resolve() == COMPOSE_DIR / "otel-collector.yaml"
    assert config_mount.split(":")[1] in otel["command"][0]
    kafka_env = services["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


def _referenced(pipeline: dict[str, Any]) -> dict[str, list[str]]:
    return {kind: pipeline.get(kind, []) for kind in ("receivers", "processors", "exporters")}


def test_collector_pipelines_reference_defined_components() -> None:
    cfg = collector()
    service = cfg["service"]
    for ext in service.get("extensions", []):
        assert ext in cfg["extensions"], ext
    used: set[str] = set()
    for name, pipeline in service["pipelines"].items():
        assert name.split("/")[0] == "traces", name
        assert pipeline["receivers"] and pipeline["exporters"], name
        for kind, ids in _referenced(pipeline).items():
            for cid in ids:
                assert cid in cfg[kind], f"pipeline {name}: {kind[:-1]} {cid} is not defined"
                used.add(f"{kind}:{cid}")
    defined = {f"{kind}:{cid}" for kind in ("receivers", "processors", "exporters") for cid in cfg[kind]}
    assert defined == used, f"defined but unused: {defined - used}"


def test_collector_fans_out_to_tracecanary_by_otlp_and_kafka() -> None:
    cfg = collector()
    pipeline = cfg["service"]["pipelines"]["traces/tracecanary"]
    assert "tail_sampling" not in pipeline["processors"]  # tracecanary sees every span, promptly
    otlp = cfg["exporters"]["otlphttp/tracecanary"]
    m = re.fullmatch(r"http://([\w-]+):(\d+)", otlp["endpoint"])
    assert m, otlp["endpoint"]
    args = parse_run_args(compose()["services"]["tracecanary"]["command"])
    assert m.group(1) == "tracecanary" and int(m.group(2)) == port_of(args.otlp_http)
    assert otlp["headers"]["Authorization"] == "Bearer ${env:OTLP_TOKEN}"
    assert compose()["services"]["otel-collector"]["environment"]["OTLP_TOKEN"] == "${OTLP_TOKEN:-}"
    kafka = cfg["exporters"]["kafka/otlp_spans"]
    suite_kafka = load_config(SUITE_DIR).daemon.kafka
    assert suite_kafka is not None
    assert kafka["brokers"] == [suite_kafka.bootstrap]
    assert kafka["traces"] == {"topic": "otlp_spans", "encoding": "otlp_proto"}
    assert kafka["traces"]["topic"] in suite_kafka.spans_topics
    assert kafka["partition_traces_by_id"] is True
    assert kafka["producer"]["compression"] in ("none", "gzip")  # aiokafka decodes these without extras
    assert {"otlphttp/tracecanary", "kafka/otlp_spans"} <= set(pipeline["exporters"])
    # the daemon's own spans never loop back in: the filter drops its service.name
    rule = cfg["processors"]["filter/drop_tracecanary_self"]["traces"]["span"][0]
    assert f'resource.attributes["service.name"] == "{TelemetrySettings().service_name}"' == rule
    assert cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


def test_tail_sampling_keep_rule_matches_probe_tracestate() -> None:
    policies = collector()["processors"]["tail_sampling"]["policies"]
    keep = policies[0]
    assert keep["type"] == "ottl_condition"
    (condition,) = keep["ottl_condition"]["span"]
    m = re.fullmatch(r'IsMatch\(trace_state, "(.*)"\)', condition)
    assert m, condition
    pattern = re.compile(m.group(1).encode().decode("unicode_escape"))  # OTTL string literal -> regex
    for tracestate in ("tracecanary=r-0f3a", "congo=t61rcWkgMzE,tracecanary=r-0f3a", "a=1, tracecanary=x"):
        assert pattern.search(tracestate), tracestate
    for tracestate in ("", "nottracecanary=1", "congo=tracecanary"):
        assert not pattern.search(tracestate), tracestate
    assert {p["type"] for p in policies} >= {"ottl_condition", "probabilistic"}


def test_suite_dir_holds_only_the_suite() -> None:
    """Every *.yaml in the mounted directory is loaded: nothing else may sit there."""
    files = sorted(p.name for p in SUITE_DIR.iterdir())
    assert files == ["suite.yaml"]
