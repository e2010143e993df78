"""``requires:`` through the real ``check`` command: a missing environment variable, a target nothing
listens on and a missing file each skip their probe with the reason — printed as SKIPPED, JUnit
``<skipped message=…/>`` (validated against Surefire's XSD), JSON and Markdown — exit 0, and 1 with
``--fail-on-skip``. A ``${VAR}`` the probe's ``requires.env`` names is no config error when unset."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import xmlschema

from tests.fixtures.metrics_sut import metrics_sut

SUREFIRE_XSD = Path(__file__).parent / "surefire-test-report-3.0.xsd"
UNSET = "TRACECANARY_TEST_UNSET_TOKEN"
SET = "TRACECANARY_TEST_SET_TOKEN"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound by this test and never listened on: a connection there is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


SUITE = """
probes:
  - id: needs-token
    kind: http
    requires: {{env: [{unset}]}}
    request: {{method: POST, url: "{base}/webhook", headers: {{Authorization: "Bearer ${{{unset}}}"}}}}
  - id: needs-service
    kind: http
    requires: {{reachable: ["http://127.0.0.1:{closed}/health"], reachable_timeout: 2s}}
    request: {{method: POST, url: "{base}/webhook"}}
  - id: needs-file
    kind: http
    retries: {{count: 2, delay: 10ms}}   # a skip is final: never retried
    requires: {{files: ["{tmp}/client.pem"]}}
    request: {{method: POST, url: "{base}/webhook"}}
  - id: has-everything
    kind: http
    requires: {{env: [{set}], reachable: ["{base}/metrics", "tcp://{host}"], files: ["{tmp}/suite.yaml"]}}
    request: {{method: POST, url: "{base}/webhook", headers: {{Authorization: "Bearer ${{{set}}}"}}}}
    expect: {{response: {{status: 200}}}}
"""


def check(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != UNSET} | {SET: "t0k3n-value"}
    return subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", "check", "suite.yaml",
                           "--otlp-http", "127.0.0.1:0", "--otlp-grpc", "none", *args],
                          capture_output=True, text=True, timeout=180, cwd=tmp, env=env)


def test_unmet_preconditions_skip_with_their_reasons(tmp_path: Path, closed_port: int) -> None:
    with metrics_sut() as base:
        (tmp_path / "suite.yaml").write_text(SUITE.format(
            base=base, unset=UNSET, set=SET, closed=closed_port, tmp=tmp_path, host=base.removeprefix("http://")))
        proc = check(tmp_path, "--junit", "r.xml", "--json", "r.json", "--markdown", "r.md")
        strict = check(tmp_path, "--fail-on-skip")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert strict.returncode == 1, strict.stdout + strict.stderr
    reasons = {
        "needs-token": f"{UNSET} is not set",
        "needs-service": f"http://127.0.0.1:{closed_port}/health is not reachable",
        "needs-file": f"{tmp_path}/client.pem does not exist",
    }
    out = " ".join(proc.stdout.split())  # the table folds long cells
    assert out.count("SKIPPED") == 3
    for reason in reasons.values():
        assert reason in out

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit_code"] == 0
    probes = {p["probe_id"]: p for p in report["probes"]}
    assert probes["has-everything"]["state"] == "WORKING"
    for pid, reason in reasons.items():
        probe = probes[pid]
        [run] = probe["runs"]
        assert (probe["state"], probe["skipped"], probe["error_rate"]) == ("SKIPPED", 1, 0.0)
        assert (run["status"], run["verdict"], run["findings"]) == ("skipped", None, [])
        assert reason in run["skip_reason"] and probe["reason"].startswith("skipped: ")
        assert run["response"] is None  # nothing was sent

    schema = xmlschema.XMLSchema(str(SUREFIRE_XSD))
    schema.validate(str(tmp_path / "r.xml"))
    doc = schema.to_dict(str(tmp_path / "r.xml"))
    assert (doc["@tests"], doc["@failures"], doc["@errors"], doc["@skipped"]) == ("4", "0", "0", "3")
    cases = {c["@name"]: c for c in doc["testcase"]}
    for pid, reason in reasons.items():
        assert reason in cases[pid]["skipped"]["@message"]
        assert "verdict=skipped" in cases[pid]["system-out"]
    assert "skipped" not in cases["has-everything"]

    md = (tmp_path / "r.md").read_text()
    assert "| needs-token | SKIPPED |" in md and f"skipped: {UNSET} is not set" in md


def test_unset_variable_not_named_by_requires_is_still_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(f"""
probes:
  - id: needs-token
    kind: http
    requires: {{env: [{SET}]}}
    request: {{url: "http://127.0.0.1:9/x", headers: {{Authorization: "Bearer ${{{UNSET}}}"}}}}
""")
    proc = check(tmp_path)
    assert proc.returncode == 2
    assert f"probes[needs-token].request.headers.Authorization: environment variable {UNSET} is not set" in proc.stderr
