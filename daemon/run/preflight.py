"""What a run does before its trigger: check ``requires:`` and read the metrics baselines.

An unmet precondition ends the run here as ``skipped`` with the reason; nothing is sent. The metrics
checks are rendered once per run (``{{ … }}``) and the ones that need a value from before the trigger
(a delta, a quantile over bucket increases) read their source now, concurrently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from tracecanary.assertions.metrics import MetricCheck
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.watchers.metrics import Baseline, read_baseline
from tracecanary.errors import ProbeError
from tracecanary.probes.base import ProbeContext, ProbeSpec
from tracecanary.probes.requires import unmet
from tracecanary.probes.templating import render_spec


@dataclass
class BeforeTrigger:
    """The outcome of the preflight: a skip reason, or the rendered metrics checks and their baselines."""

    skip_reason: str | None = None
    metrics: list[tuple[int, MetricCheck, Baseline | None]] = field(default_factory=list)
    """(index in expect.metrics, the check rendered for this run, its baseline or None)."""
    findings: list[Finding] = field(default_factory=list)
    """Checks that could not be rendered (bad template): errors of the run."""


async def before_trigger(probe: ProbeSpec, ctx: ProbeContext, session: aiohttp.ClientSession,
                         environ: Mapping[str, str] | None = None) -> BeforeTrigger:
    """Preconditions first (a skip reads nothing), then the metrics baselines."""
    if not probe.requires.is_empty():
        reasons = await unmet(probe.requires, session, environ)
        if reasons:
            ctx.log("run skipped", reasons=reasons)
            return BeforeTrigger(skip_reason="; ".join(reasons))
    out = BeforeTrigger()
    for i, check in enumerate(probe.expect.metrics):
        try:
            out.metrics.append((i, render_spec(check, ctx.render), None))
        except ProbeError as e:
            out.findings.append(Finding(type="error", severity=Verdict.ERROR, path=f"expect.metrics[{i}]",
                                        message=f"metrics check: bad template: {e}"))
    if out.metrics:
        baselines = await read_baseline([c for _, c, _ in out.metrics], ctx)
        out.metrics = [(i, c, b) for (i, c, _), b in zip(out.metrics, baselines, strict=True)]
    return out
