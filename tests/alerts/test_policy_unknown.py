"""`unknown` in the pure alert policy: no probe incident opens or closes on it; the telemetry streak."""

from __future__ import annotations

import pytest

from tracecanary.daemon.alerts.policy import (
    AlertsSettings,
    Observation,
    PolicySettings,
    ProbeAlertState,
    TelemetryStreak,
    step,
)

CODES = {"p": "pass", "d": "degraded", "f": "fail", "e": "error", "u": "unknown"}


def drive(policy: PolicySettings, verdicts: str) -> tuple[list[str], ProbeAlertState]:
    state = ProbeAlertState()
    out: list[str] = []
    for i, c in enumerate(verdicts):
        d = step(state, policy, Observation("orders", f"r{i}", CODES[c], i * 60 * 10**9), silenced=False)
        out += [f"{i}:{e.kind}" for e in d.send]
        state = d.state
    return out, state


@pytest.mark.parametrize(("policy", "verdicts", "expected"), [
    ({}, "uuuuu", []),                                   # never opens
    ({}, "fuf", ["2:failing"]),                          # nor breaks a failure streak
    ({}, "ffuuup", ["1:failing", "5:recovered"]),        # nor closes an open incident
    ({"recovery_threshold": 2}, "ffpup", ["1:failing", "4:recovered"]),  # nor breaks a pass streak
    ({"failures": "2 of 3"}, "fuuuf", ["4:failing"]),    # nor takes a place in the window
    ({"notify_on": ["failing", "recovered", "degraded"]}, "dud", ["2:degraded"]),
    ({"remind_every": 60.0}, "ffuuuf", ["1:failing", "5:reminder"]),  # no reminder on unknown runs
])
def test_unknown_neither_opens_nor_closes(policy: dict[str, object], verdicts: str, expected: list[str]) -> None:
    assert drive(PolicySettings.model_validate(policy), verdicts)[0] == expected


def test_unknown_is_remembered_as_the_last_run() -> None:
    _, state = drive(PolicySettings(), "fu")
    assert state.last_verdict == "unknown" and state.last_run_id == "r1" and state.fail_streak == 1


def test_telemetry_streak_raises_after_n_unknowns_across_probes_and_clears_on_flowing_spans() -> None:
    streak = TelemetryStreak(after=AlertsSettings().telemetry_incident_after)
    assert streak.after == 3
    assert streak.observe("a", "unknown", False) is None
    assert streak.observe("b", "pass", None) is None      # names no service: says nothing either way
    assert streak.observe("b", "error", None) is None
    assert streak.observe("b", "unknown", False) is None
    assert streak.observe("c", "fail", False) is None     # failed with its services silent: no evidence
    assert streak.observe("a", "unknown", False) == "raise"
    assert streak.probes == ["a", "b"] and streak.unknown_runs == 3
    assert streak.detail("no spans from ingest …") == (
        "3 consecutive runs got no spans from the services they expect (probes: a, b); latest: no spans from ingest …")
    assert streak.observe("c", "unknown", False) == "raise"  # again: the incident's detail stays current
    assert streak.observe("c", "fail", True) == "clear"      # a judged run whose services sent spans
    assert streak.unknown_runs == 0 and streak.probes == []
    assert streak.observe("a", "unknown", False) is None


def test_telemetry_incident_after_is_validated() -> None:
    assert AlertsSettings.model_validate({"telemetry_incident_after": 1}).telemetry_incident_after == 1
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        AlertsSettings.model_validate({"telemetry_incident_after": 0})
