"""Alert settings and the per-probe alert state machine (pure: no I/O, no clock of its own).

States: ``ok → failing → ok`` plus ``degraded``. Only FINAL verdicts drive it (a run followed by a retry
is not a verdict yet): ``fail``/``error`` count as failures, ``degraded`` as a soft failure, ``pass`` as
a pass. ``unknown`` (the services sent no telemetry) is no evidence about the probe: it neither opens
nor closes an incident and leaves every streak and window as it was; consecutive ``unknown`` runs
across probes feed :class:`TelemetryStreak` instead, the "telemetry pipeline" system incident. ``step()`` takes the stored state and one final run and returns the next state and the events
to announce; the manager persists the state and claims each event's dedup key before sending, so a
restart (or a second replica) never announces the same incident twice.

Incident ids are deterministic: ``<probe id>:<first failing run id>``; dedup keys are
``<incident id>:<event>`` (reminders add their number), so any replica computes the same key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from tracecanary.assertions.units import Duration
from tracecanary.daemon.alerts.base import ChannelConfigBase, EventKind
from tracecanary.daemon.alerts.registry import CHANNELS
from tracecanary.daemon.alerts.silences import SilenceSettings
from tracecanary.integrations import Integrations
from tracecanary.model import cross_field_rule

__all__ = [
    "AlertsSettings", "ChannelConfig", "Decision", "FailureWindow", "Observation", "PolicySettings",
    "ProbeAlertState", "SilenceSettings", "TelemetryStreak", "reference_problems", "step", "validate_references",
]

if TYPE_CHECKING:
    ChannelConfig = ChannelConfigBase
else:
    ChannelConfig = Annotated[Union[tuple(CHANNELS.values())], Field(discriminator="type")]  # noqa: UP007

NotifyOn = Literal["failing", "recovered", "degraded"]
DEFAULT_NOTIFY_ON: tuple[NotifyOn, ...] = ("failing", "recovered")
_WINDOW_RE = re.compile(r"^\s*(\d+)\s+of\s+(\d+)\s*$")


WindowText = Annotated[str, StringConstraints(pattern=r"^\s*\d+\s+of\s+\d+\s*$")]
"""How a failures window is written in a suite (``3 of 5``): the JSON Schema's view of it."""


class FailureWindow(BaseModel):
    """``failures: 3 of 5``: fire when at least ``count`` of the last ``of`` final runs failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(ge=1, le=100, description="Failures needed inside the window.")
    of: int = Field(ge=1, le=100, description="Window length in final runs.")

    _fits = cross_field_rule(
        lambda fields: f"failures: {count} of {of} can never fire (count > window)"
        if isinstance(count := fields.get("count"), int) and isinstance(of := fields.get("of"), int) and count > of
        else None)


def _parse_window(value: Any) -> Any:
    if isinstance(value, str):
        m = _WINDOW_RE.match(value)
        if not m:
            raise ValueError(f"invalid failures window {value!r}: expected e.g. '3 of 5'")
        return {"count": int(m.group(1)), "of": int(m.group(2))}
    return value


class PolicySettings(BaseModel):
    """When a probe's alerts fire, repeat and resolve, and where they go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[str] = Field(default_factory=list, description="Names under alerts.channels.")
    failure_threshold: int = Field(2, ge=1, le=100, description="Consecutive failed final runs to fire "
                                   "(also consecutive degraded runs to report degraded).")
    recovery_threshold: int = Field(1, ge=1, le=100, description="Consecutive passing final runs to resolve.")
    failures: Annotated[FailureWindow | None, BeforeValidator(_parse_window, json_schema_input_type=WindowText | None)] = Field(
        None, description="Window rule for flapping targets, e.g. '3 of 5'; replaces failure_threshold.")
    remind_every: Duration | None = Field(None, description="Repeat the alert while still failing, e.g. 1h.")
    notify_on: list[NotifyOn] = Field(default_factory=lambda: list(DEFAULT_NOTIFY_ON),
                                      description="Which transitions are sent: failing, recovered, degraded.")


class AlertsSettings(BaseModel):
    """The ``alerts:`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: dict[str, ChannelConfig] = Field(default_factory=dict, description="Named channels.")
    policies: dict[str, PolicySettings] = Field(default_factory=dict, description="Named policies.")
    silences: list[SilenceSettings] = Field(default_factory=list, description="Configured silences.")
    queue_size: int = Field(1000, ge=1, description="Pending deliveries kept per channel; beyond, the oldest "
                            "that is not a recovery is dropped (recorded and counted).")
    retry_delays: list[Duration] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0, 120.0], min_length=1,
        description="Waits between delivery attempts to one channel; the last repeats until delivered or "
                    "expired. A remote's Retry-After is honoured when longer.")
    max_retry_after: Duration = Field(300.0, description="Cap on a remote's Retry-After.")
    delivery_expiry: Duration = Field(86400.0, gt=0, description="An undelivered notification is dropped this "
                                      "long after it was queued (recorded as expired); recoveries never expire.")
    channel_failing_after: Duration = Field(
        60.0, description="A channel whose deliveries keep failing with retryable errors (5xx, 429, timeouts) "
                          "for this long is failing: channel_failing goes out on the healthy channels. A "
                          "permanent error (other 4xx, bad token) makes it failing at once.")
    system_reconcile: Duration = Field(300.0, description="After a restart, a system incident (failing channel, "
                                       "store …) nobody raises again within this long is resolved.")
    telemetry_incident_after: int = Field(3, ge=1, description="Consecutive `unknown` final runs, across "
                                          "probes, after which one \"telemetry pipeline\" incident of its own "
                                          "fires (it clears on the next run whose services sent spans).")


def reference_problems(settings: AlertsSettings,
                       integrations: Integrations | None = None) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-field errors as (path inside ``alerts``, message): a policy naming a channel that does not
    exist; with ``integrations``, also channels lacking credentials here and in ``integrations:`` (the
    config loader reports them with file:line)."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    if integrations is not None:
        for name, channel in settings.channels.items():
            for problem in channel.problems(integrations):
                key, _, text = problem.partition(": ")
                out.append((("channels", name, key), text))
    known = ", ".join(sorted(settings.channels)) or "none defined"
    for name, policy in settings.policies.items():
        for i, ch in enumerate(policy.channels):
            if ch not in settings.channels:
                out.append((("policies", name, "channels", i), f'unknown channel "{ch}" (known: {known})'))
    return out


def validate_references(settings: AlertsSettings, integrations: Integrations | None = None) -> list[str]:
    """:func:`reference_problems` as ``alerts.<path>: message`` lines."""
    lines = []
    for loc, message in reference_problems(settings, integrations):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        lines.append(f"alerts{path}: {message}")
    return lines


NS_STATE = "alerts.state"
"""The store's kv namespace of the per-probe ``ProbeAlertState`` (key: probe id)."""


class ProbeAlertState(BaseModel):
    """Per-probe state, stored as JSON in the store's kv space (namespace ``alerts.state``)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["ok", "failing", "degraded"] = "ok"
    fail_streak: int = 0
    degraded_streak: int = 0
    pass_streak: int = 0
    streak_first_run_id: str | None = None
    streak_first_ns: int | None = None
    window: list[tuple[str, bool]] = Field(default_factory=list)
    """Recent final runs (run id, failed), newest last, as long as the failures window."""
    incident_id: str | None = None
    incident_started_ns: int | None = None
    notified: bool = False
    reminders: int = 0
    last_run_id: str | None = None
    last_verdict: str | None = None
    last_run_started_ns: int | None = None
    """Start of the last run seen: a restart feeds the alert state the final runs recorded after it."""
    notified_channels: list[str] = Field(default_factory=list)
    """Channels the incident's opening went to: its recovery goes to the same ones."""
    acknowledged_by: str | None = None
    """Who acknowledged the open incident (no more reminders; its recovery still goes out)."""
    acknowledged_ns: int | None = None


@dataclass(frozen=True)
class Observation:
    """One final run as the state machine sees it."""

    probe_id: str
    run_id: str
    verdict: str
    time_ns: int


@dataclass(frozen=True)
class AlertEvent:
    kind: EventKind
    incident_id: str
    dedup_key: str


@dataclass
class Decision:
    state: ProbeAlertState
    send: list[AlertEvent] = field(default_factory=list)
    """Events to announce (already filtered by notify_on and silence)."""
    silenced: list[AlertEvent] = field(default_factory=list)
    """Events a silence held back (recorded, not sent)."""


def _event(kind: EventKind, incident_id: str, suffix: str = "") -> AlertEvent:
    return AlertEvent(kind, incident_id, f"{incident_id}:{kind}{suffix}")


def _fires(state: ProbeAlertState, policy: PolicySettings) -> tuple[bool, str | None]:
    """Whether the failure rule holds, and the first failing run id of the incident it opens."""
    if policy.failures is not None:
        failed = [run_id for run_id, f in state.window if f]
        return len(failed) >= policy.failures.count, (failed[0] if failed else None)
    return state.fail_streak >= policy.failure_threshold, state.streak_first_run_id


def _count(state: ProbeAlertState, obs: Observation, policy: PolicySettings) -> str:
    """Update streaks and window; return the run's class: failed | degraded | passed."""
    verdict = obs.verdict
    cls = "failed" if verdict in ("fail", "error") else "degraded" if verdict == "degraded" else "passed"
    if cls == "passed" or (cls == "degraded" and state.status == "failing"):
        state.pass_streak += 1
    else:
        state.pass_streak = 0
    if cls == "failed":
        if state.fail_streak == 0:
            state.streak_first_run_id, state.streak_first_ns = obs.run_id, obs.time_ns
        state.fail_streak += 1
        state.degraded_streak = 0
    else:
        state.fail_streak = 0
        state.degraded_streak = state.degraded_streak + 1 if cls == "degraded" else 0
    size = policy.failures.of if policy.failures else 1
    state.window = [*state.window, (obs.run_id, cls == "failed")][-size:]
    state.last_run_id, state.last_verdict = obs.run_id, verdict
    return cls


def _open(state: ProbeAlertState, status: Literal["failing", "degraded"], incident_id: str, now_ns: int) -> None:
    state.status, state.incident_id, state.incident_started_ns = status, incident_id, now_ns
    state.notified, state.reminders, state.pass_streak = False, 0, 0
    state.acknowledged_by, state.acknowledged_ns = None, None


def step(
    prev: ProbeAlertState, policy: PolicySettings, obs: Observation, *, silenced: bool
) -> Decision:
    """Advance one probe's state by one final run. Idempotent for a run already seen."""
    if prev.last_run_id == obs.run_id:
        return Decision(prev.model_copy(deep=True))
    state = prev.model_copy(deep=True)
    if obs.verdict == "unknown":  # no evidence either way: nothing opens, closes or counts
        state.last_run_id, state.last_verdict = obs.run_id, obs.verdict
        return Decision(state)
    cls = _count(state, obs, policy)
    candidates: list[AlertEvent] = []
    if state.status != "failing" and cls == "failed":
        fires, first_run = _fires(state, policy)
        if fires:
            _open(state, "failing", f"{obs.probe_id}:{first_run or obs.run_id}", obs.time_ns)
            candidates.append(_event("failing", state.incident_id or ""))
    elif state.status == "ok" and cls == "degraded" and state.degraded_streak >= policy.failure_threshold:
        _open(state, "degraded", f"{obs.probe_id}:{state.streak_first_run_id or obs.run_id}", obs.time_ns)
        candidates.append(_event("degraded", state.incident_id or ""))
    elif state.status != "ok" and state.pass_streak >= policy.recovery_threshold:
        if state.notified:
            candidates.append(_event("recovered", state.incident_id or ""))
        state.status, state.incident_id, state.incident_started_ns = "ok", None, None
        state.notified, state.reminders = False, 0
        state.acknowledged_by, state.acknowledged_ns = None, None
        state.window = []  # a new incident needs new evidence: no re-firing on stale window failures
    elif state.status == "failing" and cls == "failed":
        candidates += _still_failing(state, policy, obs)
    return _filter(state, policy, candidates, silenced)


def _still_failing(state: ProbeAlertState, policy: PolicySettings, obs: Observation) -> list[AlertEvent]:
    incident = state.incident_id or ""
    if not state.notified:
        return [_event("failing", incident)]  # a silence ended (or notify_on changed) mid-incident
    if policy.remind_every and state.incident_started_ns is not None and state.acknowledged_by is None:
        n = int((obs.time_ns - state.incident_started_ns) / 1e9 // policy.remind_every)
        if n > state.reminders:
            state.reminders = n
            return [_event("reminder", incident, f":{n}")]
    return []


def _filter(state: ProbeAlertState, policy: PolicySettings, events: list[AlertEvent], silenced: bool) -> Decision:
    decision = Decision(state)
    for ev in events:
        wanted = "failing" if ev.kind == "reminder" else ev.kind
        if wanted not in policy.notify_on:
            continue
        if silenced:
            decision.silenced.append(ev)
            continue
        decision.send.append(ev)
        if ev.kind in ("failing", "degraded"):
            state.notified = True
    return decision


TelemetryAction = Literal["raise", "clear"]


@dataclass
class TelemetryStreak:
    """Consecutive ``unknown`` final runs across probes → one "telemetry pipeline" incident (pure).

    ``observe`` takes each final run's verdict and whether the services its expectation names sent
    spans (``assertions.telemetry.telemetry_flowed``: None when the run says nothing about telemetry —
    no service named, no trace judged). ``unknown`` extends the streak; at ``after`` it says "raise"
    (again on each further unknown run, so the incident's detail stays current; raising is
    idempotent). A run whose services sent spans ends the streak and says "clear" (a no-op when no
    incident is open, which also resolves one reloaded after a restart). Other runs change nothing.
    """

    after: int = 3
    """``alerts.telemetry_incident_after``."""
    unknown_runs: int = 0
    probes: list[str] = field(default_factory=list)
    """Probes with an unknown run in the current streak, first seen first."""

    def observe(self, probe_id: str, verdict: str, flowed: bool | None) -> TelemetryAction | None:
        if verdict == "unknown":
            self.unknown_runs += 1
            if probe_id not in self.probes:
                self.probes.append(probe_id)
            return "raise" if self.unknown_runs >= self.after else None
        if flowed is True:
            self.unknown_runs, self.probes = 0, []
            return "clear"
        return None

    summary = "telemetry pipeline may be down"
    """The incident's headline (stable while it is open; the detail carries the numbers)."""

    def detail(self, latest: str) -> str:
        """The count, the probes and the latest run's finding (``latest``), for the incident."""
        return (f"{self.unknown_runs} consecutive runs got no spans from the services they expect "
                f"(probes: {', '.join(self.probes)}); latest: {latest}")
