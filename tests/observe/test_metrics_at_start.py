"""/metrics of a real ``tracecanary run`` scraped right after start, before any run: every probe's series
exist, the standard collectors and build info are there, promtool finds nothing to lint, and every query
of the Grafana dashboard names only metrics it exposes. After a run and a restart, the last verdict and
run time come back from the store."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.child import Child, run_args, start, suite
from tests.daemon.harness import metric_value
from tests.daemon.support import eventually
from tests.observe.promql import dashboard_queries, exposed_names, grafana_query_names
from tracecanary import __version__
from tracecanary.daemon.observe.metrics import RUN_OUTCOMES

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tracecanary.json"
DOCS = ROOT / "docs" / "observability.md"
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def series(text: str) -> Series:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(got: Series, name: str, **labels: str) -> float | None:
    return got.get((name, tuple(sorted(labels.items()))))


async def scrape(child: Child) -> str:
    status, text = await child.request("GET", "/metrics")
    assert status == 200, text
    return text


def promtool_lint(text: str) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: apt-get install --no-install-recommends prometheus (scripts/install.sh --test)")
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr).strip() if proc.returncode else ""


def check_before_any_run(text: str) -> None:
    got = series(text)
    for probe in ("orders", "billing"):
        for verdict in RUN_OUTCOMES:
            assert value(got, "tracecanary_runs_total", probe=probe, kind="http", verdict=verdict) == 0.0
        for name in ("probe_duration_seconds_count", "tracecanary_time_to_verdict_seconds_count",
                     "tracecanary_probe_unknown"):
            assert value(got, name, probe=probe, kind="http") == 0.0, name
        for name in ("tracecanary_schedule_lateness_seconds_count", "tracecanary_runs_skipped_total",
                     "probe_last_run_timestamp_seconds"):
            assert value(got, name, probe=probe) == 0.0, name
    assert value(got, "tracecanary_trace_spans_count", probe="billing", kind="http") == 0.0  # it expects a trace
    assert value(got, "tracecanary_trace_spans_count", probe="orders", kind="http") is None
    assert value(got, "tracecanary_alert_state", probe="orders") == 0.0
    assert value(got, "tracecanary_alert_state", probe="billing") == 2.0  # a silence covers its tag
    assert not [k for k in got if k[0] == "probe_success"]  # 0 would read as failing: it waits for a verdict
    for source in ("otlp_http", "otlp_grpc"):
        assert value(got, "tracecanary_spans_received_total", source=source) == 0.0
    assert value(got, "tracecanary_spans_dropped_total", reason="invalid") == 0.0
    [build] = [k for k in got if k[0] == "tracecanary_build_info"]
    assert dict(build[1])["version"] == __version__ and got[build] == 1.0
    names = {k[0] for k in got}
    assert {"process_start_time_seconds", "process_resident_memory_bytes", "process_cpu_seconds_total",
            "python_info", "python_gc_collections_total"} <= names


def check_dashboard(text: str) -> None:
    exposed = exposed_names(text)
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 20
    used: set[str] = set()
    for query in queries:
        names = grafana_query_names(query)
        assert names, query
        assert names <= exposed, (query, sorted(names - exposed))
        used |= names
    assert {"tracecanary_alert_state", "probe_last_run_timestamp_seconds", "process_start_time_seconds",
            "tracecanary_build_info"} <= used



def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    taken: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
            assert cell not in taken, (p["title"], taken.get(cell))
            taken[cell] = p["title"]


def check_documented_rules(text: str, tmp: Path) -> None:
    """The alert rules docs/observability.md offers load in promtool and name only exposed metrics."""
    doc = DOCS.read_text()
    block = doc[doc.index("```yaml\ngroups:") + len("```yaml\n"):]
    rules_file = tmp / "rules.yml"
    rules_file.write_text(block[:block.index("```")])
    promtool = shutil.which("promtool")
    assert promtool is not None
    proc = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exposed = exposed_names(text)
    for rule in yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]:
        names = grafana_query_names(rule["expr"])
        assert names and names <= exposed, (rule["alert"], names - exposed)


async def test_every_series_exists_at_start_and_the_dashboard_names_only_exposed_metrics(tmp_path: Path) -> None:
    config = suite(tmp_path)
    child = start(tmp_path, *run_args(tmp_path, config), name="first")
    try:
        await child.ready()
        text = await scrape(child)
        check_before_any_run(text)
        assert promtool_lint(text) == ""
        check_dashboard(text)
        check_documented_rules(text, tmp_path)

        assert (await child.request("POST", "/api/probes/orders/run", {}))[0] == 202

        async def ran() -> bool:
            return bool(metric_value(await scrape(child), "probe_last_run_timestamp_seconds", probe="orders"))

        await eventually(ran, 60, "the run of orders to finish")
        got = series(await scrape(child))
        assert value(got, "probe_success", probe="orders", kind="http") == 0.0  # its target is a closed port
        assert value(got, "tracecanary_runs_total", probe="orders", kind="http", verdict="error") == 1.0
        assert [k for k in got if k[0] == "tracecanary_findings_total" and dict(k[1])["probe"] == "orders"]
        last_run = value(got, "probe_last_run_timestamp_seconds", probe="orders")
        assert await child.stop() == 0
    finally:
        child.kill()

    again = start(tmp_path, *run_args(tmp_path, config), name="second")
    try:
        await again.ready()
        got = series(await scrape(again))  # before any run of this process: restored from the store
        assert value(got, "probe_success", probe="orders", kind="http") == 0.0
        assert value(got, "probe_last_run_timestamp_seconds", probe="orders") == last_run
        assert value(got, "probe_last_run_timestamp_seconds", probe="billing") == 0.0
        assert await again.stop() == 0
    finally:
        again.kill()
