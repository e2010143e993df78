"""``expect.metrics`` end to end through the real ``check`` command: a system under test exposing its own
metrics with prometheus_client, read by scraping its exposition and through Debian's real Prometheus
(``query:``). A delta passes when the handler counts the request and fails, naming the series and both
values read, when it does not; a histogram's p95 over the window's bucket increases is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.fixtures.metrics_sut import metrics_sut
from tests.fixtures.prometheus import prometheus_server


@pytest.fixture
def sut() -> Iterator[str]:
    with metrics_sut() as base:
        yield base


def run_check(tmp: Path, suite: str, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    (tmp / "suite.yaml").write_text(suite)
    proc = subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", "check", "suite.yaml", "--json",
                           "r.json", "--otlp-http", "127.0.0.1:0", "--otlp-grpc", "none", *args],
                          capture_output=True, text=True, timeout=180, cwd=tmp)
    assert (tmp / "r.json").exists(), proc.stdout + proc.stderr
    report = json.loads((tmp / "r.json").read_text())
    return proc, {p["probe_id"]: p for p in report["probes"]}


def findings(probe: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for run in probe["runs"] for f in run["findings"]]


SCRAPE_SUITE = """
daemon: {{poll_interval: 100ms}}
probes:
  - id: counted
    kind: http
    request: {{method: POST, url: "{base}/webhook"}}
    expect:
      response: {{status: 200}}
      metrics:
        - scrape: "{base}/metrics"
          delta: {{metric: 'http_requests_total{{route="/webhook"}}', gte: 1, lte: 1}}
          within: 1s
        - scrape: "{base}/metrics"
          present: ['http_requests_total{{route=~"/web.*", route!="/forgetful"}}',
                    'http_request_duration_seconds_bucket{{route="/webhook", le="+Inf"}}']
  - id: forgetful
    kind: http
    request: {{method: POST, url: "{base}/forgetful"}}
    expect:
      response: {{status: 200}}
      metrics:
        - scrape: "{base}/metrics"
          delta: {{metric: 'http_requests_total{{route="/forgetful"}}', gte: 1}}
          within: 1s
  - id: p95-fast
    kind: http
    request: {{method: POST, url: "{base}/fast?latency_s=0.03"}}
    expect:
      metrics:
        - scrape: "{base}/metrics"
          value: {{metric: 'http_request_duration_seconds{{route="/fast"}}', quantile: 0.95, lte: 0.1,
                   degraded: {{lte: 0.05}}}}
          within: 2s
  - id: p95-slow
    kind: http
    request: {{method: POST, url: "{base}/slow?latency_s=0.3"}}
    expect:
      metrics:
        - scrape: "{base}/metrics"
          value: {{metric: 'http_request_duration_seconds{{route="/slow"}}', quantile: 0.95, lte: 0.25}}
          within: 1s
"""


def test_scraped_delta_and_p95(tmp_path: Path, sut: str) -> None:
    proc, probes = run_check(tmp_path, SCRAPE_SUITE.format(base=sut))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # forgetful and p95-slow fail
    states = {pid: p["state"] for pid, p in probes.items()}
    assert states == {"counted": "WORKING", "forgetful": "BROKEN", "p95-fast": "WORKING", "p95-slow": "BROKEN"}
    assert findings(probes["counted"]) == [] and findings(probes["p95-fast"]) == []
    [miss] = findings(probes["forgetful"])
    assert miss["path"] == "expect.metrics[0].delta" and miss["severity"] == "fail"
    # the series and both values read: before the trigger, and at the window's end
    assert 'http_requests_total{route="/forgetful"} moved by 0' in miss["message"]
    assert 'http_requests_total{route="/forgetful"}: 0 → 0' in miss["message"]
    assert miss["observed"] == [{"series": 'http_requests_total{route="/forgetful"}', "before": 0.0, "after": 0.0}]
    [slow] = findings(probes["p95-slow"])
    # one observation of 0.3 s in the (0.25, 0.5] bucket: PromQL's interpolation gives 0.25 + 0.25 * 0.95
    assert 'p95 of http_request_duration_seconds{route="/slow"} = 0.4875' in slow["message"]
    assert "expected <= 0.25" in slow["message"]
    assert slow["observed"]["bucket_increases"] == {"0.05": 0.0, "0.1": 0.0, "0.25": 0.0, "0.5": 1.0, "1": 1.0,
                                                    "+Inf": 1.0}


def test_scraped_degraded_threshold(tmp_path: Path, sut: str) -> None:
    suite = SCRAPE_SUITE.format(base=sut).replace("fast?latency_s=0.03", "fast?latency_s=0.07")
    proc, probes = run_check(tmp_path, suite, "--probe", "p95-fast")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # degraded counts as a pass
    assert probes["p95-fast"]["state"] == "DEGRADED"
    [soft] = findings(probes["p95-fast"])
    assert soft["severity"] == "degraded" and "degraded: expected <= 0.05" in soft["message"]


QUERY_SUITE = """
daemon: {{poll_interval: 200ms}}
integrations: {{prometheus: {{url: "{prom}"}}}}
probes:
  - id: counted
    kind: http
    timeout: 60s
    request: {{method: POST, url: "{base}/webhook"}}
    expect:
      metrics:
        - query: 'http_requests_total{{route="/webhook", job="tracecanary"}}'
          delta: {{gte: 1}}
          within: 45s
        - query: 'http_request_duration_seconds_bucket{{route="/webhook"}}'
          value: {{quantile: 0.95, lte: 0.05}}
          within: 45s
  - id: forgetful
    kind: http
    request: {{method: POST, url: "{base}/forgetful"}}
    expect:
      metrics:
        - query: 'http_requests_total{{route="/forgetful"}}'
          delta: {{gte: 1}}
          within: 3s
"""


async def wait_scraped(prom_url: str, promql: str, timeout_s: float = 30.0) -> None:
    """Bounded wait until Prometheus has scraped the system once (it offers no notification of it)."""
    async with aiohttp.ClientSession() as session:
        with anyio.fail_after(timeout_s):
            while True:
                async with session.get(f"{prom_url}/api/v1/query", params={"query": promql}) as resp:
                    if (await resp.json())["data"]["result"]:
                        return
                await anyio.sleep(0.2)


@pytest.mark.anyio
async def test_query_through_a_real_prometheus(tmp_path: Path, sut: str) -> None:
    target = sut.removeprefix("http://")
    async with prometheus_server(tmp_path, [target], scrape_interval="1s") as prom:
        await wait_scraped(prom.url, 'http_requests_total{route="/forgetful"}')
        proc, probes = await anyio.to_thread.run_sync(
            lambda: run_check(tmp_path, QUERY_SUITE.format(base=sut, prom=prom.url)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert probes["counted"]["state"] == "WORKING", findings(probes["counted"])
    [miss] = findings(probes["forgetful"])
    series = f'http_requests_total{{instance="{target}",job="tracecanary",route="/forgetful"}}'
    assert f"{series}: 0 → 0" in miss["message"], miss["message"]
    assert 'http_requests_total{route="/forgetful"} moved by 0' in miss["message"]
    assert miss["message"].startswith('metrics query http_requests_total{route="/forgetful"}:')
