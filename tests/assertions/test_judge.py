"""The incremental judge's timing contract and the expectation models' load-time validation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.assertions.compact import BASE_NS, build_spans, trace_id
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.explain import render_text
from tracecanary.assertions.judge import TraceJudge
from tracecanary.assertions.spans import Span
from tracecanary.assertions.verdict import Verdict

TRACE = [{"name": "root", "id": "r", "dur": 100, "children": [
    {"name": "a", "id": "a", "children": [{"name": "a1", "id": "a1"}]},
    {"name": "b", "id": "b", "start": 20},
]}]


def _spans() -> dict[str, Span]:
    return {s.name: s for s in build_spans(TRACE)}


def _judge(doc: dict[str, Any], **kw: Any) -> TraceJudge:
    kw.setdefault("root_trace_id", trace_id("t1"))
    kw.setdefault("trigger_ns", BASE_NS)
    return TraceJudge(TraceExpectation.model_validate(doc), **kw)


TREE = [{"span": "root", "children": [{"span": "a", "children": [{"span": "a1"}]}, {"span": "b"}]}]


def test_passes_the_moment_the_last_needed_span_arrives() -> None:
    s = _spans()
    judge = _judge({"tree": TREE})
    for name in ("root", "b", "a"):
        judge.feed([s[name]])
        state = judge.check(quiet_s=0.0)
        assert not state.done and state.settle_remaining_s is None
    judge.feed([s["a1"]])
    state = judge.check(quiet_s=0.0)
    assert state.done and state.verdict == Verdict.PASS and state.findings == []


def test_whole_trace_rules_wait_for_settle() -> None:
    s = _spans()
    judge = _judge({"tree": TREE, "forbid": [{"status": "error"}], "settle": "2s"})
    judge.feed(s.values())
    state = judge.check(quiet_s=0.5)
    assert not state.done and state.settle_remaining_s == pytest.approx(1.5)
    state = judge.check(quiet_s=2.0)
    assert state.done and state.verdict == Verdict.PASS


def test_forbid_fails_at_once_before_anything_matches() -> None:
    bad = build_spans([{"name": "boom", "status": "error", "id": "x"}])[0]
    judge = _judge({"tree": TREE, "forbid": [{"status": "error"}]})
    judge.feed([bad])
    state = judge.check(quiet_s=0.0)
    assert state.done and state.verdict == Verdict.FAIL
    assert state.findings[0].type == "trace.forbid" and 'span "boom"' in state.findings[0].message


def test_upper_bounds_fail_at_once() -> None:
    judge = _judge({"tree": TREE, "limits": {"max_spans": 2}})
    judge.feed(list(_spans().values())[:3])
    state = judge.check(quiet_s=0.0)
    assert state.done and state.verdict == Verdict.FAIL and "3 spans > max_spans 2" in state.findings[0].message


def test_orphan_waits_for_its_parent_then_the_deadline_decides() -> None:
    s = _spans()
    judge = _judge({"tree": [{"span": "a1"}], "no_orphans": True, "settle": "1s"})
    judge.feed([s["root"], s["a1"]])  # a1's parent `a` is late
    assert not judge.check(quiet_s=5.0).done
    judge.feed([s["a"]])
    assert judge.check(quiet_s=5.0).verdict == Verdict.PASS
    late = _judge({"tree": [{"span": "a1"}], "no_orphans": True})
    late.feed([s["root"], s["a1"]])
    final = late.finish()
    assert final.verdict == Verdict.FAIL and final.findings[0].type == "trace.orphan"


def test_within_is_measured_from_the_trigger() -> None:
    s = _spans()
    judge = _judge({"tree": [{"span": "b", "within": "15ms"}]}, trigger_ns=BASE_NS)
    judge.feed([s["root"], s["b"]])  # b ends 31 ms after the trigger
    assert not judge.check(quiet_s=0.0).done
    final = judge.finish()
    assert final.verdict == Verdict.FAIL and "ended 31ms after the trigger > within 15ms" in str(final.findings[0])
    ok = _judge({"tree": [{"span": "b", "within": "15ms"}]}, trigger_ns=BASE_NS + 20_000_000)
    ok.feed([s["b"]])
    assert ok.check(quiet_s=0.0).verdict == Verdict.PASS


def test_any_of_waits_for_an_alternative_to_settle() -> None:
    s = _spans()
    judge = _judge({"tree": [{"span": "root"}], "any_of": [
        {"tree": [{"span": "b"}], "forbid": [{"span": "a9"}], "settle": "1s"}, {"tree": [{"span": "zz"}]}]})
    judge.feed(s.values())
    state = judge.check(quiet_s=0.2)
    assert not state.done and state.settle_remaining_s == pytest.approx(0.8)
    assert judge.check(quiet_s=1.0).verdict == Verdict.PASS


def test_correlated_trace_by_id_and_add_trace() -> None:
    job = build_spans([{"name": "job.run", "trace": "t9", "attrs": {"job.id": "7"}}])
    doc = {"tree": [{"span": "job.run"}]}
    judge = _judge(doc)
    judge.feed(job)
    assert not judge.check(quiet_s=0).done  # not the probe's trace, not correlated: ignored
    judge.add_trace(trace_id("t9"))
    assert judge.check(quiet_s=0).verdict == Verdict.PASS
    by_attr = _judge({**doc, "correlate": {"attribute": "job.id", "equals": "{{ steps.create.json.id }}"}},
                     correlate_value="7")
    by_attr.feed(job)
    assert by_attr.check(quiet_s=0).verdict == Verdict.PASS


def test_duplicates_are_ignored_and_report_counts_arrivals() -> None:
    spans = list(_spans().values())
    judge = _judge({"tree": [{"span": "root", "children": [{"span": "b", "count": 1}]}]})
    judge.feed(spans)
    judge.feed(spans)
    report = judge.report()
    assert report["span_count"] == 4 and report["verdict"] == "pass"
    assert report["nodes"]["expect.trace.tree[0].children[0]"] == _spans()["b"].span_id
    assert report["unexpected_count"] == 2  # a, a1 matched no node
    assert report["last_span_end_ns"] == max(s.end_ns for s in spans)
    assert report["last_arrival_unix_ns"] is not None
    text = render_text(report)
    assert "verdict: pass" in text and "spans: 4 in 1 trace(s)" in text


def test_miss_report_lists_closest_and_broken_constraints() -> None:
    judge = _judge({"tree": [{"span": "root", "children": [{"span": "b", "min_duration": "1s"}]}]})
    judge.feed(_spans().values())
    report = judge.report()
    missing = report["missing"][0]
    assert missing["path"] == "expect.trace.tree[0].children[0]"
    assert missing["under"] == _spans()["root"].span_id
    assert missing["closest"][0]["label"] == 'span "b" (svc svc)'
    assert missing["closest"][0]["broken"] == ["10ms < min 1s"]


@pytest.mark.parametrize(("doc", "message"), [
    ({"tree": [{"span": {"matches": "(unclosed"}}]}, "invalid regex"),
    ({"tree": [{"span": "x", "max_duration": "soon"}]}, "invalid duration"),
    ({"tree": [{"span": "x", "attributes": {"k": {"matches": "["}}}]}, "attribute 'k': invalid regex"),
    ({"tree": [{"span": "x", "count": {"gte": 3, "lte": 1}}]}, "count range is empty"),
    ({"tree": [{"span": "x", "count": -1}]}, "count must not be negative"),
    ({"tree": [{"span": "x", "kind": "serverish"}]}, "Input should be 'server'"),
    ({"tree": [{"span": "x", "min_duration": "2s", "max_duration": "1s"}]}, "min_duration 2s exceeds"),
    ({"tree": [{"span": "x", "chidren": []}]}, "Extra inputs are not permitted"),
    ({"checks": [{"select": "span[name=]", "assert": ["count >= 1"]}]}, "missing value"),
    ({"checks": [{"select": "spam[name=\"x\"]", "assert": ["count >= 1"]}]}, "expected span[...]"),
    ({"specs": [{"selector": "", "assertions": ["attr:x ~ 3"]}]}, "expected '[attr:]key [| filter …] operator value'"),
    ({"correlate": {"attribute": "", "equals": "x"}}, "at least 1 character"),
])
def test_invalid_expectations_fail_at_load(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        TraceExpectation.model_validate(doc)
    assert message in str(e.value)


def test_schema_has_descriptions() -> None:
    schema = TraceExpectation.model_json_schema()
    node = schema["$defs"]["SpanNode"]["properties"]
    assert "linked" in node and node["linked"]["description"].startswith("Spans, in any trace")
    top = schema.get("properties") or schema["$defs"]["TraceExpectation"]["properties"]
    assert {"tree", "forbid", "limits", "no_orphans", "correlate", "any_of", "checks", "specs"} <= set(top)


def test_docs_example_loads() -> None:
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).parents[2] / "docs" / "trace-assertions.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    exp = TraceExpectation.model_validate(yaml.safe_load(block.group(1)))
    assert exp.has_whole_trace_rules() and exp.max_within_s() == 30.0


def test_correlated_trace_fed_by_the_runner_without_the_value() -> None:
    """The runner resolves the template and feeds only matching traces: any fed trace carrying the
    attribute joins the anchor search; a fed trace without it does not."""
    doc = {"tree": [{"span": "job.run"}], "correlate": {"attribute": "job.id", "equals": "{{ steps.x.id }}"}}
    judge = _judge(doc)
    judge.feed(build_spans([{"name": "job.run", "trace": "t8"}]))
    assert not judge.check(quiet_s=0).done
    judge.feed(build_spans([{"name": "job.run", "id": "j2", "trace": "t9", "attrs": {"job.id": "7"}}]))
    assert judge.check(quiet_s=0).verdict == Verdict.PASS


def test_a_miss_at_the_deadline_says_how_long_the_run_waited() -> None:
    s = _spans()
    judge = _judge({"tree": TREE, "any_of": [{"tree": [{"span": "absent-too"}]}]})
    judge.feed([s["root"], s["a"], s["b"]])
    state = judge.finish(waited_s=30.0)
    text = "\n".join(str(f) for f in state.findings)
    assert 'expected span "a1" under span "a" (svc svc), not found after waiting 30s' in text
    assert 'expected span "absent-too", not found after waiting 30s' in text  # the alternatives' misses too
    assert "after waiting 30s" in "\n".join(f["message"] for f in judge.report()["findings"])  # kept for report
    offline = _judge({"tree": TREE}, trigger_ns=None)
    offline.feed([s["root"]])
    assert "waiting" not in "\n".join(str(f) for f in offline.finish().findings)
