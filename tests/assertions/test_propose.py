"""``expect --from``: proposals rooted at the system under test, without run-specific values in names."""

from __future__ import annotations

import random
import re
import uuid
from typing import Any

import pytest
import yaml

from tests.assertions.compact import build_spans
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import judge_offline
from tracecanary.assertions.propose import name_pattern, propose
from tracecanary.assertions.spans import PROBE_SCOPE, Span, is_probe_span
from tracecanary.assertions.verdict import Verdict


def _recorded_run(run: int, rnd: random.Random) -> list[Span]:
    """One recorded run as `check --record` writes it: tracecanary's root and client span, then the system."""
    port, dep_port, order = rnd.randrange(30000, 60000), rnd.randrange(30000, 60000), rnd.randrange(10**5, 10**6)
    tree: dict[str, Any] = {
        "name": "tracecanary probe orders", "service": "tracecanary", "id": f"root{run}", "trace": f"r{run}",
        "attrs": {"tracecanary.probe_id": "orders", "tracecanary.run_id": f"{rnd.getrandbits(96):024x}"},
        "children": [{
            "name": f"POST http://127.0.0.1:{port}/orders", "service": "tracecanary", "kind": "client",
            "children": [{
                "name": "POST /orders", "service": "shop", "kind": "server", "children": [
                    {"name": f"GET http://127.0.0.1:{dep_port}/quote", "service": "shop", "kind": "client"},
                    {"name": f"SELECT order {order}", "service": "shop", "kind": "client"},
                    {"name": f"publish order {uuid.UUID(int=rnd.getrandbits(128))}", "service": "shop",
                     "kind": "producer"},
                    {"name": f"GET /orders/{order}/items", "service": "shop", "kind": "internal"},
                ]}],
        }],
    }
    spans = build_spans([tree])
    # The SDK sets the instrumentation scope on the probe's spans (the root carries it too).
    from dataclasses import replace

    return [replace(s, scope=PROBE_SCOPE) if s.service == "tracecanary" else s for s in spans]


def _walk(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for n in nodes:
        out.append(n)
        out.extend(_walk(n.get("children", []) + n.get("linked", [])))
    return out


def test_the_proposal_is_rooted_at_the_system_entry_span_and_generalises_names() -> None:
    rnd = random.Random(7)
    examples = [_recorded_run(i, rnd) for i in range(2)]
    doc = propose(examples)
    assert [n["span"] for n in doc["tree"]] == ["POST /orders"]
    root = doc["tree"][0]
    assert root["service"] == "shop" and root["kind"] == "server"
    assert {c["span"] for c in root["children"]} == {
        "GET http://127.0.0.1:*/quote", "SELECT order *", "publish order *", "GET /orders/*/items"}
    text = yaml.safe_dump(doc)
    assert "tracecanary" not in text
    for example in examples:  # nothing run-specific survives: no port, order number or uuid of any run
        for span in example:
            for volatile in re.findall(r":(\d{5})/|order (\d{6})|([0-9a-f]{8}-[0-9a-f-]{27})", span.name):
                assert not any(v and v in text for v in volatile), (volatile, text)
    # every example passes, and so does a run the proposal has never seen (new ports, ids)
    exp = TraceExpectation.model_validate(doc)
    for spans in [*examples, _recorded_run(9, rnd)]:
        state = judge_offline(exp, spans)
        assert state.verdict == Verdict.PASS, [str(f) for f in state.findings]


def test_a_single_example_is_generalised_too() -> None:
    doc = propose([_recorded_run(0, random.Random(1))])
    names = {n["span"] if isinstance(n["span"], str) else n["span"]["matches"] for n in _walk(doc["tree"])}
    assert names == {"POST /orders", "GET http://127.0.0.1:*/quote", "SELECT order *", "publish order *",
                     "GET /orders/*/items"}


def test_only_probe_spans_is_an_error_that_says_so() -> None:
    spans = [s for s in _recorded_run(0, random.Random(2)) if is_probe_span(s)]
    with pytest.raises(ValueError, match="only tracecanary's own spans"):
        propose([spans])


def test_probe_spans_are_recognised_by_scope_even_under_another_service_name() -> None:
    from dataclasses import replace

    spans = [replace(s, service="canary-prod") if s.service == "tracecanary" else s
             for s in _recorded_run(0, random.Random(3))]
    assert [n["span"] for n in propose([spans])["tree"]] == ["POST /orders"]


def test_probe_scope_is_the_runners() -> None:
    from tracecanary.daemon.engine import RUNNER_SCOPE

    assert RUNNER_SCOPE == PROBE_SCOPE


@pytest.mark.parametrize(("name", "pattern"), [
    ("POST /webhook", "POST /webhook"),
    ("POST http://127.0.0.1:41234/webhook", "POST http://127.0.0.1:*/webhook"),
    ("GET http://localhost:8080/x", "GET http://localhost:*/x"),
    ("GET /orders/7/items", "GET /orders/*/items"),
    ("job 1712345678", "job *"),
    ("orders-123 publish", "orders-* publish"),
    ("fetch 3f2a9c1e8b7d4e6f0a1b2c3d4e5f6a7b", "fetch *"),
    ("order 8f14e45f-ceea-467f-a9a0-1f0e7d1c2b3a done", "order * done"),
    ("report 2026-04-15T18:22:31.123Z", "report *"),
    ("HTTP/1.1", "HTTP/1.1"),
    ("fetch-gex-data", "fetch-gex-data"),
    ("cron 12:30", "cron 12:30"),
    ("deadbeef", "deadbeef"),
    ("v100 handler", "v100 handler"),
    ("process [batch] 123", {"matches": r"^process \[batch\] .+$"}),
    ("GET /static/*", {"matches": r"^GET /static/\*$"}),
])
def test_name_patterns(name: str, pattern: Any) -> None:
    assert name_pattern(name) == pattern
    exp = TraceExpectation.model_validate({"tree": [{"span": pattern}]})
    span = build_spans([{"name": name}])
    assert judge_offline(exp, span).verdict == Verdict.PASS
