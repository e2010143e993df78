"""`tracecanary check` end to end: real target, real receiver, reports, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import xmlschema
from aiohttp import web

from tests.fixtures.servers import serve_in_thread

HERE = Path(__file__).parent
SUREFIRE_XSD = HERE / "surefire-test-report-3.0.xsd"
"""Maven Surefire's report schema, verbatim from apache/maven-surefire at 14e8e1acd97e
(maven-surefire-plugin/src/site/resources/xsd/surefire-test-report-3.0.xsd; published at
https://maven.apache.org/surefire/maven-surefire-plugin/xsd/surefire-test-report-3.0.xsd)."""


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    """A system under test: /ok, /broken (500), /partial (a field missing)."""

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"signal_id": "s1", "enrichment": {"gex": 1}, "variant": "a"})

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    async def partial(request: web.Request) -> web.Response:
        return web.json_response({"signal_id": "s1"})

    with serve_in_thread([web.post("/ok", ok), web.post("/broken", broken), web.post("/partial", partial)]) as base:
        yield base


def write_suite(tmp: Path, base: str) -> Path:
    f = tmp / "suite.yaml"
    fields = "json_fields: [signal_id, enrichment, variant]"
    f.write_text(f"""
probes:
  - id: working
    kind: http
    tags: [tier-1]
    request: {{method: POST, url: "{base}/ok", json: {{test_id: "{{{{ run_id }}}}"}}}}
    expect: {{response: {{status: 200, {fields}}}}}
  - id: broken
    kind: http
    request: {{method: POST, url: "{base}/broken"}}
    expect: {{response: {{status: 200}}}}
  - id: partial
    kind: http
    request: {{method: POST, url: "{base}/partial"}}
    expect: {{response: {{status: 200, {fields}}}}}
  - id: unreachable
    kind: http
    timeout: 5s
    retries: {{count: 1, delay: 10ms}}
    request: {{method: POST, url: "http://127.0.0.1:9/nothing-listens-here"}}
""")
    return f


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", "check", *args,
                           "--otlp-http", "127.0.0.1:0", "--otlp-grpc", "none"],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_check_reports_and_exit_codes(tmp_path: Path, target: str) -> None:
    suite = write_suite(tmp_path, target)
    proc = check(str(suite), "--json", "r.json", "--junit", "r.xml", "--markdown", "r.md", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    for line in ("working", "WORKING", "BROKEN", "MISSING DATA", "ERROR"):
        assert line in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema_version"] == 1 and report["exit_code"] == 1
    states = {p["probe_id"]: p["state"] for p in report["probes"]}
    assert states == {"working": "WORKING", "broken": "BROKEN", "partial": "MISSING DATA", "unreachable": "ERROR"}
    by_id = {p["probe_id"]: p for p in report["probes"]}
    partial_findings = by_id["partial"]["runs"][0]["findings"]
    assert any(f["type"] == "response.missing_data" and "enrichment" in f["message"] for f in partial_findings)
    broken = by_id["broken"]["runs"][0]["findings"]
    assert any("500" in f["message"] for f in broken)
    # retries: every attempt is its own run with its own run id and trace id
    attempts = by_id["unreachable"]["runs"]
    assert [r["attempt"] for r in attempts] == [1, 2]
    assert attempts[1]["first_run_id"] == attempts[0]["run_id"]
    assert attempts[0]["trace_id"] != attempts[1]["trace_id"]
    assert [r["final"] for r in attempts] == [False, True]
    working = by_id["working"]
    assert working["runs"][0]["verdict"] == "pass" and working["p50_s"] is not None
    # structured logs of a run carry its trace id
    assert f"probe=working run_id={working['runs'][0]['run_id']}" in proc.stderr
    assert f"trace_id={working['runs'][0]['trace_id']}" in proc.stderr
    # JUnit: validates against Maven Surefire's XSD; one testcase per probe (retries are attempts of it),
    # named by the probe id alone; findings in the failure message
    schema = xmlschema.XMLSchema(str(SUREFIRE_XSD))
    schema.validate(str(tmp_path / "r.xml"))
    doc = schema.to_dict(str(tmp_path / "r.xml"))
    cases = {c["@name"]: c for c in doc["testcase"]}
    assert list(cases) == ["working", "broken", "partial", "unreachable"]
    assert (doc["@tests"], doc["@failures"], doc["@errors"]) == ("4", "2", "1")
    assert cases["broken"]["failure"][0]["@message"].startswith("status 500, expected 200")
    assert "failure" not in cases["working"] and "error" not in cases["working"]
    unreachable = cases["unreachable"]  # both attempts errored: the last is the <error>, the first a rerun
    assert unreachable["error"]["@type"] == "error" and len(unreachable["rerunError"]) == 1
    assert "attempt=1" in unreachable["rerunError"][0]["system-out"]
    run_ids = [r["run_id"] for p in report["probes"] for r in p["runs"]]
    assert not [name for name in cases for run_id in run_ids if run_id in name]
    md = (tmp_path / "r.md").read_text()
    assert "| partial | MISSING DATA |" in md


def test_check_selection_passes_and_gates(tmp_path: Path, target: str) -> None:
    suite = write_suite(tmp_path, target)
    proc = check(str(suite), "--probe", "tier-*", "--iterations", "5", "--concurrency", "3",
                 "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [p["probe_id"] for p in report["probes"]] == ["working"]
    assert report["probes"][0]["runs"].__len__() == 5
    gated = check(str(suite), "--probe", "working", "--fail-if", "p95 > 0ms", cwd=tmp_path)
    assert gated.returncode == 1
    assert "gate failed" in gated.stdout and "working: p95" in gated.stdout


def test_check_usage_and_config_errors_exit_2(tmp_path: Path, target: str) -> None:
    suite = write_suite(tmp_path, target)
    assert check(str(suite), "--fail-if", "p97 > 1s", cwd=tmp_path).returncode == 2
    assert check(str(suite), "--probe", "no-such-probe", cwd=tmp_path).returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("probes:\n  - id: x\n    kind: http\n    every: soon\n")
    proc = check(str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "bad.yaml:4 probes[x].every: invalid duration" in proc.stderr


def test_port_in_use_is_a_startup_error(tmp_path: Path, target: str) -> None:
    import socket

    suite = write_suite(tmp_path, target)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", "check", str(suite),
                               "--otlp-http", f"127.0.0.1:{port}", "--otlp-grpc", "none"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"address 127.0.0.1:{port} is already in use" in proc.stderr
