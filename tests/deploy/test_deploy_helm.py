"""deploy/helm/tracecanary: values agree with the daemon, and the chart renders (helm template) into a
single-replica Recreate Deployment whose probes, ports, args, volumes and suite are right."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.common import (
    CHART,
    DEFAULTS,
    clean_env,
    default_ports,
    find_helm,
    load_yaml,
    parse_run_args,
    port_of,
    run_tracecanary,
)

STORE = "sqlite:////var/lib/tracecanary/tracecanary.db"


def values() -> dict[str, Any]:
    data = load_yaml(CHART / "values.yaml")
    assert isinstance(data, dict)
    return data


def test_chart_metadata() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["name"] == "tracecanary" and chart["type"] == "application"
    pyproject = (CHART.parents[2] / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert version and chart["appVersion"] == version.group(1)


def test_values_agree_with_daemon_settings() -> None:
    v = values()
    assert v["probes"]["liveness"]["path"] == "/healthz"
    assert v["probes"]["readiness"]["path"] == "/readyz"
    ports = default_ports()
    assert (v["ports"]["http"], v["ports"]["otlpHttp"], v["ports"]["otlpGrpc"]) == (
        ports["http"], ports["otlp_http"], ports["otlp_grpc"])
    assert v["terminationGracePeriodSeconds"] > DEFAULTS.shutdown_grace
    assert v["store"] == STORE
    assert v["persistence"]["accessModes"] == ["ReadWriteOnce"]
    assert v["podSecurityContext"]["runAsUser"] == 10001  # the Dockerfile's uid


def test_values_suite_validates(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(values()["suite"])
    proc = run_tracecanary("validate", str(suite), env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _value_paths(data: Any, prefix: str = "") -> set[str]:
    out = {prefix} if prefix else set()
    if isinstance(data, dict):
        for k, v in data.items():
            out |= _value_paths(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def test_templates_reference_only_defined_values() -> None:
    """Static check of every template (needs no helm): each .Values path exists; actions are balanced."""
    known = _value_paths(values())
    for tpl in sorted((CHART / "templates").iterdir()):
        text = tpl.read_text()
        assert text.count("{{") == text.count("}}"), tpl.name
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            assert path.rstrip(".") in known, f"{tpl.name}: .Values.{path} is not in values.yaml"


def helm() -> str:
    found = find_helm()
    if found is None:
        assert os.environ.get("CI") != "true", "helm unavailable (bash deploy/helm/install-helm.sh)"
        raise AssertionError("helm unavailable and npm absent: run bash deploy/helm/install-helm.sh")
    return found


def render(*sets: str) -> dict[str, dict[str, Any]]:
    argv = [helm(), "template", "rel", str(CHART), "--namespace", "mon"]
    for s in sets:
        argv += ["--set", s]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object per kind"
    return by_kind


def test_helm_lint() -> None:
    proc = subprocess.run([helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rendered_deployment(tmp_path: Path) -> None:
    objs = render()
    assert set(objs) == {"ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Service", "Deployment"}
    dep = objs["Deployment"]["spec"]
    assert dep["replicas"] == 1 and dep["strategy"] == {"type": "Recreate"}
    pod = dep["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > DEFAULTS.shutdown_grace
    (c,) = pod["containers"]
    args = parse_run_args(c["args"])
    assert args.config == "/etc/tracecanary" and args.store == STORE
    assert args.log_format == "text" and args.log_level == logging.INFO
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    want = default_ports()
    assert ports == {"http": want["http"], "otlp-http": want["otlp_http"], "otlp-grpc": want["otlp_grpc"]}
    assert (port_of(args.listen), port_of(args.otlp_http), port_of(args.otlp_grpc)) == (
        want["http"], want["otlp_http"], want["otlp_grpc"])
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/var/lib/tracecanary"]]["persistentVolumeClaim"]["claimName"] == \
        objs["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes[mounts["/etc/tracecanary"]]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert "/tmp" in mounts and c["securityContext"]["readOnlyRootFilesystem"] is True
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in objs["Service"]["spec"]["ports"]}
    assert svc_ports == {"http": (want["http"], "http"), "otlp-http": (want["otlp_http"], "otlp-http"),
                         "otlp-grpc": (want["otlp_grpc"], "otlp-grpc")}
    assert objs["Service"]["spec"]["selector"].items() <= dep["template"]["metadata"]["labels"].items()
    # the ConfigMap's suite is what the daemon will load: it validates
    suite = tmp_path / "suite.yaml"
    suite.write_text(objs["ConfigMap"]["data"]["suite.yaml"])
    proc = run_tracecanary("validate", str(tmp_path), env=clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rendered_options() -> None:
    objs = render("serviceMonitor.enabled=true", "otlpGrpcEnabled=false", "persistence.enabled=false",
                  "secretEnv.OTLP_TOKEN.secret=tc-secrets", "secretEnv.OTLP_TOKEN.key=otlp-token",
                  "env.TARGET_URL=http://orders.shop.svc", "log.format=json", "log.level=debug")
    assert "PersistentVolumeClaim" not in objs
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = parse_run_args(c["args"])
    assert args.otlp_grpc == "none" and args.log_format == "json" and args.log_level == logging.DEBUG
    assert {p["name"] for p in c["ports"]} == {"http", "otlp-http"}
    assert {p["name"] for p in objs["Service"]["spec"]["ports"]} == {"http", "otlp-http"}
    env = {e["name"]: e for e in c["env"]}
    assert env["OTLP_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "tc-secrets", "key": "otlp-token"}}
    assert env["TARGET_URL"]["value"] == "http://orders.shop.svc"
    assert {v["name"]: v for v in pod["volumes"]}["data"] == {"name": "data", "emptyDir": {}}
    sm = objs["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= objs["Service"]["metadata"]["labels"].items()


def test_suite_change_rolls_the_pod() -> None:
    a = render()["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/suite"]
    b = render("suite=probes: []")["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/suite"]
    assert a != b


def test_two_replicas_run_active_standby(tmp_path: Path) -> None:
    """``replicas: 2``: PostgreSQL required, the cluster mode set for the suite, pods spread over nodes,
    every pod replaced at once (a standby never becomes Ready), no volume claim, no disruption budget."""
    objs = render("replicas=2", "store=postgresql://tc@pg.db.svc:5432/tracecanary")
    assert set(objs) == {"ServiceAccount", "ConfigMap", "Service", "Deployment"}  # no PVC, no PDB
    dep = objs["Deployment"]["spec"]
    assert dep["replicas"] == 2
    assert dep["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "100%"}}
    pod = dep["template"]["spec"]
    (c,) = pod["containers"]
    assert parse_run_args(c["args"]).store == "postgresql://tc@pg.db.svc:5432/tracecanary"
    assert {e["name"]: e.get("value") for e in c["env"]}["TRACECANARY_CLUSTER_MODE"] == "standby"
    assert {v["name"]: v for v in pod["volumes"]}["data"] == {"name": "data", "emptyDir": {}}
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= \
        dep["template"]["metadata"]["labels"].items()
    suite = tmp_path / "suite.yaml"
    suite.write_text(objs["ConfigMap"]["data"]["suite.yaml"])
    proc = run_tracecanary("validate", str(tmp_path), env={**clean_env(), "TRACECANARY_CLUSTER_MODE": "standby"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_replicas_need_postgresql() -> None:
    argv = [helm(), "template", "rel", str(CHART), "--set", "replicas=2"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "replicas > 1 runs active/standby on one PostgreSQL database" in proc.stderr
