"""JUnit from `check` in Maven Surefire's dialect: stable test names, retries as reruns, flaky passes as
``<flakyFailure>`` (never ``<failure>``: the XML agrees with the exit code). Every document is validated
against Surefire's own ``surefire-test-report-3.0.xsd``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from aiohttp import web

from tests.fixtures.servers import serve_in_thread
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.cli.junit import junit_xml
from tracecanary.daemon.cli.report import summarize
from tracecanary.daemon.store.base import RunRecord, RunStatus

SUREFIRE_XSD = Path(__file__).parent / "surefire-test-report-3.0.xsd"


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SUREFIRE_XSD))


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    """/flaky answers 500 to every odd-numbered request and 200 to every even one; /down always 503."""
    calls = [0]
    lock = threading.Lock()

    async def flaky(request: web.Request) -> web.Response:
        with lock:
            calls[0] += 1
            n = calls[0]
        if n % 2:
            return web.json_response({"error": "cold cache"}, status=500)
        return web.json_response({"ok": True})

    async def down(request: web.Request) -> web.Response:
        return web.Response(text="maintenance", status=503)

    with serve_in_thread([web.post("/flaky", flaky), web.post("/down", down)]) as base:
        yield base


def _check(tmp: Path, base: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    suite = tmp / "suite.yaml"
    suite.write_text(f"""
probes:
  - id: flaky
    kind: http
    retries: {{count: 2, delay: 10ms}}
    request: {{method: POST, url: "{base}/flaky"}}
    expect: {{response: {{status: 200}}}}
  - id: down
    kind: http
    retries: {{count: 1, delay: 10ms}}
    request: {{method: POST, url: "{base}/down"}}
    expect: {{response: {{status: 200}}}}
""")
    proc = subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", "check", str(suite), *args,
                           "--junit", "r.xml", "--json", "r.json", "--otlp-http", "127.0.0.1:0", "--otlp-grpc",
                           "none"], capture_output=True, text=True, timeout=120, cwd=tmp)
    doc = xmlschema.XMLSchema(str(SUREFIRE_XSD)).to_dict(str(tmp / "r.xml"))
    return proc, doc


def test_flaky_pass_is_a_flaky_failure_and_names_are_stable_across_builds(tmp_path: Path, target: str) -> None:
    proc, doc = _check(tmp_path, target, "--probe", "flaky", "--iterations", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # every iteration passed on its retry
    xmlschema.XMLSchema(str(SUREFIRE_XSD)).validate(str(tmp_path / "r.xml"))
    assert (doc["@tests"], doc["@failures"], doc["@errors"], doc["@skipped"]) == ("2", "0", "0", "0")
    cases = {c["@name"]: c for c in doc["testcase"]}
    assert list(cases) == ["flaky iteration 1", "flaky iteration 2"]
    for case in cases.values():
        assert "failure" not in case and "error" not in case and "rerunFailure" not in case
        [flake] = case["flakyFailure"]
        assert flake["@type"] == "fail"
        assert flake["@message"] == 'status 500, expected 200; body: "{\\"error\\": \\"cold cache\\"}"'
        assert "expect.response.status: status 500, expected 200" in flake["stackTrace"]
        assert "attempt=1" in flake["system-out"] and "trace_id=" in flake["system-out"]
        assert "flaky: passed on attempt 2" in case["system-out"]
    [probe] = json.loads((tmp_path / "r.json").read_text())["probes"]
    assert probe["flaky"] == 2 and probe["state"] == "WORKING"
    assert [(r["iteration"], r["attempt"]) for r in sorted(probe["runs"], key=lambda r: r["started_ns"])] == [
        (1, 1), (1, 2), (2, 1), (2, 2)]
    # a second build names the same tests (no run id, no attempt in any name)
    again = tmp_path / "again"
    again.mkdir()
    _, doc2 = _check(again, target, "--probe", "flaky", "--iterations", "2")
    assert [c["@name"] for c in doc2["testcase"]] == list(cases)


def test_a_probe_that_fails_every_attempt_is_a_failure_with_reruns(tmp_path: Path, target: str,
                                                                   schema: xmlschema.XMLSchema) -> None:
    proc, doc = _check(tmp_path, target, "--probe", "down")
    assert proc.returncode == 1
    schema.validate(str(tmp_path / "r.xml"))
    [case] = doc["testcase"]
    assert case["@name"] == "down" and case["@classname"] == "tracecanary.http"
    [failure] = case["failure"]
    assert failure["@type"] == "fail" and failure["@message"] == 'status 503, expected 200; body: "maintenance"'
    [rerun] = case["rerunFailure"]
    assert rerun["@type"] == "fail" and "attempt=1" in rerun["system-out"] and "flakyFailure" not in case
    assert (doc["@tests"], doc["@failures"], doc["@errors"]) == ("1", "1", "0")


# --- every combination of attempts, from records -------------------------------------------------

def _run(n: int, verdict: Verdict | None, *, first: str = "r1", final: bool = False,
         aborted: bool = False) -> RunRecord:
    sev = verdict if verdict is not None else Verdict.ERROR
    findings = [] if verdict is None or verdict.ok else [
        Finding(type="x", severity=sev, message=f"attempt {n} {sev.value}s", path="expect.x")]
    return RunRecord(run_id=first if n == 1 else f"{first}-{n}", probe_id="p", kind="http", attempt=n,
                     first_run_id=first, trace_id=f"{n:032x}", started_ns=n * 10**9, finished_ns=n * 10**9 + 5 * 10**8,
                     status=RunStatus.ABORTED if aborted else RunStatus.FINISHED, verdict=verdict,
                     abort_reason="shutdown" if aborted else None, findings=findings, final=final)


def _case(schema: xmlschema.XMLSchema, tmp: Path, runs: list[RunRecord]) -> tuple[dict[str, Any], dict[str, Any]]:
    path = tmp / "r.xml"
    path.write_text(junit_xml(summarize(runs, ["p"])))
    schema.validate(str(path))
    doc = schema.to_dict(str(path))
    [case] = doc["testcase"]
    return doc, case


def test_error_then_pass_is_a_flaky_error(schema: xmlschema.XMLSchema, tmp_path: Path) -> None:
    doc, case = _case(schema, tmp_path, [_run(1, Verdict.ERROR), _run(2, Verdict.PASS, final=True)])
    assert [e["@type"] for e in case["flakyError"]] == ["error"] and "error" not in case
    assert case["flakyError"][0]["stackTrace"] == "expect.x: attempt 1 errors"
    assert (doc["@failures"], doc["@errors"]) == ("0", "0")


def test_unknown_then_fail_then_pass_keeps_schema_order(schema: xmlschema.XMLSchema, tmp_path: Path) -> None:
    _, case = _case(schema, tmp_path, [_run(1, Verdict.UNKNOWN), _run(2, Verdict.FAIL),
                                       _run(3, Verdict.DEGRADED, final=True)])
    assert [e["@type"] for e in case["flakyFailure"]] == ["fail"]
    assert [e["@type"] for e in case["flakyError"]] == ["unknown"]


def test_fail_then_error_is_an_error_after_its_rerun_failure(schema: xmlschema.XMLSchema, tmp_path: Path) -> None:
    doc, case = _case(schema, tmp_path, [_run(1, Verdict.FAIL), _run(2, Verdict.ERROR, final=True)])
    assert case["error"]["@type"] == "error" and case["error"]["@message"] == "attempt 2 errors"
    assert [e["@type"] for e in case["rerunFailure"]] == ["fail"] and "failure" not in case
    assert (doc["@failures"], doc["@errors"]) == ("0", "1")


@pytest.mark.parametrize(("verdict", "aborted", "kind"), [
    (Verdict.UNKNOWN, False, "unknown"), (None, True, "aborted"), (Verdict.ERROR, False, "error")])
def test_single_attempt_errors(schema: xmlschema.XMLSchema, tmp_path: Path, verdict: Verdict | None,
                               aborted: bool, kind: str) -> None:
    _, case = _case(schema, tmp_path, [_run(1, verdict, final=True, aborted=aborted)])
    assert case["error"]["@type"] == kind and case["@name"] == "p"
    if aborted:
        assert case["error"]["@message"] == "aborted: shutdown"


def test_iterations_name_each_case_and_keep_their_order(schema: xmlschema.XMLSchema, tmp_path: Path) -> None:
    runs = [_run(1, Verdict.PASS, first="b", final=True), _run(1, Verdict.PASS, first="a", final=True)]
    path = tmp_path / "r.xml"
    path.write_text(junit_xml(summarize(runs, ["p"], {"a": 1, "b": 2}), iterations=2))
    schema.validate(str(path))
    assert [c["@name"] for c in schema.to_dict(str(path))["testcase"]] == ["p iteration 1", "p iteration 2"]
