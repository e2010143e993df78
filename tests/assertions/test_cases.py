"""The case table: every construct of the language, judged offline and incrementally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.assertions.compact import build_spans, trace_id
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import TraceJudge, judge_offline

CASES_DIR = Path(__file__).parent / "cases"


def _load() -> list[Any]:
    out = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text())["cases"]:
            out.append(pytest.param(case, id=f"{path.stem}:{case['name']}"))
    return out


CASES = _load()


def _judge(case: dict[str, Any]) -> TraceJudge:
    exp = TraceExpectation.model_validate(case["expect"])
    root = trace_id(case["trace_id"]) if case.get("trace_id") else None
    return TraceJudge(exp, root_trace_id=root, trigger_ns=None, correlate_value=case.get("correlate_value"))


@pytest.mark.parametrize("case", CASES)
def test_case_offline(case: dict[str, Any]) -> None:
    exp = TraceExpectation.model_validate(case["expect"])
    spans = build_spans(case["trace"])
    root = trace_id(case["trace_id"]) if case.get("trace_id") else None
    state = judge_offline(exp, spans, trace_id=root, correlate_value=case.get("correlate_value"))
    text = "\n".join(str(f) for f in state.findings)
    assert state.done
    assert state.verdict is not None and state.verdict.value == case["verdict"], text
    for needle in case.get("findings", []):
        assert needle in text, f"{needle!r} not in:\n{text}"
    for needle in case.get("absent", []):
        assert needle not in text
    if case["verdict"] == "fail":
        assert all(f.type.startswith("trace.") for f in state.findings)


@pytest.mark.parametrize("case", CASES)
def test_case_incremental_matches_offline(case: dict[str, Any]) -> None:
    """Span by span, an early verdict (if any) equals the offline one, and so does finish()."""
    spans = build_spans(case["trace"])
    judge = _judge(case)
    early = None
    for span in spans:
        judge.feed([span])
        state = judge.check(quiet_s=0.0)
        if state.done and early is None:
            early = state.verdict
    final = judge.check(quiet_s=1e9)
    if final.done:
        early = early or final.verdict
    finished = judge.finish()
    assert finished.verdict is not None and finished.verdict.value == case["verdict"]
    if early is not None:
        assert early == finished.verdict


@pytest.mark.parametrize("case", CASES)
def test_case_reverse_arrival_order(case: dict[str, Any]) -> None:
    """Children before parents (out-of-order arrival) gives the same final verdict."""
    judge = _judge(case)
    for span in reversed(build_spans(case["trace"])):
        judge.feed([span])
        judge.check(quiet_s=0.0)
    state = judge.finish()
    assert state.verdict is not None and state.verdict.value == case["verdict"]


@pytest.mark.parametrize("case", CASES)
def test_case_report_is_json(case: dict[str, Any]) -> None:
    import json

    judge = _judge(case)
    judge.feed(build_spans(case["trace"]))
    report = judge.report()
    json.dumps(report)
    assert report["verdict"] == case["verdict"]
    assert set(report["nodes"]) >= {f"expect.trace.tree[{i}]" for i in range(len(case["expect"].get("tree", [])))}
