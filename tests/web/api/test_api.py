"""The JSON API of the real daemon over a real socket; every body validated against /api/openapi.json."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from openapi_spec_validator import validate as validate_spec

from tests.web.api.conftest import TOKEN, ApiEnv, validate
from tests.web.daemon import serve_routes
from tracecanary.daemon.app import DaemonControl
from tracecanary.daemon.web.api import api_routes

pytestmark = pytest.mark.anyio


async def test_openapi_document_is_valid_and_served(api_env: ApiEnv, openapi: dict[str, Any]) -> None:
    async with api_env.session.get(f"{api_env.base}/api/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc == openapi
    validate_spec(doc)
    assert doc["openapi"] == "3.1.0"
    assert {"/api/probes", "/api/probes/{probe_id}/runs", "/api/runs/{run_id}", "/api/probes/{probe_id}/run",
            "/api/silences", "/api/silences/{silence_id}", "/api/alerts"} <= set(doc["paths"])


async def test_probes_failing_first_with_ratio_and_p95(api_env: ApiEnv, openapi: dict[str, Any]) -> None:
    async with api_env.session.get(f"{api_env.base}/api/probes") as r:
        assert r.status == 200
        body = await r.json()
    validate(openapi, "/api/probes", "get", 200, body)
    ids = [p["id"] for p in body["probes"]]
    assert ids == ["shop-webhook", "never-run", "shop-slack"]
    hook = body["probes"][0]
    assert hook["state"] == "failing" and hook["last_verdict"] == "fail"
    assert hook["runs_24h"] == 12 and hook["success_ratio_24h"] == pytest.approx(10 / 12)
    # durations 100..210 ms step 10: nearest-rank p95 of 12 values is the 12th → 0.21 s
    assert hook["p95_duration_s"] == pytest.approx(0.21, rel=0.15)  # a histogram estimate
    assert len(hook["history"]) == 12 and hook["history"][0]["verdict"] == "fail"
    assert hook["next_run"].endswith("Z") and hook["schedule"] == "every 60s"
    assert 50 < hook["last_verdict_age_s"] < 70
    assert body["probes"][1]["state"] == "pending" and body["probes"][1]["last_run"] is None


async def test_runs_pagination_by_cursor(api_env: ApiEnv, openapi: dict[str, Any]) -> None:
    seen: list[str] = []
    url = f"{api_env.base}/api/probes/shop-webhook/runs?limit=5"
    pages = 0
    while url:
        async with api_env.session.get(url) as r:
            assert r.status == 200
            body = await r.json()
        validate(openapi, "/api/probes/{probe_id}/runs", "get", 200, body)
        seen += [x["run_id"] for x in body["runs"]]
        pages += 1
        nb = body["next_before"]
        url = f"{api_env.base}/api/probes/shop-webhook/runs?limit=5&before={nb}" if nb else ""
    assert len(seen) == len(set(seen)) == 12 and pages == 3
    async with api_env.session.get(f"{api_env.base}/api/probes/nope/runs") as r:
        assert r.status == 404
    async with api_env.session.get(f"{api_env.base}/api/probes/shop-webhook/runs?limit=0") as r:
        assert r.status == 400


async def test_run_detail_has_tree_findings_links_and_no_secrets(
    api_env: ApiEnv, openapi: dict[str, Any]
) -> None:
    async with api_env.session.get(f"{api_env.base}/api/probes/shop-webhook/runs?limit=1") as r:
        run_id = (await r.json())["runs"][0]["run_id"]
    async with api_env.session.get(f"{api_env.base}/api/runs/{run_id}") as r:
        assert r.status == 200
        text = await r.text()
        body = await r.json()
    validate(openapi, "/api/runs/{run_id}", "get", 200, body)
    assert body["run"]["verdict"] == "fail"
    assert body["findings"][0]["type"] == "trace.missing" and "fetch-gex-data" in body["findings"][0]["message"]
    main, linked = body["traces"]
    assert main["trace_id"] == body["run"]["trace_id"]
    root = main["roots"][0]
    post = root["children"][0]
    assert (root["name"], post["name"]) == ("tracecanary probe shop-webhook", "POST /webhook")
    assert [c["name"] for c in post["children"]] == ["validate-payload", "data-enrichment", "orders publish"]
    assert linked["roots"][0]["name"] == "orders process"
    assert body["links"]["jaeger"].endswith(body["run"]["trace_id"])
    assert body["trace_report"]["missing"][0]["path"] == "expect.trace.tree[0].children[1].children[1]"
    assert body["response"]["headers"]["Set-Cookie"] == "[redacted]"
    assert "s3cr3t" not in text
    async with api_env.session.get(f"{api_env.base}/api/runs/unknown") as r:
        assert r.status == 404


async def test_fire_now_requires_token_and_returns_run(api_env: ApiEnv, openapi: dict[str, Any]) -> None:
    url = f"{api_env.base}/api/probes/shop-slack/run"
    async with api_env.session.post(url, json={}) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    async with api_env.session.post(url, json={}, headers=api_env.auth("wrong")) as r:
        assert r.status == 401
        assert TOKEN not in await r.text()
    async with api_env.session.post(url, data="x", headers={**api_env.auth(), "Content-Type": "text/plain"}) as r:
        assert r.status == 415
    async with api_env.session.post(f"{api_env.base}/api/probes/nope/run", json={}, headers=api_env.auth()) as r:
        assert r.status == 404
    async with api_env.session.post(url, json={}, headers=api_env.auth()) as r:
        assert r.status == 202
        fired = await r.json()
    validate(openapi, "/api/probes/{probe_id}/run", "post", 202, fired)
    # running: the live buffer fills; then the finished run is stored
    # the run is recorded a moment after it was accepted (404 until then), then the live buffer fills
    with anyio.fail_after(5):
        while True:
            async with api_env.session.get(f"{api_env.base}{fired['url']}") as r:
                detail = await r.json()
                if r.status == 404:
                    validate(openapi, "/api/runs/{run_id}", "get", 404, detail)
                    await anyio.sleep(0.02)
                    continue
            validate(openapi, "/api/runs/{run_id}", "get", 200, detail)
            if detail["run"]["status"] == "finished":
                break
            assert detail["live"] is True
            await anyio.sleep(0.02)
    assert detail["run"]["verdict"] == "pass" and len(detail["spans"]) == 9 and detail["live"] is False
    assert api_env.running.target.requests == 1  # a real run: the probe fired at the system under test


async def test_silences_roundtrip(api_env: ApiEnv, openapi: dict[str, Any]) -> None:
    base = api_env.base
    async with api_env.session.post(f"{base}/api/silences", json={"probes": ["shop-*"]}) as r:
        assert r.status == 401
    bad = {"probes": ["shop-*"]}  # neither start/end nor cron/duration
    async with api_env.session.post(f"{base}/api/silences", json=bad, headers=api_env.auth()) as r:
        assert r.status == 400
        assert "one-off" in (await r.json())["error"]
    good = {"probes": ["shop-web*"], "start": "2020-01-01T00:00:00Z", "end": "2999-01-01T00:00:00Z",
            "comment": "deploy"}
    async with api_env.session.post(f"{base}/api/silences", json=good, headers=api_env.auth()) as r:
        assert r.status == 201
        created = await r.json()
    validate(openapi, "/api/silences", "post", 201, created)
    assert created["active"] is True and created["comment"] == "deploy" and created["source"] == "api"
    async with api_env.session.get(f"{base}/api/alerts") as r:
        alerts = await r.json()
        validate(openapi, "/api/alerts", "get", 200, alerts)
    assert [s["id"] for s in alerts["silences"]] == [created["id"]]
    assert alerts["alerts"] == [] and alerts["queue"] == {"pending": 0, "dropped": 0}
    async with api_env.session.get(f"{base}/api/probes") as r:
        states = {p["id"]: p["state"] for p in (await r.json())["probes"]}
    assert states["shop-webhook"] == "silenced" and states["shop-slack"] == "ok"
    url = f"{base}/api/silences/{created['id']}"
    async with api_env.session.delete(url) as r:
        assert r.status == 401
    async with api_env.session.delete(url, headers=api_env.auth()) as r:
        assert r.status == 204
    async with api_env.session.delete(url, headers=api_env.auth()) as r:
        assert r.status == 404


async def test_alert_routes_501_without_alert_manager(api_env: ApiEnv) -> None:
    control = DaemonControl(api_env.control.engine)  # the same started engine, no alert manager
    async with serve_routes(api_routes(control, api_token=TOKEN)) as base:
        async with api_env.session.get(f"{base}/api/alerts") as r:
            assert r.status == 501
        async with api_env.session.post(f"{base}/api/silences", json={}, headers=api_env.auth()) as r:
            assert r.status == 501


async def test_cluster_of_a_single_daemon(api_env: ApiEnv, openapi: dict[str, Any]) -> None:
    async with api_env.session.get(f"{api_env.base}/api/cluster") as r:
        assert r.status == 200
        body = await r.json()
    validate(openapi, "/api/cluster", "get", 200, body)
    assert body["mode"] == "single" and body["role"] == "single" and body["epoch"] is None
    [me] = body["members"]
    assert me["member"] == body["member"] and me["role"] == "single" and me["alive"] is True
    assert me["address"] == api_env.base.removeprefix("http://")
    async with api_env.session.get(f"{api_env.base}/metrics") as r:
        metrics = await r.text()
    assert 'tracecanary_cluster_role{role="single"} 1.0' in metrics
    assert 'tracecanary_cluster_role{role="standby"} 0.0' in metrics
