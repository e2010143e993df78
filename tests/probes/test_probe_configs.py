"""Every probe kind of this area loads from YAML through the real config loader; errors are exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracecanary.daemon.config.load import load_config
from tracecanary.errors import ConfigError
from tracecanary.probes.github import GithubWebhookProbe
from tracecanary.probes.http import HttpProbe
from tracecanary.probes.kafka import KafkaProbe
from tracecanary.probes.scheduled_job import ScheduledJobProbe
from tracecanary.probes.steps import StepsProbe

DATA = Path(__file__).parent / "data"


def test_every_kind_loads() -> None:
    config = load_config(DATA / "probe-kinds.yaml")
    kinds = {p.id: type(p) for p in config.probes}
    assert kinds == {"orders-webhook": HttpProbe, "pr-opened": GithubWebhookProbe, "publish": KafkaProbe,
                     "job-lifecycle": ScheduledJobProbe, "multi": StepsProbe}
    multi = next(p for p in config.probes if isinstance(p, StepsProbe))
    assert [s.label for s in multi.steps] == ["create", "wait", "check"] and multi.teardown_[0].requires == "create"


def test_invalid_kinds_report_file_line_and_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "invalid-probe-kinds.yaml")
    name = str(DATA / "invalid-probe-kinds.yaml")
    assert info.value.errors == [
        f"{name}:5 probes[multi].steps[0]: a step takes exactly one of http, github_webhook, kafka, "
        "slack_mention, wait; got http, wait",
        f"{name}:8 probes[gh].delivery: event push takes no action; got 'opened'",
        f"{name}:11 probes[h].request.sign: sign.header is required for scheme hmac",
        f"{name}:12 probes[h].expect.response.json_fields: invalid JSONPath 'a[[': Parse error at 1:4 near token [ ([)",
    ]
