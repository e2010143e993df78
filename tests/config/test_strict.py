"""The config checker: never a traceback on any input, the JSON Schema matches the project's own
files, templates are compiled with the variables the runs really have."""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.config.test_config import HERE, ROOT
from tracecanary.daemon.config.checks import TEMPLATE_VARIABLES
from tracecanary.daemon.config.load import Config, load_config
from tracecanary.daemon.config.yaml_doc import expand_env
from tracecanary.errors import ConfigError

SCHEMA = json.loads((ROOT / "config" / "schema.json").read_text())
PROJECT_SUITES = [ROOT / "config" / "demo.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml")),
                  ROOT / "tests" / "probes" / "data" / "probe-kinds.yaml"]
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.mark.parametrize("suite", PROJECT_SUITES, ids=[p.name for p in PROJECT_SUITES])
def test_schema_validates_the_projects_own_suites(suite: Path) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in VALIDATOR.iter_errors(yaml.safe_load(suite.read_text()))]
    assert errors == []


def test_schema_takes_duration_strings_and_references_but_not_nonsense() -> None:
    def ok(doc: dict[str, Any]) -> bool:
        return VALIDATOR.is_valid(doc)

    probe = {"id": "a", "kind": "http", "request": {"url": "http://127.0.0.1:9/"}}
    assert ok({"probes": [{**probe, "every": "30s", "timeout": "1m30s", "jitter": "10%"}]})
    assert ok({"probes": [{**probe, "every": 30, "retries": {"count": "${RETRIES}", "delay": "${DELAY:-1s}"}}]})
    assert ok({"daemon": {"otlp": {"max_body": "64MiB"}, "shutdown_grace": "5s"}})
    assert not ok({"probes": [{**probe, "every": "30 sec"}]})
    assert not ok({"probes": [{**probe, "retries": {"count": "three"}}]})
    assert not ok({"probes": [{**probe, "kind": "${KIND}"}]})  # the discriminator stays literal
    assert not ok({"probes": [{**probe, "typo": 1}]})
    assert SCHEMA["$defs"]["HttpAuth"]["properties"]["bearer"]["writeOnly"] is True


def test_template_variables_are_what_a_run_renders_with() -> None:
    from tracecanary.probes.base import Inject, ProbeContext, RunLog, TraceContext
    from tracecanary.probes.templating import Templates

    ctx = ProbeContext(probe_id="p", run_id="r", attempt=1, first_run_id="r", trace=TraceContext("0" * 32, "0" * 16),
                       session=None, templates=Templates(), integrations=None, inject=Inject(),  # type: ignore[arg-type]
                       log=RunLog(), trigger_ns=0, deadline_s=0.0)
    assert set(ctx.template_vars()) == TEMPLATE_VARIABLES


def test_public_values_and_defaults_are_not_secrets(tmp_path: Path) -> None:
    found: list[str] = []
    env = {"TOKEN": "t0k3n-value", "URL": "http://127.0.0.1:9"}
    text = "${URL}|${public:URL}|${public:NOPE:-x}|${NOPE:-default}|Bearer ${TOKEN}"
    assert expand_env(text, env, found) == "http://127.0.0.1:9|http://127.0.0.1:9|x|default|Bearer t0k3n-value"
    assert found == ["http://127.0.0.1:9", "t0k3n-value"]


def test_github_webhook_users_are_known(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("probes:\n  - id: a\n    kind: http\n    request: {url: 'http://127.0.0.1:9/'}\n")
    assert not load_config(f).uses_github_webhooks()
    f.write_text("probes:\n  - id: a\n    kind: http\n    request: {url: 'http://127.0.0.1:9/'}\n"
                 "    expect: {side_effects: [{github: {repo: acme/app, pull: 1, comment: {contains: x}, within: 5s}}]}\n")
    assert load_config(f).uses_github_webhooks()


# --- never a traceback ---------------------------------------------------------------------------
KEYS = ["probes", "daemon", "integrations", "alerts", "links", "demo", "id", "kind", "http", "every", "cron",
        "timeout", "request", "url", "json", "body", "headers", "auth", "bearer", "expect", "response", "status",
        "trace", "tree", "span", "children", "side_effects", "slack", "within", "channels", "policies", "type",
        "listen", "otlp", "retries", "count", "github", "steps", "sign", "secret", "matches", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.sampled_from(["http", "webhook", "30s", "9xx", "{{ run_id", "${X}", "${file:/nonexistent}",
                                     "127.0.0.1:0", "(", "*", ""]), st.text(max_size=12))
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=40)


DEMO = (ROOT / "config" / "demo.yaml").read_bytes()
DEMO_ENV = {name: "U0BOT" if name.endswith("BOT_USER") else "acme/app" if name.endswith("REPO") else
            "12" if name.endswith("PULL") else "127.0.0.1:9" if name.endswith(("BOOTSTRAP", "LISTEN", "HTTP")) else
            "http://127.0.0.1:9" if name.endswith(("URL", "API")) else "C0TEST"
            for name in re.findall(r"\$\{(?:public:)?(DEMO_[A-Z_]+)", DEMO.decode())}


def test_the_demo_suite_loads_with_its_variables() -> None:
    assert len(_load_text(DEMO).probes) == 8  # type: ignore[union-attr]


def _load_text(text: bytes) -> Config | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.yaml"
        path.write_bytes(text)
        try:
            return load_config(path, {"X": "1", **DEMO_ENV})
        except ConfigError as e:
            assert e.errors and all(isinstance(line, str) and "\n" not in line for line in e.errors)
            return None


# More examples for a deeper run on one's own machine: TRACECANARY_FUZZ_EXAMPLES=5000 (CI keeps 150).
FUZZ = settings(max_examples=int(os.environ.get("TRACECANARY_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(DOCS)
def test_any_structure_is_a_config_or_config_errors(doc: Any) -> None:
    _load_text(yaml.safe_dump({"probes": [doc]} if not isinstance(doc, dict) else doc).encode())


@FUZZ
@given(st.integers(0, len(DEMO) - 1), st.integers(1, 40), st.binary(max_size=6))
def test_a_damaged_demo_suite_is_config_errors(at: int, cut: int, insert: bytes) -> None:
    _load_text(DEMO[:at] + insert + DEMO[at + cut:])


# Suites that reach every model (each probe kind, steps, trace trees, side effects, alerts, silences):
# a few values changed, removed or added anywhere in them reach the rules across fields with any type.
SUITES = [yaml.safe_load(p.read_text()) for p in [
    *PROJECT_SUITES, HERE / "invalid-one-pass.yaml", *sorted(HERE.glob("invalid-*-rules.yaml")),
    HERE / "invalid-slack-deliver.yaml", HERE / "invalid-github-action.yaml",
    HERE / "invalid-channel-credentials-one-pass.yaml"]]


def _paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, (*at, key))


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


VOCABULARY = sorted({p[-1] for suite in SUITES for p in _paths(suite) if p and isinstance(p[-1], str)})
WRITTEN = list({repr(v): v for suite in SUITES for p in _paths(suite)
                if not isinstance(v := _at(suite, p), dict | list)}.values())
VALUES = st.one_of(DOCS, st.sampled_from(WRITTEN))  # any structure, or a value some suite really has


@FUZZ
@given(st.data())
def test_a_mutated_suite_is_a_config_or_config_errors(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(SUITES)))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(doc))[1:]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = _at(doc, path[:-1])
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(VOCABULARY))] = data.draw(VALUES)
    _load_text(yaml.safe_dump(doc, sort_keys=False).encode())
