"""Side-effect expectations (what the system must do besides emitting spans) and their judgement.

Watchers in ``daemon/watchers/`` observe (I/O) and return what they saw as plain data; the pure
functions here judge it and explain a miss by quoting what did arrive. One section per kind.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .units import Duration


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
class GithubReview(_Strict):
    state: str | None = Field(None, description="APPROVED, CHANGES_REQUESTED or COMMENTED.")
    body: Any = Field(None, description="Matcher for the review body.")


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
    message: Any = Field(None, description="Matcher for the event message / exception value.")


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

    @model_validator(mode="after")
    def _exactly_one(self) -> SideEffect:
        set_ = [k for k in EFFECT_KINDS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a side effect names exactly one of {', '.join(EFFECT_KINDS)}; got {set_ or 'none'}")
        return self

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
