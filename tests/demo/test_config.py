"""config/demo.yaml loads with the world's variables, covers every probe kind, and its demo: section is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracecanary.daemon.config.load import load_config
from tracecanary.demo.world import CHANNELS, REPO, DemoSettings
from tracecanary.probes.grpc_proto import compile_proto
from tracecanary.probes.registry import PROBES

DEMO_YAML = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


@pytest.fixture
def world_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "DEMO_INGEST_URL": "http://127.0.0.1:1", "DEMO_SCHEDULER_URL": "http://127.0.0.1:2",
        "DEMO_SLACK_API": "http://127.0.0.1:3/api/", "DEMO_GITHUB_API": "http://127.0.0.1:4",
        "DEMO_KAFKA_BOOTSTRAP": "127.0.0.1:5", "DEMO_WEBHOOK_SECRET": "s", "DEMO_SLACK_SIGNING_SECRET": "z",
        "DEMO_SLACK_USER_TOKEN": "xoxp-user", "DEMO_SLACK_BOT_TOKEN": "xoxb-bot", "DEMO_GITHUB_TOKEN": "ghp-prober",
        "DEMO_BOT_USER": "U0BOT", "DEMO_GITHUB_REPO": REPO, "DEMO_GITHUB_PULL": "1", "DEMO_PRICING_GRPC": "127.0.0.1:6",
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


def test_the_quote_probe_calls_the_service_pricing_serves(world_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """config/demo.yaml's inline proto and demo/shop/pricing.proto (what the service serves) agree."""
    monkeypatch.setenv("DEMO_PRICING_GRPC", "127.0.0.1:6")
    probe = next(p for p in load_config(DEMO_YAML).probes if p.kind == "grpc")
    served = compile_proto((DEMO_YAML.parents[1] / "demo" / "shop" / "pricing.proto").read_text())
    method = served.unary(probe.request.method)  # type: ignore[attr-defined]
    for side in ("input_type", "output_type"):
        fields = {f.name: f.type for f in getattr(method, side).fields}
        configured = getattr(probe.request._method, side)  # type: ignore[attr-defined]
        assert {f.name: f.type for f in configured.fields} == fields, side
