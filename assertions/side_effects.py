"""Side-effect judgement: what the system must do besides emitting spans, judged from what watchers saw.

Watchers in ``daemon/watchers/`` observe (I/O) and return what they saw as plain data; the pure
functions here judge it and explain a miss by quoting what did arrive. One section per kind. The
config models live in ``assertions/side_effect_models.py`` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from tracecanary.assertions.match import check
from tracecanary.assertions.response import select_json
from tracecanary.assertions.side_effect_models import (
    EFFECT_KINDS,
    REVIEW_STATES,
    EffectKind,
    GithubCheckRun,
    GithubEffect,
    GithubReview,
    HttpEffect,
    HttpPollRequest,
    HttpPollUntil,
    KafkaEffect,
    SentryEffect,
    SentryEvent,
    SideEffect,
    SlackEffect,
)
from tracecanary.assertions.verdict import Finding

__all__ = [
    "EFFECT_KINDS", "REVIEW_STATES", "EffectKind", "GithubCheckRun", "GithubEffect", "GithubReview", "HttpEffect",
    "HttpPollRequest", "HttpPollUntil", "KafkaEffect", "SentryEffect", "SentryEvent", "SideEffect", "SlackEffect",
    "github_mismatch", "http_until_mismatch", "judge_github", "judge_http", "judge_kafka", "judge_sentry",
    "judge_slack", "kafka_mismatch", "review_state", "sentry_event_matches", "slack_blocks_text", "slack_mismatch",
]


# --- slack -------------------------------------------------------------------------------------
def slack_blocks_text(blocks: Any) -> str:
    """The visible text of Block Kit ``blocks``: every ``text`` string, depth first, one per line."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(blocks)
    return "\n".join(out)


def slack_mismatch(effect: SlackEffect, message: Mapping[str, Any]) -> str | None:
    """``None`` when ``message`` satisfies ``effect``, else the first constraint it broke."""
    sender = message.get("bot_id") or message.get("user") or "?"
    if effect.from_ is not None:
        is_bot = bool(message.get("bot_id")) or message.get("subtype") == "bot_message"
        if effect.from_ == "any bot":
            if not is_bot:
                return f"from: expected any bot, got user {sender}"
        elif effect.from_ not in (message.get("user"), message.get("bot_id")):
            return f"from: expected {effect.from_}, got {sender}"
    if effect.text is not None and (why := check(effect.text, message.get("text", ""))) is not None:
        return f"text: {why}"
    if effect.blocks_text is not None:
        why = check(effect.blocks_text, slack_blocks_text(message.get("blocks", [])))
        if why is not None:
            return f"blocks_text: {why}"
    return None


def _slack_quote(message: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "ts": message.get("ts"),
        "from": message.get("bot_id") or message.get("user"),
        "text": str(message.get("text", ""))[:200],
    }


def judge_slack(effect: SlackEffect, messages: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Judge the messages that arrived in the channel/thread during the window.

    Passes (no findings) when one message satisfies every constraint — or, with ``absent: true``,
    when none does. A miss quotes what did arrive and why the closest message did not match.
    """
    where = f"Slack {effect.channel}{' thread' if effect.in_thread else ''}"
    matched = [m for m in messages if slack_mismatch(effect, m) is None]
    quotes = [_slack_quote(m) for m in messages[-5:]]
    expected = {k: v for k, v in {"from": effect.from_, "text": effect.text,
                                  "blocks_text": effect.blocks_text}.items() if v is not None}
    if effect.absent:
        if not matched:
            return []
        return [Finding(
            type="side_effect", path="side_effects.slack",
            message=f"{where}: expected no matching message within {effect.within:g}s, got {len(matched)}: "
                    f"{_slack_quote(matched[0])['text']!r}",
            expected={"absent": True, **expected}, observed=[_slack_quote(m) for m in matched[:5]],
        )]
    if matched:
        return []
    if messages:
        recent = messages[-5:]
        reasons = [f"{q['from']} {q['text']!r} ({slack_mismatch(effect, m)})" for q, m in zip(quotes, recent, strict=True)]
        seen = f"{len(messages)} arrived, none matched: " + "; ".join(reasons)
    else:
        seen = "nothing arrived"
    return [Finding(
        type="side_effect", path="side_effects.slack",
        message=f"{where}: no matching message within {effect.within:g}s; {seen}",
        expected=expected or "any message", observed=quotes,
    )]


# --- github ------------------------------------------------------------------------------------
def review_state(item: Mapping[str, Any]) -> str:
    """A review's ``state`` in one casing. GitHub sends it lowercase in ``pull_request_review`` webhooks
    (``approved``; docs.github.com/webhooks/webhook-events-and-payloads#pull_request_review and the
    ``@octokit/webhooks-schemas`` enum) and uppercase from the REST API (``APPROVED``;
    docs.github.com/rest/pulls/reviews)."""
    return str(item.get("state") or "").upper()


def _github_wants(effect: GithubEffect) -> list[str]:
    wants = [k for k in ("comment", "review", "check_run") if getattr(effect, k) is not None]
    return wants or ["comment"]


def _github_candidates(effect: GithubEffect, kind: str, observed: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if kind == "comment":
        return [*observed.get("comments", []), *observed.get("review_comments", [])]
    return list(observed.get("reviews" if kind == "review" else "check_runs", []))


def github_mismatch(effect: GithubEffect, kind: str, item: Mapping[str, Any]) -> str | None:
    """``None`` when ``item`` (a comment, review or check run as the REST API returns it) matches."""
    if kind == "comment":
        if effect.comment is not None and (why := check(effect.comment, item.get("body") or "")) is not None:
            return f"comment: {why}"
    elif kind == "review" and effect.review is not None:
        if effect.review.state is not None and review_state(item) != effect.review.state.upper():
            return f"review.state: expected {effect.review.state.upper()!r}, got {item.get('state')!r}"
        if effect.review.body is not None and (why := check(effect.review.body, item.get("body") or "")) is not None:
            return f"review.body: {why}"
    elif kind == "check_run" and effect.check_run is not None:
        if effect.check_run.name is not None and (why := check(effect.check_run.name, item.get("name"))) is not None:
            return f"check_run.name: {why}"
        if effect.check_run.conclusion is not None and item.get("conclusion") != effect.check_run.conclusion:
            return f"check_run.conclusion: expected {effect.check_run.conclusion!r}, got {item.get('conclusion')!r}"
    return None


def _github_quote(kind: str, item: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "check_run":
        return {"name": item.get("name"), "status": item.get("status"), "conclusion": item.get("conclusion")}
    quote = {"user": (item.get("user") or {}).get("login"), "body": str(item.get("body") or "")[:200]}
    if kind == "review":
        quote["state"] = item.get("state")
    return quote


def judge_github(effect: GithubEffect, observed: Mapping[str, Any]) -> list[Finding]:
    """Judge what appeared on the PR/issue: ``observed`` holds ``comments``, ``review_comments``,
    ``reviews`` and ``check_runs`` (REST shapes). Every stated kind must be matched (or, with
    ``absent: true``, none may be); a miss quotes what did appear."""
    target = f"{effect.repo}#{effect.pull if effect.pull is not None else effect.issue}"
    findings: list[Finding] = []
    for kind in _github_wants(effect):
        items = _github_candidates(effect, kind, observed)
        matched = [i for i in items if github_mismatch(effect, kind, i) is None]
        expected = getattr(effect, kind)
        expected = expected.model_dump(exclude_none=True) if isinstance(expected, BaseModel) else expected
        if effect.absent and matched:
            findings.append(Finding(
                type="side_effect", path=f"side_effects.github.{kind}",
                message=f"GitHub {target}: expected no matching {kind} within {effect.within:g}s, "
                        f"got {len(matched)}: {_github_quote(kind, matched[0])}",
                expected={"absent": True, kind: expected}, observed=[_github_quote(kind, i) for i in matched[:5]],
            ))
        elif not effect.absent and not matched:
            quotes = [_github_quote(kind, i) for i in items[-5:]]
            if items:
                pairs = zip(quotes, items[-5:], strict=True)
                why = "; ".join(f"{q} ({github_mismatch(effect, kind, i)})" for q, i in pairs)
                seen = f"{len(items)} appeared, none matched: {why}"
            else:
                seen = f"no {kind} appeared"
            findings.append(Finding(
                type="side_effect", path=f"side_effects.github.{kind}",
                message=f"GitHub {target}: no matching {kind} within {effect.within:g}s; {seen}",
                expected=expected if expected is not None else f"any {kind}", observed=quotes,
            ))
    return findings


# --- kafka -------------------------------------------------------------------------------------
def kafka_mismatch(effect: KafkaEffect, message: Mapping[str, Any]) -> str | None:
    """Why ``message`` (``{key, value, headers, …}`` as watchers report it) misses ``effect``; None = match."""
    for name, matcher in (("key", effect.key), ("value", effect.value)):
        if matcher is not None:
            why = check(matcher, message.get(name), present=message.get(name) is not None)
            if why is not None:
                return f"{name}: {why}"
    headers = {str(k).lower(): v for k, v in (message.get("headers") or {}).items()}
    for name, matcher in effect.header.items():
        why = check(matcher, headers.get(name.lower()), present=name.lower() in headers)
        if why is not None:
            return f"header {name}: {why}"
    return None


def _kafka_summary(message: Mapping[str, Any]) -> dict[str, Any]:
    value = message.get("value")
    return {
        "partition": message.get("partition"), "offset": message.get("offset"), "key": message.get("key"),
        "value": value[:200] if isinstance(value, str) else value, "headers": message.get("headers"),
    }


def judge_kafka(effect: KafkaEffect, messages: Sequence[Mapping[str, Any]], *, path: str = "side_effects.kafka") -> list[Finding]:
    """Judge the messages a watcher saw on ``effect.topic`` during the window."""
    matched = [m for m in messages if kafka_mismatch(effect, m) is None]
    wanted = {"topic": effect.topic, "key": effect.key, "value": effect.value, "header": effect.header}
    if effect.absent:
        if not matched:
            return []
        return [Finding(
            type="side_effect", path=path, details={"kind": "kafka"}, expected={**wanted, "absent": True},
            observed=_kafka_summary(matched[0]),
            message=f"kafka {effect.topic}: a forbidden message appeared (offset {matched[0].get('offset')})",
        )]
    if matched:
        return []
    if not messages:
        message = f"kafka {effect.topic}: no message within {effect.within:g}s"
    else:
        message = (f"kafka {effect.topic}: {len(messages)} message(s) within {effect.within:g}s, none matched; "
                   f"last: {kafka_mismatch(effect, messages[-1])}")
    return [Finding(
        type="side_effect", path=path, details={"kind": "kafka", "seen": len(messages)}, expected=wanted,
        observed=[_kafka_summary(m) for m in messages[-3:]], message=message,
    )]


# --- http --------------------------------------------------------------------------------------
def http_until_mismatch(until: HttpPollUntil, observation: Mapping[str, Any]) -> str | None:
    """Why one poll (``{status, json, error}``) does not satisfy ``until``; None when it does."""
    if observation.get("error"):
        return f"request failed: {observation['error']}"
    status = observation.get("status")
    if until.status is not None and status != until.status:
        return f"status {status}, expected {until.status}"
    if until.status is None and not (isinstance(status, int) and 200 <= status < 300):
        return f"status {status}, expected any 2xx"
    doc = observation.get("json")
    for json_path, matcher in until.json_.items():
        values = select_json(json_path, doc) if doc is not None else []
        why = check(matcher, values[0] if values else None, present=bool(values))
        if why is not None:
            return f"{json_path}: {why}"
    return None


def judge_http(effect: HttpEffect, observations: Sequence[Mapping[str, Any]], *, path: str = "side_effects.http") -> list[Finding]:
    """Judge the polls a watcher made: the endpoint must (or, absent, must not) reach ``until``."""
    held = [o for o in observations if http_until_mismatch(effect.until, o) is None]
    expected = effect.until.model_dump(by_alias=True, exclude_defaults=True)
    url = effect.request.url
    if effect.absent:
        if not held:
            return []
        return [Finding(
            type="side_effect", path=path, details={"kind": "http"}, expected={**expected, "absent": True},
            observed={"status": held[0].get("status"), "json": held[0].get("json")},
            message=f"http {url}: reached the forbidden state",
        )]
    if held:
        return []
    last = observations[-1] if observations else None
    why = http_until_mismatch(effect.until, last) if last is not None else "never polled"
    return [Finding(
        type="side_effect", path=path, details={"kind": "http", "polls": len(observations)}, expected=expected,
        observed=None if last is None else {"status": last.get("status"), "json": last.get("json"),
                                            "error": last.get("error")},
        message=f"http {url}: not in the expected state within {effect.within:g}s after "
                f"{len(observations)} poll(s); last: {why}",
    )]


# --- sentry ------------------------------------------------------------------------------------
def _sentry_describe(spec: SentryEvent) -> str:
    from tracecanary.assertions.match import coerce_matcher

    parts = []
    if spec.level is not None:
        parts.append(f"level {spec.level}")
    if spec.message is not None:
        parts.append(f"message {coerce_matcher(spec.message).describe()}")
    return "an event" + (f" with {', '.join(parts)}" if parts else "")


def _sentry_summary(event: Mapping[str, Any]) -> str:
    # Discover's ``message`` is Sentry's search text (value, type, file, function, culprit run together);
    # the title (``Type: value``) is what a person reads.
    text = event.get("title") or event.get("message") or ""
    return f"[{event.get('level') or '?'}] {str(text)[:200]!r}"


def sentry_event_matches(spec: SentryEvent, event: Mapping[str, Any]) -> bool:
    """``event`` (a Discover row: level, message, title, error.value) satisfies the expected level and message."""
    if spec.level is not None and str(event.get("level") or "").lower() != spec.level.lower():
        return False
    if spec.message is None:
        return True
    values = event.get("error.value")
    texts = [t for t in (event.get("message"), event.get("title"), *(values if isinstance(values, list) else [])) if t]
    return any(check(spec.message, t) is None for t in texts) or (not texts and check(spec.message, "") is None)


def judge_sentry(effect: SentryEffect, events: Sequence[Mapping[str, Any]], *, path: str = "sentry") -> list[Finding]:
    """Judge the Sentry events seen for the run's trace; quote what arrived when nothing matched.

    Without ``absent`` a missing match is a failure (the watcher calls this again until the window
    closes); with ``absent: true`` any matching event is a failure.
    """
    wanted = _sentry_describe(effect.event)
    matching = [e for e in events if sentry_event_matches(effect.event, e)]
    seen = [_sentry_summary(e) for e in events[:5]]
    if effect.absent:
        if not matching:
            return []
        return [Finding(
            type="side_effect", path=path,
            message=f"sentry: expected no {wanted.removeprefix('an ')} for this trace, got {_sentry_summary(matching[0])}",
            expected={"absent": True, "event": effect.event.model_dump(exclude_none=True)},
            observed=[_sentry_summary(e) for e in matching[:5]],
            details={"event_ids": [e.get("id") or e.get("event_id") for e in matching[:20]]},
        )]
    if matching:
        return []
    saw = f"saw {len(events)}: {'; '.join(seen)}" if events else "saw no events"
    return [Finding(
        type="side_effect", path=path,
        message=f"sentry: expected {wanted} for this trace within {effect.within:g}s, {saw}",
        expected=effect.event.model_dump(exclude_none=True),
        observed=seen,
    )]
