"""A ``${VAR}`` that a ``requires.env`` names is no config error when unset: inside a probe only that probe's
own ``requires.env`` excuses it, elsewhere (an integration's token) any probe's, in any file of the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracecanary.daemon.config.load import load_config
from tracecanary.errors import ConfigError


def test_unset_variables_named_by_requires_expand_to_empty(tmp_path: Path) -> None:
    (tmp_path / "a-integrations.yaml").write_text(
        'integrations: {slack: {bot_token: "${SLACK_BOT_TOKEN}"}, prometheus: {url: "${PROM_URL}"}}\n')
    (tmp_path / "b-probes.yaml").write_text("""
probes:
  - id: slack-reply
    kind: http
    requires:
      env: [SLACK_BOT_TOKEN, PROM_URL]
      reachable: ["${PROM_URL}/-/ready", "tcp://127.0.0.1:9"]
      files: ["${PROM_URL}"]
    request: {url: "${TARGET}/x?token=${SLACK_BOT_TOKEN}"}
""")
    cfg = load_config(tmp_path, environ={"TARGET": "http://127.0.0.1:9"})
    assert cfg.integrations.slack.bot_token == "" and cfg.integrations.prometheus.url == ""
    probe = cfg.probe("slack-reply")
    assert probe.requires.env == ["SLACK_BOT_TOKEN", "PROM_URL"]
    # a target built from a missing variable names nothing: left out (the run is skipped for the variable)
    assert (probe.requires.reachable, probe.requires.files) == (["tcp://127.0.0.1:9"], [])
    assert probe.model_dump()["request"]["url"] == "http://127.0.0.1:9/x?token="
    assert "http://127.0.0.1:9" in cfg.secrets()  # what was set is still a secret by provenance


def test_another_probes_requires_does_not_excuse(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("""
probes:
  - id: has-it
    kind: http
    requires: {env: [TOKEN]}
    request: {url: "http://127.0.0.1:9/a", headers: {Authorization: "Bearer ${TOKEN}"}}
  - id: lacks-it
    kind: http
    request: {url: "http://127.0.0.1:9/b", headers: {Authorization: "Bearer ${TOKEN}"}}
""")
    with pytest.raises(ConfigError) as e:
        load_config(suite, environ={})
    assert [str(x) for x in e.value.errors] == [
        f"{suite}:9 probes[lacks-it].request.headers.Authorization: environment variable TOKEN is not set "
        "(use ${TOKEN:-default} for a default)"]
