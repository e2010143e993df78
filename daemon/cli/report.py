"""Reports of a `check` pass: per-probe summary, JSON (docs/report.md), Markdown; JUnit XML in junit.py."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tracecanary.assertions.units import format_duration, parse_duration_s
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus

REPORT_SCHEMA_VERSION = 1


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def run_latency_s(run: RunRecord) -> float | None:
    """The trigger's response latency when there was a response, else the run's duration (None for a
    skipped run: nothing was sent)."""
    if run.status is RunStatus.SKIPPED:
        return None
    if run.response and isinstance(run.response.get("latency_s"), int | float):
        return float(run.response["latency_s"])
    return run.duration_s


@dataclass
class ProbeSummary:
    """A probe's runs in one ``check`` pass; ``iteration_of`` maps a first attempt's run id to its
    iteration (1-based, ``--iterations``)."""

    probe_id: str
    kind: str
    runs: list[RunRecord] = field(default_factory=list)
    iteration_of: dict[str, int] = field(default_factory=dict)

    @property
    def final_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.final]

    def attempt_groups(self) -> list[tuple[int, list[RunRecord]]]:
        """(iteration, its attempts in order) per iteration, by iteration; retries share a first run id."""
        groups: dict[str, list[RunRecord]] = {}
        for r in self.runs:
            groups.setdefault(r.first_run_id, []).append(r)
        ordered = sorted(groups.items(), key=lambda kv: (self.iteration_of.get(kv[0], 0),
                                                         min(r.started_ns for r in kv[1])))
        out = []
        for n, (first, attempts) in enumerate(ordered, start=1):
            out.append((self.iteration_of.get(first, n), sorted(attempts, key=lambda r: r.attempt)))
        return out

    def iteration(self, run: RunRecord) -> int | None:
        """The iteration ``run`` belongs to, when ``check`` said so."""
        return self.iteration_of.get(run.first_run_id)

    @property
    def skipped_runs(self) -> list[RunRecord]:
        """Final runs skipped for an unmet ``requires:`` precondition."""
        return [r for r in self.final_runs if r.status is RunStatus.SKIPPED]

    @property
    def state(self) -> str:
        """WORKING, DEGRADED, NO TELEMETRY (verdict unknown), MISSING DATA (response fields absent),
        BROKEN, or ERROR — the worst final run that ran decides; SKIPPED when none ran (a ``requires:``
        precondition unmet every time)."""
        finals = [r for r in self.final_runs if r.status is not RunStatus.SKIPPED]
        if not finals and self.skipped_runs:
            return "SKIPPED"
        if any(r.verdict is Verdict.ERROR or r.status is RunStatus.ABORTED for r in finals):
            return "ERROR"
        failed = [r for r in finals if r.verdict is Verdict.FAIL]
        if failed:
            if all(all(f.type == "response.missing_data" for f in r.findings if f.severity is Verdict.FAIL)
                   for r in failed):
                return "MISSING DATA"
            return "BROKEN"
        if any(r.verdict is Verdict.UNKNOWN for r in finals):
            return "NO TELEMETRY"
        if any(r.verdict is Verdict.DEGRADED for r in finals):
            return "DEGRADED"
        return "WORKING"

    @property
    def ok(self) -> bool:
        return self.state in ("WORKING", "DEGRADED", "SKIPPED")

    def reason(self) -> str:
        if self.state == "SKIPPED":
            return f"skipped: {self.skipped_runs[0].abort_reason}"
        for r in self.final_runs:
            bad = ([f for f in r.findings if f.severity in (Verdict.FAIL, Verdict.ERROR)]
                   or [f for f in r.findings if f.severity is Verdict.UNKNOWN])
            if bad:
                return bad[0].message
            if r.status is RunStatus.ABORTED:
                return f"aborted: {r.abort_reason}"
        return ""

    def latencies(self) -> list[float]:
        return [v for v in (run_latency_s(r) for r in self.runs) if v is not None]

    def stats(self) -> dict[str, Any]:
        lat = self.latencies()
        finals = self.final_runs
        ran = [r for r in finals if r.status is not RunStatus.SKIPPED]  # a skip is neither a pass nor a failure
        errors = sum(1 for r in ran if not (r.verdict is not None and r.verdict.ok))
        return {
            "flaky": sum(1 for _, attempts in self.attempt_groups() if is_flaky(attempts)),
            "final_runs": len(finals),
            "attempts": len(self.runs),
            "passed": sum(1 for r in finals if r.verdict is Verdict.PASS),
            "degraded": sum(1 for r in finals if r.verdict is Verdict.DEGRADED),
            "failed": sum(1 for r in finals if r.verdict is Verdict.FAIL),
            "unknown": sum(1 for r in finals if r.verdict is Verdict.UNKNOWN),
            "errors": sum(1 for r in finals if r.verdict is Verdict.ERROR or r.status is RunStatus.ABORTED),
            "skipped": len(finals) - len(ran),
            "error_rate": errors / len(ran) if ran else 0.0,
            "p50_s": percentile(lat, 50),
            "p95_s": percentile(lat, 95),
            "p99_s": percentile(lat, 99),
            "max_s": max(lat) if lat else None,
        }


def is_flaky(attempts: Sequence[RunRecord]) -> bool:
    """The last attempt passed (or was degraded) after an earlier one did not: a flaky pass."""
    last = attempts[-1]
    return len(attempts) > 1 and last.verdict is not None and last.verdict.ok


def summarize(runs: Sequence[RunRecord], order: Sequence[str],
              iteration_of: dict[str, int] | None = None) -> list[ProbeSummary]:
    """Runs grouped by probe, in ``order``; ``iteration_of``: first attempt's run id → iteration."""
    by_id: dict[str, ProbeSummary] = {}
    for r in runs:
        by_id.setdefault(r.probe_id, ProbeSummary(r.probe_id, r.kind, iteration_of=dict(iteration_of or {})
                                                  )).runs.append(r)
    return [by_id[p] for p in order if p in by_id]


# --- gates ---------------------------------------------------------------------------------------
_GATE_RE = re.compile(r"^\s*(p50|p95|p99|max|error_rate)\s*(>=|<=|>|<)\s*(\S+)\s*$")


def parse_gate(text: str) -> tuple[str, str, float]:
    """``"p95 > 500ms"`` → ("p95_s", ">", 0.5); ``"error_rate > 1%"`` → ("error_rate", ">", 0.01)."""
    m = _GATE_RE.match(text)
    if not m:
        raise ValueError(f"invalid --fail-if {text!r}: expected e.g. \"p95 > 500ms\" or \"error_rate > 1%\"")
    metric, op, raw = m.groups()
    if metric == "error_rate":
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        return "error_rate", op, value
    return f"{metric}_s", op, parse_duration_s(raw)


def gate_failures(summaries: Sequence[ProbeSummary], gates: Sequence[tuple[str, str, float]]) -> list[str]:
    out = []
    for s in summaries:
        stats = s.stats()
        for key, op, bound in gates:
            value = stats.get(key)
            if value is None:
                continue
            hit = {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
            if hit:
                shown = f"{value:.1%}" if key == "error_rate" else format_duration(value)
                limit = f"{bound:.1%}" if key == "error_rate" else format_duration(bound)
                out.append(f"{s.probe_id}: {key.removesuffix('_s')} {shown} {op} {limit}")
    return out


# --- renderings ----------------------------------------------------------------------------------
def run_json(run: RunRecord, iteration: int | None = None) -> dict[str, Any]:
    return {
        "run_id": run.run_id, "probe_id": run.probe_id, "kind": run.kind, "iteration": iteration,
        "attempt": run.attempt,
        "first_run_id": run.first_run_id, "final": run.final, "trace_id": run.trace_id,
        "started_ns": run.started_ns, "finished_ns": run.finished_ns, "duration_s": run.duration_s,
        "status": run.status.value, "verdict": run.verdict.value if run.verdict else None,
        "abort_reason": run.abort_reason,
        "skip_reason": run.abort_reason if run.status is RunStatus.SKIPPED else None, "findings": [f.model_dump(mode="json") for f in run.findings],
        "response": run.response, "outputs": run.outputs, "links": run.links, "span_count": run.span_count,
        "time_to_verdict_s": run.time_to_verdict_s,
    }


def json_report(summaries: Sequence[ProbeSummary], *, exit_code: int, gates: Sequence[str],
                gate_failures_: Sequence[str], started_ns: int) -> dict[str, Any]:
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "tool": "tracecanary",
        "started_ns": started_ns,
        "finished_ns": time.time_ns(),
        "exit_code": exit_code,
        "gates": list(gates),
        "gate_failures": list(gate_failures_),
        "probes": [
            {"probe_id": s.probe_id, "kind": s.kind, "state": s.state, "reason": s.reason(), **s.stats(),
             "runs": [run_json(r, s.iteration(r)) for r in s.runs]}
            for s in summaries
        ],
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else format_duration(v)


def markdown(summaries: Sequence[ProbeSummary], gate_failures_: Sequence[str]) -> str:
    lines = ["# tracecanary check", "", "| probe | state | runs | p50 | p95 | p99 | max | error rate | reason |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        st = s.stats()
        reason = s.reason().replace("|", "\\|")
        lines.append(f"| {s.probe_id} | {s.state} | {st['final_runs']} | {_fmt(st['p50_s'])} | {_fmt(st['p95_s'])} | "
                     f"{_fmt(st['p99_s'])} | {_fmt(st['max_s'])} | {st['error_rate']:.0%} | {reason} |")
    if gate_failures_:
        lines += ["", "## Gates failed", *[f"- {g}" for g in gate_failures_]]
    return "\n".join(lines) + "\n"


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")
