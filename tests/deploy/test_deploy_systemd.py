"""deploy/systemd: the unit verifies with systemd-analyze and carries the settings the daemon needs."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.common import DEFAULTS, DEPLOY, UNIT, parse_run_args
from tracecanary.assertions.units import parse_duration_s

VENV_BIN = "/opt/tracecanary/.venv/bin/tracecanary"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: repeated keys accumulate, `#`/`;` comments, no continuation lines used."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {n}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"line {n}: not key=value: {raw!r}"
        assert not line.endswith("\\"), f"line {n}: continuation lines are not used"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


def test_unit_key_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = unit["Service"]
    assert one(svc, "Type") == "exec"
    argv = shlex.split(one(svc, "ExecStart"))
    assert argv[:3] == [VENV_BIN, "run", "/etc/tracecanary"]
    args = parse_run_args(argv[1:])  # the real CLI parser accepts every flag
    assert args.store == "sqlite:////var/lib/tracecanary/tracecanary.db"
    assert one(svc, "StateDirectory") == "tracecanary"  # -> /var/lib/tracecanary, owned by the service user
    assert one(svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(svc, "KillSignal") == "SIGTERM"
    assert parse_duration_s(one(svc, "TimeoutStopSec") + "s") > DEFAULTS.shutdown_grace
    assert one(svc, "EnvironmentFile") == "-/etc/tracecanary/env"
    assert one(svc, "DynamicUser") == "yes" or one(svc, "User") == "tracecanary"
    assert one(svc, "RestartPreventExitStatus") == "2"  # exit 2 = config/startup problem
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictNamespaces": "yes"}.items():
        assert one(svc, key) == value, key
    assert one(svc, "RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert one(svc, "CapabilityBoundingSet") == ""
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's real entry point (verify checks it exists)."""
    exe = Path(sys.executable).parent / "tracecanary"
    assert exe.exists(), exe
    text = UNIT.read_text().replace(VENV_BIN, str(exe))
    path = tmp_path / "tracecanary.service"
    path.write_text(text)
    return path


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # no systemd tools: the INI structure is still checked by test_unit_key_settings
        parse_unit(UNIT.read_text())
        return
    path = _verifiable_copy(tmp_path)
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    # verify reports unknown keys, bad values and missing executables on stderr
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    # a typo must be caught by the same check (guards against verify silently accepting everything)
    bad = tmp_path / "bad.service"
    bad.write_text(path.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    proc = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert "Unknown key" in proc.stderr


def test_unit_security_exposure(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    proc = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(_verifiable_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    assert float(m.group(1)) <= 2.0, m.group(0)  # systemd rates <= 2.0 as "OK"


def test_env_example_is_an_environment_file() -> None:
    names = []
    for n, raw in enumerate((DEPLOY / "systemd" / "env.example").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", line), f"line {n}: {raw!r}"
        names.append(line.split("=", 1)[0])
    assert len(names) == len(set(names))
    assert {"OTLP_TOKEN", "TRACECANARY_TOKEN", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= set(names)
