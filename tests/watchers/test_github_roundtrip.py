"""config/examples/github-pr-roundtrip.yaml end to end: open a PR, see the review, always clean up."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import pytest

from tests.watchers.support import probe_context
from tests.watchers.test_github_flow import github_world
from tracecanary.assertions.side_effects import GithubEffect
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.watchers.base import Services, WatchContext
from tracecanary.daemon.watchers.github import watch_github
from tracecanary.demo.emulators.github import GitHubEmulator
from tracecanary.probes.steps import StepsProbe
from tracecanary.probes.templating import render_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "github-pr-roundtrip.yaml"


async def roundtrip(em: GitHubEmulator, monkeypatch: pytest.MonkeyPatch) -> tuple[list[object], list[object], str]:
    monkeypatch.setenv("GITHUB_API", em.base_url)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-prober")
    monkeypatch.setenv("GITHUB_REPO", "acme/app")
    config = load_config(EXAMPLE)
    probe = config.probes[0]
    assert isinstance(probe, StepsProbe)
    effect = probe.expect.side_effects[0].github
    assert isinstance(effect, GithubEffect)
    effect = effect.model_copy(update={"within": 3.0})
    async with aiohttp.ClientSession() as session:
        ctx = probe_context(session, config.integrations.model_dump(), timeout_s=10)
        try:
            fired = await probe.fire(ctx)
            assert fired.findings == []
            with anyio.fail_after(10):
                findings = await watch_github(render_spec(effect, ctx.render), WatchContext(probe=ctx, services=Services(),
                                                                   poll_interval_s=0.05))
        finally:
            cleanup = await probe.teardown(ctx)
    return list(findings), list(cleanup), ctx.run_id


@pytest.mark.anyio
async def test_pr_roundtrip_sees_review_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    async with github_world(None) as world:
        em = world.em
        findings, cleanup, run_id = await roundtrip(em, monkeypatch)
        pr = em.repos["acme/app"].issues[1]
        refs = set(em.repos["acme/app"].refs)
    assert findings == [] and cleanup == []
    assert pr["state"] == "closed" and pr["head"]["ref"] == f"tracecanary-{run_id}"
    assert pr["body"].startswith("Synthetic check; closed automatically. traceparent: 00-")
    assert refs == {"main"}
    assert [d["action"] for d in em.deliveries if d["event"] == "pull_request"] == ["opened", "closed"]


@pytest.mark.anyio
async def test_pr_roundtrip_cleans_up_after_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    async with github_world(None, bot={"review_text": None, "check_conclusion": None}) as world:
        em = world.em
        findings, cleanup, _ = await roundtrip(em, monkeypatch)
        state = em.repos["acme/app"].issues[1]["state"]
        refs = set(em.repos["acme/app"].refs)
    assert len(findings) == 1 and "no comment appeared" in str(findings[0])
    assert cleanup == [] and state == "closed" and refs == {"main"}
