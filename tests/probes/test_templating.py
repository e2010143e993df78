"""Templating: the sandbox refuses escapes; whole-expression values keep their type in JSON bodies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tracecanary.errors import ProbeError
from tracecanary.probes.templating import Templates

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ steps.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ random_uuid.__globals__ }}",
    "x {{ steps.update({'a': 1}) }}",
    "{{ (1).__class__.__base__ }}",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_sandbox_escapes_are_refused(text: str) -> None:
    templates = Templates()
    variables = {"steps": {"create": {"json": {"id": 7}}}}
    with pytest.raises(ProbeError):
        templates.render_str(text, variables)
    with pytest.raises(ProbeError):
        templates.render_native(text, variables)
    assert variables == {"steps": {"create": {"json": {"id": 7}}}}


def test_native_rendering_keeps_types_only_for_whole_expressions() -> None:
    templates = Templates()
    variables = {"steps": {"create": {"json": {"id": 7, "tags": ["a"]}}}, "run_id": "r-1"}
    body = {"id": "{{ steps.create.json.id }}", "tags": "{{ steps.create.json.tags }}",
            "label": "job {{ steps.create.json.id }}", "run": "{{ run_id }}", "n": 3, "list": ["{{ 1 + 1 }}"]}
    assert templates.render_native(body, variables) == {
        "id": 7, "tags": ["a"], "label": "job 7", "run": "r-1", "n": 3, "list": [2],
    }
    assert templates.render(body, variables)["id"] == "7"
    with pytest.raises(ProbeError, match="has no attribute 'nope'"):
        templates.render_native("{{ steps.nope }}", variables)
    with pytest.raises(ProbeError, match="undefined"):
        templates.render_native("{{ missing }}", variables)


def test_helpers() -> None:
    templates = Templates()
    later = datetime.fromisoformat(templates.render_str("{{ now_plus('1m') }}", {}))
    assert 55 < (later - datetime.now(UTC)).total_seconds() <= 60
    assert int(templates.render_str("{{ unix_time() }}", {})) > 1_700_000_000
    assert len(templates.render_str("{{ random_uuid() }}", {})) == 36
