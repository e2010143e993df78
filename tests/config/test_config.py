"""Config loading: every invalid fixture prints exactly its expected errors and exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracecanary.daemon.config.load import expand_env, load_config, schema
from tracecanary.errors import ConfigError
from tracecanary.probes.http import HttpProbe

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
FIXTURES = sorted(HERE.glob("invalid-*.yaml"))


def expected_errors(path: Path) -> list[str]:
    """A fixture's expected messages are its leading ``# error: …`` comment lines."""
    out = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():  # invalid-binary is not text
        if line.startswith("# error: "):
            out.append(line[len("# error: "):])
    return out


def test_there_is_a_fixture_per_rule() -> None:
    names = {p.stem for p in FIXTURES}
    for rule in ("duplicate-id", "unknown-kind", "bad-duration", "bad-cron", "unknown-key",
                 "within-over-timeout", "unknown-policy", "unknown-channel", "yaml", "binary", "not-text",
                 "alias-bomb", "non-string-key", "empty", "channel-field", "template", "regex", "status",
                 "listen", "one-pass", "many-errors", "unsigned-webhooks", "secret-quoted", "missing-env",
                 "steps-rules", "sign-rules", "slack-deliver", "github-action", "trace-rules", "side-effect-rules",
                 "alert-rules", "channel-credentials-one-pass", "control-characters", "cluster",
                 "metrics-rules", "grpc-proto"):
        assert f"invalid-{rule}" in names


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_invalid_fixture_exact_messages(fixture: Path) -> None:
    expected = expected_errors(fixture)
    assert expected, f"{fixture.name} has no '# error:' lines"
    rel = fixture.relative_to(ROOT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECANARY_TEST_UNSET")}
    proc = subprocess.run(
        [sys.executable, "-m", "tracecanary.daemon.cli.main", "validate", str(rel)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[:-1] == expected
    assert lines[-1] == f"{len(expected)} error{'s' if len(expected) != 1 else ''}"


def test_valid_config_directory_merges_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "probes:\n  - id: one\n    kind: http\n    every: 30s\n    request: {url: 'http://127.0.0.1:9/'}\n")
    (tmp_path / "b.yml").write_text(
        "daemon:\n  listen: 127.0.0.1:0\n  max_concurrent_runs: 3\n"
        "probes:\n  - id: two\n    kind: http\n    cron: '*/5 * * * *'\n    request: {url: 'http://127.0.0.1:9/'}\n")
    cfg = load_config(tmp_path)
    assert [p.id for p in cfg.probes] == ["one", "two"]
    assert cfg.daemon.max_concurrent_runs == 3
    assert cfg.probes[0].every == 30.0
    proc = subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", "validate", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_section_in_two_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("daemon: {listen: 127.0.0.1:1}\n")
    (tmp_path / "b.yaml").write_text("daemon: {listen: 127.0.0.1:2}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert e.value.errors == [f"{tmp_path / 'b.yaml'}:1 daemon: also set in {tmp_path / 'a.yaml'}; set each section in one file"]


def test_env_expansion(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    env = {"TARGET": "http://127.0.0.1:1234"}
    assert expand_env("${TARGET}/x", env) == "http://127.0.0.1:1234/x"
    assert expand_env("${MISSING:-fallback}", env) == "fallback"
    assert expand_env("${MISSING:-}", env) == ""
    assert expand_env(f"${{file:{secret}}}", env) == "s3cr3t"
    assert expand_env("$${LITERAL}", env) == "${LITERAL}"
    with pytest.raises(ValueError, match="MISSING is not set"):
        expand_env("${MISSING}", env)
    with pytest.raises(ValueError, match="cannot read secret file"):
        expand_env("${file:/nonexistent/secret}", env)


def test_load_config_resolves_variables_from_the_given_environ_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("daemon: {api_token: '${TC_TEST_TOKEN}'}\n"
                 "probes:\n  - id: one\n    kind: http\n    request: {url: '${TC_TEST_TARGET}/x'}\n")
    monkeypatch.delenv("TC_TEST_TARGET", raising=False)
    monkeypatch.setenv("TC_TEST_TOKEN", "from-the-process")
    cfg = load_config(f, {"TC_TEST_TARGET": "http://127.0.0.1:1234", "TC_TEST_TOKEN": "from-the-mapping"})
    [probe] = cfg.probes
    assert isinstance(probe, HttpProbe) and probe.request.url == "http://127.0.0.1:1234/x"
    assert cfg.daemon.api_token == "from-the-mapping"
    assert "TC_TEST_TARGET" not in os.environ
    with pytest.raises(ConfigError) as e:
        load_config(f, {"TC_TEST_TARGET": "http://127.0.0.1:1234"})  # the process's TC_TEST_TOKEN is not used
    assert e.value.errors == [f"{f}:1 daemon.api_token: environment variable TC_TEST_TOKEN is not set "
                              "(use ${TC_TEST_TOKEN:-default} for a default)"]


def test_templates_are_left_for_the_run(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("probes:\n  - id: one\n    kind: http\n    request:\n      url: 'http://127.0.0.1:9/'\n"
                 "      json: {test_id: '{{ run_id }}'}\n")
    cfg = load_config(f)
    assert cfg.probes[0].request.json_ == {"test_id": "{{ run_id }}"}  # type: ignore[attr-defined]


def test_schema_file_is_fresh() -> None:
    committed = json.loads((ROOT / "config" / "schema.json").read_text())
    assert committed == schema(), "config/schema.json is stale: run `tracecanary schema > config/schema.json`"


WARN_FIXTURES = sorted(HERE.glob("warn-*.yaml"))


@pytest.mark.parametrize("fixture", WARN_FIXTURES, ids=[p.stem for p in WARN_FIXTURES])
def test_warning_fixture_prints_warnings_and_exits_0(fixture: Path) -> None:
    """``# warning: …`` lines are printed on stderr, exactly; the config is valid (exit 0)."""
    expected = [line[len("# warning: "):] for line in fixture.read_text().splitlines()
                if line.startswith("# warning: ")]
    assert expected, f"{fixture.name} has no '# warning:' lines"
    rel = fixture.relative_to(ROOT)
    proc = subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", "validate", str(rel)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == expected
    n = len(expected)
    assert proc.stdout.strip().endswith(f", {n} warning{'s' if n != 1 else ''})")
    cfg = load_config(rel if rel.is_absolute() else ROOT / rel)
    assert [str(w) for w in cfg.warnings] == [w.replace(str(rel), str(ROOT / rel), 1) for w in expected]
