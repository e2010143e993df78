"""Side-effect expectations: the config models of what the system must do besides emitting spans.

One model per kind (Slack, GitHub, Kafka, HTTP poll, Sentry) and ``SideEffect``, which names exactly one.
The judging functions live in ``assertions/side_effects.py`` (which re-exports these names).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tracecanary.assertions.crossfield import cross_field_rule
from tracecanary.assertions.units import Duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _EffectBase(_Strict):
    within: Duration = Field(60.0, description="How long after the trigger the effect may take to appear.")
    absent: bool = Field(False, description="Expect the effect NOT to happen within the window.")


# --- slack -------------------------------------------------------------------------------------
class SlackEffect(_EffectBase):
    """A Slack message appears (e.g. the bot's reply to a mention)."""

    channel: str = Field(description="Channel id (C…) the message must appear in.")
    in_thread: bool = Field(False, description="The message must be a reply in the probe message's thread.")
    from_: str | None = Field(None, alias="from", description="Bot user id (U…/B…), or `any bot`.")
    text: Any = Field(None, description="Matcher for the message text.")
    blocks_text: Any = Field(None, description="Matcher for the text of the message blocks.")

# --- github ------------------------------------------------------------------------------------
REVIEW_STATES = ("APPROVED", "CHANGES_REQUESTED", "COMMENTED", "DISMISSED", "PENDING")


class GithubReview(_Strict):
    state: str | None = Field(None, description="APPROVED, CHANGES_REQUESTED, COMMENTED or DISMISSED, in either "
                                                 "case: webhooks send it lowercase, the REST API uppercase.")
    body: Any = Field(None, description="Matcher for the review body.")

    _known_state = cross_field_rule(
        lambda fields: f"review.state {state!r} is not one of {', '.join(REVIEW_STATES)}"
        if isinstance(state := fields.get("state"), str) and state.upper() not in REVIEW_STATES else None)

class GithubCheckRun(_Strict):
    name: Any = Field(None, description="Matcher for the check run name.")
    conclusion: str | None = Field(None, description="success, failure, neutral, …")


class GithubEffect(_EffectBase):
    """A comment, review or check run appears on a pull request or issue."""

    repo: str = Field(description="owner/name")
    pull: int | str | None = Field(None, description="Pull request number (templated).")
    issue: int | str | None = Field(None, description="Issue number (templated).")
    comment: Any = Field(None, description="Matcher for an issue/PR comment body.")
    review: GithubReview | None = None
    check_run: GithubCheckRun | None = None

    _target = cross_field_rule(
        lambda fields: "a github side effect names exactly one of pull, issue"
        if (fields.get("pull") is None) == (fields.get("issue") is None) else None)
    _repo = cross_field_rule(
        lambda fields: f"repo {repo!r}: expected owner/name"
        if isinstance(repo := fields.get("repo"), str) and "/" not in repo else None)
    _pull_only = cross_field_rule(
        lambda fields: "review and check_run need a pull, not an issue"
        if fields.get("issue") is not None and fields.get("pull") is None
        and (fields.get("review") is not None or fields.get("check_run") is not None) else None)

# --- kafka -------------------------------------------------------------------------------------
class KafkaEffect(_EffectBase):
    """A message appears on a Kafka topic."""

    topic: str
    key: Any = Field(None, description="Matcher for the message key (decoded as UTF-8).")
    value: Any = Field(None, description="Matcher for the message value (decoded as UTF-8).")
    header: dict[str, Any] = Field(default_factory=dict, description="Header name → matcher.")

# --- http --------------------------------------------------------------------------------------
class HttpPollRequest(_Strict):
    method: str = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)


class HttpPollUntil(_Strict):
    status: int | None = None
    json_: dict[str, Any] = Field(default_factory=dict, alias="json", description="JSONPath → matcher.")


class HttpEffect(_EffectBase):
    """Poll an endpoint until it reports the expected state."""

    request: HttpPollRequest
    until: HttpPollUntil
    every: Duration = Field(1.0, description="Poll interval.")

# --- sentry ------------------------------------------------------------------------------------
class SentryEvent(_Strict):
    level: str | None = None
    message: Any = Field(None, description="Matcher for the event's title, its message (Sentry's search text) "
                                           "or one of its exception values; any may match.")


class SentryEffect(_EffectBase):
    """The system reported an event to Sentry for this trace (or, with absent: true, did not)."""

    event: SentryEvent = Field(default_factory=SentryEvent)

EFFECT_KINDS = ("slack", "github", "kafka", "http", "sentry")
EffectKind = Literal["slack", "github", "kafka", "http", "sentry"]


class SideEffect(_Strict):
    """One side effect: exactly one of ``slack``, ``github``, ``kafka``, ``http``, ``sentry``."""

    slack: SlackEffect | None = None
    github: GithubEffect | None = None
    kafka: KafkaEffect | None = None
    http: HttpEffect | None = None
    sentry: SentryEffect | None = None

    _exactly_one = cross_field_rule(
        lambda fields: None if len(set_ := [k for k in EFFECT_KINDS if fields.get(k) is not None]) == 1
        else f"a side effect names exactly one of {', '.join(EFFECT_KINDS)}; got {set_ or 'none'}")

    @property
    def kind(self) -> EffectKind:
        for k in EFFECT_KINDS:
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        raise AssertionError("unreachable")

    @property
    def spec(self) -> _EffectBase:
        value = getattr(self, self.kind)
        assert isinstance(value, _EffectBase)
        return value
