"""config/demo.yaml loads with the world's variables, covers every probe kind, and its demo: section is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracecanary.daemon.config.load import load_config
from tracecanary.demo.world import CHANNELS, REPO, DemoSettings
from tracecanary.probes.registry import PROBES

DEMO_YAML = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


@pytest.fixture
def world_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "DEMO_INGEST_URL": "http://127.0.0.1:1", "DEMO_SCHEDULER_URL": "http://127.0.0.1:2",
        "DEMO_SLACK_API": "http://127.0.0.1:3/api/", "DEMO_GITHUB_API": "http://127.0.0.1:4",
        "DEMO_KAFKA_BOOTSTRAP": "127.0.0.1:5", "DEMO_WEBHOOK_SECRET": "s", "DEMO_SLACK_SIGNING_SECRET": "z",
        "DEMO_SLACK_USER_TOKEN": "xoxp-user", "DEMO_SLACK_BOT_TOKEN": "xoxb-bot", "DEMO_GITHUB_TOKEN": "ghp-prober",
        "DEMO_BOT_USER": "U0BOT", "DEMO_GITHUB_REPO": REPO, "DEMO_GITHUB_PULL": "1",
        **{f"DEMO_CHANNEL_{k.upper()}": v for k, v in CHANNELS.items()},
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_demo_suite_loads_and_declares_every_fault(world_env: None) -> None:
    config = load_config(DEMO_YAML)
    ids = {p.id for p in config.probes}
    assert {p.kind for p in config.probes} == set(PROBES)  # every probe kind is demonstrated
    demo = DemoSettings.model_validate(config.extra.demo)
    assert [f.inject for f in demo.faults] == ["drop-span", "slow-dependency", "break-propagation", "silent-bot"]
    for fault in demo.faults:
        assert set(fault.verdicts) <= ids and set(fault.finding) <= set(fault.verdicts), fault.name
    webhook = next(p for p in config.probes if p.id == "shop-webhook")
    assert webhook.expect.trace is not None and webhook.expect.trace.tree[0].span == "POST /webhook"
