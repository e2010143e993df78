"""`tracecanary assert` / `tracecanary expect` over real trace files (OTLP JSON Lines)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.assertions.compact import build_spans, trace_id
from tracecanary.daemon.cli.traces import cmd_assert, cmd_expect
from tracecanary.daemon.spans.files import write_jsonl

TRACE = [
    {"name": "POST /webhook", "service": "ingest", "kind": "server", "id": "root", "children": [
        {"name": "validate-payload", "service": "ingest"},
        {"name": "orders publish", "id": "pub", "kind": "producer", "service": "ingest", "start": 2},
    ]},
    {"name": "orders process", "trace": "t2", "kind": "consumer", "service": "worker", "links": ["pub"],
     "children": [{"name": "chat.postMessage", "service": "worker", "kind": "client",
                   "attrs": {"slack.channel": "C0ALERT", "request.id": "9f2c1a7be0d44e21aa01"}}]},
]

EXPECT = {
    "tree": [{"span": "POST /webhook", "children": [
        {"span": "validate-payload"},
        {"span": "orders publish", "linked": [{"span": "orders process",
                                               "descendants": [{"span": "chat.postMessage"}]}]}]}],
    "forbid": [{"status": "error"}],
}


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.jsonl"
    write_jsonl(path, build_spans(TRACE))
    return path


def _expect_file(tmp_path: Path, doc: object, name: str = "expect.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_assert_pass_text(trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cmd_assert([str(trace_file)], str(_expect_file(tmp_path, EXPECT)), None, "text")
    out = capsys.readouterr().out
    assert code == 0
    assert "verdict: pass" in out
    assert "expect.trace.tree[0].children[1].linked[0]" in out


def test_assert_fail_json_names_missing_node(trace_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"tree": [{"span": "POST /webhook", "children": [{"span": "fetch-gex-data", "service": "enrich"}]}]}
    code = cmd_assert([str(trace_file)], str(_expect_file(tmp_path, doc)), None, "json")
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["verdict"] == "fail"
    missing = report["missing"][0]
    assert missing["path"] == "expect.trace.tree[0].children[0]"
    assert missing["closest"][0]["label"].startswith('span "')
    assert report["span_count"] == 5


def test_assert_trace_id_narrows_anchors_but_keeps_linked(trace_file: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    exp = _expect_file(tmp_path, EXPECT)
    assert cmd_assert([str(trace_file)], str(exp), trace_id("t1"), "text") == 0
    # Anchored in the consumer's trace, the producer trace (which it links to) still counts.
    assert cmd_assert([str(trace_file)], str(exp), trace_id("t2"), "text") == 0
    assert cmd_assert([str(trace_file)], str(exp), "0" * 32, "text") == 2
    assert "is not in" in capsys.readouterr().err


def test_assert_bad_inputs_name_the_file(trace_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tree:\n  - span: x\n    max_duration: fast\n")
    assert cmd_assert([str(trace_file)], str(bad), None, "text") == 2
    err = capsys.readouterr().err
    assert f"{bad}:3 tree[0].max_duration" in err and "invalid duration 'fast'" in err
    unknown = _expect_file(tmp_path, {"tree": [{"spam": "x"}]}, "unknown.yaml")
    assert cmd_assert([str(trace_file)], str(unknown), None, "text") == 2
    assert "tree[0].spam: Extra inputs are not permitted" in capsys.readouterr().err
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert cmd_assert([str(junk)], str(_expect_file(tmp_path, EXPECT)), None, "text") == 2
    assert str(junk) in capsys.readouterr().err
    assert cmd_assert([str(tmp_path / "absent.jsonl")], str(_expect_file(tmp_path, EXPECT)), None, "text") == 2
    assert "absent.jsonl" in capsys.readouterr().err


def test_expect_proposes_a_document_that_passes(trace_file: Path, tmp_path: Path) -> None:
    second = tmp_path / "run2.jsonl"
    spans = build_spans([{**TRACE[0], "id": "root2", "trace": "u1", "children": [
        {"name": "validate-payload", "service": "ingest", "id": "v2"},
        {"name": "orders publish", "id": "pub2", "kind": "producer", "service": "ingest", "start": 2},
        {"name": "cache.get", "service": "ingest", "id": "c2"}]},
        {**TRACE[1], "trace": "u2", "id": "proc2", "links": [{"id": "pub2", "trace": "u1"}],
         "children": [{"name": "chat.postMessage", "service": "worker", "kind": "client", "id": "chat2",
                       "attrs": {"slack.channel": "C0ALERT", "request.id": "0b4e8f1d9a2c4e61bb02"}}]}])
    write_jsonl(second, spans)
    out = io.StringIO()
    assert cmd_expect([str(trace_file), str(second)], None, out) == 0
    doc = yaml.safe_load(out.getvalue())
    root = doc["tree"][0]
    assert root["span"] == "POST /webhook"
    assert [c["span"] for c in root["children"]] == ["validate-payload", "orders publish"]  # cache.get is optional
    consumer = root["children"][1]["linked"][0]
    assert consumer["children"][0]["attributes"] == {"slack.channel": "C0ALERT"}  # request.id is volatile
    proposal = _expect_file(tmp_path, doc, "proposal.yaml")
    for f in (trace_file, second):
        assert cmd_assert([str(f)], str(proposal), None, "text") == 0


def test_expect_unknown_root(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_expect([str(trace_file)], "nope", io.StringIO()) == 2
    assert "no trace" in capsys.readouterr().err


def test_cli_exit_codes(trace_file: Path, tmp_path: Path) -> None:
    """The real command line, in a subprocess."""
    ok = _expect_file(tmp_path, EXPECT)
    bad = _expect_file(tmp_path, {"tree": [{"span": "absent"}]}, "fail.yaml")
    run = [sys.executable, "-m", "tracecanary.daemon.cli.main", "assert", "--trace", str(trace_file), "--expect"]
    assert subprocess.run([*run, str(ok)], capture_output=True, timeout=60).returncode == 0
    res = subprocess.run([*run, str(bad), "--format", "json"], capture_output=True, timeout=60, text=True)
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["verdict"] == "fail"


def test_expect_with_root(trace_file: Path) -> None:
    out = io.StringIO()
    assert cmd_expect([str(trace_file)], "orders publish", out) == 0
    doc = yaml.safe_load(out.getvalue())
    assert [n["span"] for n in doc["tree"]] == ["orders publish"]
    assert doc["tree"][0]["linked"][0]["span"] == "orders process"
