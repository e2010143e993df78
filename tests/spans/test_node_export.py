"""OTLP/JSON produced by another language's SDK: the Node OpenTelemetry SDK exporting to the receiver.

Needs node + npm (installed by .ci/run). Missing tools fail the test with a clear message: a skip
would hide that the cross-language check never ran.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.spans.conftest import LiveReceiver
from tracecanary.assertions.spans import SpanKind, StatusCode, Trace

NODE_DIR = Path(__file__).parent / "node"


def _install() -> None:
    """``npm ci`` once; node_modules is cached in tests/spans/node (gitignored) while the lock is unchanged."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required for the cross-language OTLP/JSON test: apt-get install nodejs npm")
    stamp = NODE_DIR / "node_modules" / ".tracecanary-lock"
    lock = (NODE_DIR / "package-lock.json").read_text()
    if stamp.exists() and stamp.read_text() == lock:
        return
    proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                          text=True, timeout=240, check=False)
    if proc.returncode != 0:
        pytest.fail(f"npm ci failed in {NODE_DIR}:\n{proc.stdout}\n{proc.stderr}")
    stamp.write_text(lock)


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_node_sdk_json_export_builds_the_tree(receiver: LiveReceiver) -> None:
    await anyio.to_thread.run_sync(_install)
    with anyio.fail_after(60):
        proc = await anyio.run_process(["node", "export.js", receiver.url], cwd=NODE_DIR, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    ids = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert ids["failures"] == 0
    assert receiver.ingest.exports["application/json"] >= 1 and not receiver.ingest.exports["application/x-protobuf"]

    trace = Trace.build(ids["root"]["traceId"], receiver.buffer.trace(ids["root"]["traceId"]))
    assert len(trace) == 3 and not trace.orphans
    (root,) = trace.roots
    assert (root.name, root.kind, root.service, root.status_code) == ("POST /checkout", SpanKind.SERVER, "node-shop",
                                                                      StatusCode.OK)
    assert root.span_id == ids["root"]["spanId"]
    assert root.attributes == {"http.method": "POST", "http.status_code": 201, "ratio": 0.5, "ok": True,
                               "tags": ("a", "b")}
    assert root.resource["deployment.environment"] == "test" and root.scope == "tests.node"
    assert [(e.name, dict(e.attributes)) for e in root.events] == [("validated", {"fields": 3})]
    assert root.start_ns > 1_600_000_000 * 10**9 and root.end_ns >= root.start_ns
    (child,) = trace.children(root)
    assert (child.name, child.kind, child.status_code, child.status_message) == (
        "charge card", SpanKind.CLIENT, StatusCode.ERROR, "card declined")
    assert [(ln.trace_id, ln.span_id, dict(ln.attributes)) for ln in child.links] == [
        (ids["upstream"]["traceId"], ids["upstream"]["spanId"], {"link.kind": "follows"})]
    (leaf,) = trace.children(child)
    assert (leaf.name, leaf.kind, leaf.attributes) == ("db query", SpanKind.INTERNAL, {"db.rows": 12})
    assert receiver.buffer.linking_traces(ids["upstream"]["traceId"]) == {trace.trace_id}
    upstream = receiver.buffer.trace(ids["upstream"]["traceId"])
    assert [(s.name, s.kind) for s in upstream] == [("orders publish", SpanKind.PRODUCER)]
