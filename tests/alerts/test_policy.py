"""Table tests of the pure alert state machine and of the alert settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tracecanary.daemon.alerts.policy import (
    AlertsSettings,
    Observation,
    PolicySettings,
    ProbeAlertState,
    step,
    validate_references,
)
from tracecanary.integrations import Integrations

P = "orders"


def drive(policy: PolicySettings, verdicts: str, *, silenced: str = "", start_s: float = 0.0,
          every_s: float = 60.0) -> list[str]:
    """Feed one verdict per character (p=pass d=degraded f=fail e=error); returns what was announced,
    as ``<run index>:<event>`` (``~`` marks a silenced event). ``silenced`` marks runs under a silence."""
    codes = {"p": "pass", "d": "degraded", "f": "fail", "e": "error"}
    state = ProbeAlertState()
    out: list[str] = []
    for i, c in enumerate(verdicts):
        obs = Observation(P, f"r{i}", codes[c], int((start_s + i * every_s) * 1e9))
        d = step(state, policy, obs, silenced=silenced[i:i + 1] == "s")
        out += [f"{i}:{e.kind}" for e in d.send] + [f"{i}:~{e.kind}" for e in d.silenced]
        state = d.state
    return out


ALL = ["failing", "recovered", "degraded"]


@pytest.mark.parametrize(("policy", "verdicts", "expected"), [
    # thresholds
    ({}, "pfpffpp", ["4:failing", "5:recovered"]),
    ({"failure_threshold": 1}, "fp", ["0:failing", "1:recovered"]),
    ({"failure_threshold": 3}, "ffpfff", ["5:failing"]),
    ({"recovery_threshold": 2}, "ffpfpp", ["1:failing", "5:recovered"]),
    ({}, "effp", ["1:failing", "3:recovered"]),  # error counts as a failure
    # x-of-y window for flapping targets
    ({"failures": "3 of 5"}, "fpfpf", ["4:failing"]),
    ({"failures": "3 of 5"}, "fppfpf", []),
    ({"failures": "3 of 5"}, "fpfpfpffp", ["4:failing", "5:recovered"]),  # window restarts on recovery
    ({"failures": "3 of 5", "recovery_threshold": 3}, "fpfpfpfpfppp", ["4:failing", "11:recovered"]),
    ({"failures": "2 of 2"}, "ff", ["1:failing"]),
    # degraded
    ({"notify_on": ALL}, "ddp", ["1:degraded", "2:recovered"]),
    ({}, "ddp", []),  # degraded not announced by default, so no recovery either
    ({"notify_on": ALL}, "ddffp", ["1:degraded", "3:failing", "4:recovered"]),
    ({"notify_on": ALL}, "ffdp", ["1:failing", "2:recovered"]),  # degraded counts as passing when failing
    ({"notify_on": ["failing"]}, "ffp", ["1:failing"]),
])
def test_transitions(policy: dict[str, object], verdicts: str, expected: list[str]) -> None:
    assert drive(PolicySettings.model_validate(policy), verdicts) == expected


@pytest.mark.parametrize(("remind", "every_s", "verdicts", "expected"), [
    ("5m", 60, "ffffffffffff", ["1:failing", "6:reminder", "11:reminder"]),
    ("5m", 60, "fffffffp", ["1:failing", "6:reminder", "7:recovered"]),
    (None, 60, "ffffffffffff", ["1:failing"]),
    ("1m", 600, "fffp", ["1:failing", "2:reminder", "3:recovered"]),  # runs sparser than reminders: one each
])
def test_reminders(remind: str | None, every_s: float, verdicts: str, expected: list[str]) -> None:
    policy = PolicySettings.model_validate({"remind_every": remind})
    assert drive(policy, verdicts, every_s=every_s) == expected


def test_acknowledged_incident_stops_reminding_but_recovers() -> None:
    policy = PolicySettings.model_validate({"remind_every": "1m", "failure_threshold": 1})
    state, sent = ProbeAlertState(), []
    for i, c in enumerate("fffffp"):
        obs = Observation(P, f"r{i}", "fail" if c == "f" else "pass", int(i * 90 * 1e9))
        d = step(state, policy, obs, silenced=False)
        sent += [f"{i}:{e.kind}" for e in d.send]
        state = d.state
        if i == 1:
            state.acknowledged_by = "alice"  # what AlertManager.acknowledge stores
    assert sent == ["0:failing", "1:reminder", "5:recovered"]
    assert state.acknowledged_by is None  # a new incident starts unacknowledged


@pytest.mark.parametrize(("verdicts", "silenced", "expected"), [
    ("ffp", "sss", ["1:~failing"]),  # silenced firing: recorded; nobody paged, so no recovery either
    ("fffp", "ss..", ["1:~failing", "2:failing", "3:recovered"]),  # silence ended mid-incident: fires late
    ("ffp", "..s", ["1:failing", "2:~recovered"]),
])
def test_silenced(verdicts: str, silenced: str, expected: list[str]) -> None:
    assert drive(PolicySettings(), verdicts, silenced=silenced) == expected


def test_incident_ids_are_deterministic_and_dedup_keys_unique() -> None:
    policy = PolicySettings.model_validate({"remind_every": "1m"})
    state = ProbeAlertState()
    keys = []
    for i, v in enumerate(["pass", "fail", "fail", "fail", "pass", "fail", "fail"]):
        d = step(state, policy, Observation(P, f"r{i}", v, i * 60 * 10**9), silenced=False)
        keys += [(e.incident_id, e.dedup_key) for e in d.send]
        state = d.state
    assert keys == [
        ("orders:r1", "orders:r1:failing"), ("orders:r1", "orders:r1:reminder:1"),
        ("orders:r1", "orders:r1:recovered"), ("orders:r5", "orders:r5:failing"),
    ]


def test_same_run_twice_is_a_no_op() -> None:
    policy = PolicySettings(failure_threshold=1)
    d1 = step(ProbeAlertState(), policy, Observation(P, "r0", "fail", 0), silenced=False)
    d2 = step(d1.state, policy, Observation(P, "r0", "fail", 0), silenced=False)
    assert [e.kind for e in d1.send] == ["failing"] and d2.send == [] and d2.state == d1.state


def test_state_round_trips_through_json() -> None:
    policy = PolicySettings.model_validate({"failures": "2 of 3"})
    d = step(ProbeAlertState(), policy, Observation(P, "r0", "fail", 0), silenced=False)
    again = ProbeAlertState.model_validate_json(d.state.model_dump_json())
    assert again == d.state and again.window == [("r0", True)]


def _settings(**kw: object) -> AlertsSettings:
    return AlertsSettings.model_validate({
        "channels": {"oncall": {"type": "slack", "channel": "C1"}, "hook": {"type": "webhook", "url": "http://x"}},
        **kw})


def test_unknown_channel_reference_message() -> None:
    s = _settings(policies={"default": {"channels": ["oncall", "pager", "hook"]}})
    assert validate_references(s) == [
        'alerts.policies.default.channels[1]: unknown channel "pager" (known: hook, oncall)']


def test_missing_credentials_are_config_errors() -> None:
    s = AlertsSettings.model_validate({"channels": {
        "oncall": {"type": "slack", "channel": "C1"}, "issues": {"type": "sentry"},
        "bad": {"type": "sentry", "dsn": "http://127.0.0.1/1"}}})
    assert validate_references(s, Integrations()) == [
        "alerts.channels.oncall.token: no Slack token (set token here or integrations.slack.bot_token)",
        "alerts.channels.issues.dsn: no Sentry DSN (set dsn here or integrations.sentry.dsn)",
        "alerts.channels.bad.dsn: invalid Sentry DSN: Missing public key",
    ]
    ok = Integrations.model_validate({"slack": {"bot_token": "xoxb-1"}, "sentry": {"dsn": "http://k@127.0.0.1/1"}})
    assert validate_references(s, ok) == ["alerts.channels.bad.dsn: invalid Sentry DSN: Missing public key"]


@pytest.mark.parametrize(("doc", "needle"), [
    ({"channels": {"x": {"type": "carrier-pigeon"}}}, "does not match any of the expected tags: 'slack', 'webhook', 'sentry'"),
    ({"channels": {"x": {"type": "slack", "channel": "C1", "colour": "red"}}}, "Extra inputs are not permitted"),
    ({"policies": {"p": {"failures": "3 out of 5"}}}, "invalid failures window '3 out of 5'"),
    ({"policies": {"p": {"failures": "6 of 5"}}}, "can never fire"),
    ({"policies": {"p": {"notify_on": ["paged"]}}}, "'failing', 'recovered' or 'degraded'"),
    ({"silences": [{"probes": ["*"]}]}, "either start/end (one-off) or cron/duration"),
    ({"silences": [{"tags": ["x"], "cron": "0 9 * * *"}]}, "needs both cron and a positive duration"),
    ({"silences": [{"tags": ["x"], "cron": "nope", "duration": "1h"}]}, "invalid cron expression 'nope'"),
    ({"silences": [{"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}]}, "needs probes or tags"),
    ({"silences": [{"probes": ["a"], "cron": "0 9 * * *", "duration": "1h", "timezone": "Mars/Olympus"}]},
     "unknown timezone 'Mars/Olympus'"),
    ({"channels": {"w": {"type": "webhook", "url": "http://x", "body_template": "{{ n.probe_id "}}},
     "body_template line 1"),
])
def test_invalid_settings(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as e:
        AlertsSettings.model_validate(doc)
    assert needle in str(e.value)


def test_channel_schema_is_derived_from_registry() -> None:
    schema = AlertsSettings.model_json_schema()
    mapping = schema["properties"]["channels"]["additionalProperties"]["discriminator"]["mapping"]
    assert set(mapping) == {"slack", "webhook", "sentry"}
