"""JUnit XML of a `check` pass, in Maven Surefire's dialect (``surefire-test-report-3.0.xsd``).

One ``<testsuite name="tracecanary">`` holds one ``<testcase>`` per probe and iteration. Its name is
stable across builds — the probe id, plus ``iteration N`` with ``--iterations`` above 1, never a run
id — so CI tools keep each probe's history. Retries are attempts of the same test case, as Surefire
writes ``rerunFailingTestsCount``:

- the last attempt passed after failed ones: a flaky pass — each failed attempt is a
  ``<flakyFailure>`` (verdict ``fail``) or ``<flakyError>`` (``error``, ``unknown``, aborted) with its
  ``type``, a ``<stackTrace>`` (the attempt's findings) and ``<system-out>`` (its run and trace ids);
  the case counts as passed, as the exit code does;
- the last attempt did not pass: ``<failure>`` or ``<error>`` describes it, and each earlier attempt
  is a ``<rerunFailure>`` / ``<rerunError>``.

``type`` is the verdict: ``fail``, ``error``, ``unknown`` (no telemetry: the test could not be judged),
or ``aborted``. A run skipped for an unmet ``requires:`` precondition is ``<skipped message="reason"/>``
(counted in the suite's ``skipped``; earlier attempts, if any, as reruns). Children follow the
schema's order (failure, rerunFailure, flakyFailure, skipped, error, rerunError, flakyError, system-out).
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.etree import ElementTree as ET

from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.cli.report import ProbeSummary, is_flaky
from tracecanary.daemon.store.base import RunRecord, RunStatus

_ORDER = ("failure", "rerunFailure", "flakyFailure", "skipped", "error", "rerunError", "flakyError")


def problem_type(run: RunRecord) -> str | None:
    """``fail`` / ``error`` / ``unknown`` / ``aborted`` / ``skipped`` for a run that did not pass; None when it did."""
    if run.status is RunStatus.SKIPPED:
        return "skipped"
    if run.status is RunStatus.ABORTED or run.verdict is None:
        return "aborted"
    if run.verdict.ok:
        return None
    return "fail" if run.verdict is Verdict.FAIL else run.verdict.value


def _message(run: RunRecord, kind: str) -> str:
    if kind == "aborted":
        return f"aborted: {run.abort_reason}"
    wanted = {"fail": (Verdict.FAIL,), "unknown": (Verdict.UNKNOWN,)}.get(kind, (Verdict.ERROR,))
    bad = [f for f in run.findings if f.severity in wanted] or list(run.findings)
    return bad[0].message if bad else kind


def _findings_text(run: RunRecord) -> str:
    return "\n".join(str(f) for f in run.findings)


def _system_out(run: RunRecord) -> str:
    out = (f"attempt={run.attempt}\nrun_id={run.run_id}\ntrace_id={run.trace_id}\n"
           f"verdict={run.verdict.value if run.verdict else run.status.value}\n")
    return out + "".join(f"{k}={v}\n" for k, v in run.links.items())


def _problem(tag: str, run: RunRecord, kind: str) -> ET.Element:
    """``<failure>``/``<error>`` carry the findings as text; rerun and flaky elements as ``<stackTrace>``."""
    el = ET.Element(tag, message=_message(run, kind), type=kind)
    if tag in ("failure", "error"):
        el.text = _findings_text(run)
    else:
        ET.SubElement(el, "stackTrace").text = _findings_text(run)
        ET.SubElement(el, "system-out").text = _system_out(run)
    return el


def _elements(attempts: Sequence[RunRecord]) -> tuple[list[ET.Element], str | None]:
    """The problem elements of one test case in schema order, and its outcome (None: it passed)."""
    last, earlier = attempts[-1], attempts[:-1]
    outcome = problem_type(last)
    found: list[tuple[str, ET.Element]] = []
    if outcome is None:
        for r in earlier:
            if (kind := problem_type(r)) is not None:
                tag = "flakyFailure" if kind == "fail" else "flakyError"
                found.append((tag, _problem(tag, r, kind)))
    elif outcome == "skipped":
        found.append(("skipped", ET.Element("skipped", message=last.abort_reason or "skipped")))
    else:
        found.append(("failure" if outcome == "fail" else "error", _problem(
            "failure" if outcome == "fail" else "error", last, outcome)))
    if outcome is not None:
        for r in earlier:
            if (kind := problem_type(r)) is not None:
                tag = "rerunFailure" if kind == "fail" else "rerunError"
                found.append((tag, _problem(tag, r, kind)))
    found.sort(key=lambda p: _ORDER.index(p[0]))  # stable: attempts keep their order within a tag
    return [el for _, el in found], outcome


def case_name(probe_id: str, iteration: int, iterations: int) -> str:
    """``probe-id``, or ``probe-id iteration N`` when the pass ran more than one iteration."""
    return f"{probe_id} iteration {iteration}" if iterations > 1 else probe_id


def junit_xml(summaries: Sequence[ProbeSummary], iterations: int | None = None) -> str:
    """The Surefire-dialect JUnit document of a pass (see the module docstring); ``iterations``: the
    pass's ``--iterations`` (default: as many as a probe has attempt groups)."""
    suite = ET.Element("testsuite", name="tracecanary")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_s = 0.0
    for s in summaries:
        groups = s.attempt_groups()
        of = iterations if iterations is not None else len(groups)
        for iteration, attempts in groups:
            elapsed_s = sum(r.duration_s or 0.0 for r in attempts)
            total_s += elapsed_s
            case = ET.SubElement(suite, "testcase", name=case_name(s.probe_id, iteration, of),
                                 classname=f"tracecanary.{s.kind}", time=f"{elapsed_s:.3f}")
            elements, outcome = _elements(attempts)
            case.extend(elements)
            counts["tests"] += 1
            if outcome is not None:
                counts[{"fail": "failures", "skipped": "skipped"}.get(outcome, "errors")] += 1
            system_out = _system_out(attempts[-1])
            if is_flaky(attempts):
                system_out += f"flaky: passed on attempt {attempts[-1].attempt}\n"
            ET.SubElement(case, "system-out").text = system_out
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{total_s:.3f}")
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
