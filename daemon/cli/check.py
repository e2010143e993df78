"""``tracecanary check``: one pass (or N iterations) over a suite with the daemon's own engine."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tracecanary.daemon.cli.junit import junit_xml
from tracecanary.daemon.cli.report import (
    ProbeSummary,
    gate_failures,
    json_report,
    markdown,
    parse_gate,
    summarize,
    write_json,
)
from tracecanary.daemon.config.load import Config
from tracecanary.daemon.engine import Engine, Overrides
from tracecanary.daemon.run.runner import selected
from tracecanary.daemon.store.base import RunRecord
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.check")


@dataclass
class CheckOptions:
    probes: list[str] = field(default_factory=list)
    iterations: int = 1
    concurrency: int = 1
    junit: str | None = None
    json: str | None = None
    markdown: str | None = None
    record: str | None = None
    fail_if: list[str] = field(default_factory=list)
    fail_on_skip: bool = False
    """Exit 1 when a run was skipped (an unmet ``requires:``); default: a skip is no failure."""
    overrides: Overrides = field(default_factory=Overrides)
    retry_delay_s: float | None = None


async def run_check(config: Config, opts: CheckOptions, console: Console | None = None) -> int:
    """Run the pass; print live progress and the summary; write reports; return the exit code."""
    if console is None:
        import sys

        # Reports piped to a file or CI log get a wide table instead of folded cells.
        console = Console() if sys.stdout.isatty() else Console(width=200)
    gates = [parse_gate(g) for g in opts.fail_if]
    probes = selected(config.probes, opts.probes)
    if not probes:
        console.print(f"[red]no probe matches {', '.join(opts.probes)}[/red]")
        return 2
    started_ns = time.time_ns()
    engine = Engine(config, opts.overrides, serve_api=opts.overrides.listen is not None)
    runs: list[RunRecord] = []
    iteration_of: dict[str, int] = {}
    async with engine.started(temporary_store=opts.overrides.store is None and not config_store_set(config)):
        if engine.addresses:
            console.print("receivers: " + ", ".join(f"{k}={v}" for k, v in engine.addresses.items()))
        await _run_all(engine, probes, opts, runs, iteration_of, console)
        if opts.record:
            await anyio.to_thread.run_sync(_record, opts.record, runs)
    summaries = summarize(runs, [p.id for p in probes], iteration_of)
    failed_gates = gate_failures(summaries, gates)
    skipped = opts.fail_on_skip and any(s.skipped_runs for s in summaries)
    code = 0 if all(s.ok for s in summaries) and not failed_gates and not skipped else 1
    _print_summary(console, summaries, failed_gates)
    await anyio.to_thread.run_sync(_write_reports, opts, summaries, code, failed_gates, started_ns)
    return code


def _write_reports(opts: CheckOptions, summaries: list[ProbeSummary], code: int, failed_gates: list[str],
                   started_ns: int) -> None:
    if opts.json:
        write_json(opts.json, json_report(summaries, exit_code=code, gates=opts.fail_if,
                                          gate_failures_=failed_gates, started_ns=started_ns))
    if opts.junit:
        Path(opts.junit).write_text(junit_xml(summaries, opts.iterations))
    if opts.markdown:
        Path(opts.markdown).write_text(markdown(summaries, failed_gates))


def config_store_set(config: Config) -> bool:
    return "store" in config.daemon.model_fields_set


async def _run_all(engine: Engine, probes: Sequence[ProbeSpec], opts: CheckOptions, runs: list[RunRecord],
                   iteration_of: dict[str, int], console: Console) -> None:
    """Run every probe ``opts.iterations`` times; ``iteration_of`` gets each first attempt's iteration."""
    total = len(probes) * opts.iterations
    limit = anyio.Semaphore(max(1, opts.concurrency))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("checking", total=total)

        async def one(probe: ProbeSpec, iteration: int) -> None:
            async with limit:
                progress.update(task, description=f"checking {probe.id}")
                attempts = await engine.runner.run_probe(probe, retry_delay_override_s=opts.retry_delay_s)
                iteration_of.update((r.first_run_id, iteration) for r in attempts)
                runs.extend(attempts)
                progress.advance(task)

        async with anyio.create_task_group() as tg:
            for iteration in range(1, opts.iterations + 1):
                for probe in probes:
                    tg.start_soon(one, probe, iteration)


def _record(directory: str, runs: list[RunRecord]) -> None:
    from tracecanary.daemon.spans.files import write_jsonl

    Path(directory).mkdir(parents=True, exist_ok=True)
    for r in runs:
        if r.spans:
            write_jsonl(str(Path(directory) / f"{r.probe_id}-{r.run_id}.jsonl"), r.spans)


_STYLE = {"WORKING": "green", "DEGRADED": "yellow", "SKIPPED": "cyan", "NO TELEMETRY": "blue", "MISSING DATA": "magenta",
          "BROKEN": "red", "ERROR": "red"}


def _print_summary(console: Console, summaries: Sequence[ProbeSummary], failed_gates: Sequence[str]) -> None:
    table = Table(title="tracecanary check")
    for col in ("probe", "state", "runs", "p50", "p95", "p99", "max", "err%", "reason"):
        table.add_column(col, overflow="fold")

    def f(v: float | None) -> str:
        from tracecanary.assertions.units import format_duration

        return "-" if v is None else format_duration(v)

    for s in summaries:
        st = s.stats()
        table.add_row(s.probe_id, f"[{_STYLE[s.state]}]{s.state}[/]", str(st["final_runs"]), f(st["p50_s"]),
                      f(st["p95_s"]), f(st["p99_s"]), f(st["max_s"]), f"{st['error_rate']:.0%}", s.reason())
    console.print(table)
    for g in failed_gates:
        console.print(f"[red]gate failed:[/red] {g}")
