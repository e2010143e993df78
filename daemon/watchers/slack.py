"""Watch for a Slack message (e.g. the bot's reply): Socket Mode events when running, else polling.

Event-driven: ``SlackSocketListener`` (started by the daemon when ``integrations.slack.app_token`` is
set) acks every Socket Mode envelope and publishes the inner ``event`` into
``Services.slack_events``; the watcher subscribes with replay, so a reply that beat the
subscription is still seen. Polling fallback: ``conversations.replies`` (the probe's thread) and
``conversations.history`` with the bot token, paced per method by a shared ``SlackPacer`` (tier
budget, ``Retry-After`` penalties) and backing off between polls. An HTTP 5xx, a dropped connection or a
timeout is transient: retried after ``WatchContext.backoff``; one that lasts until the window closes is
reported with the last error. Judgement is ``assertions.side_effects.judge_slack``: a miss quotes what
did arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import anyio
from anyio.abc import TaskStatus
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tracecanary.assertions.side_effects import SlackEffect, judge_slack, slack_mismatch
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.watchers.base import Attempts, Event, EventHub, WatchContext
from tracecanary.probes.slack import slack_client

log = logging.getLogger("tracecanary.watchers.slack")

IGNORED_SUBTYPES = frozenset({"message_changed", "message_deleted", "channel_join", "channel_leave"})
MAX_PAGES = 10
PAGE_LIMIT = 200
CLOCK_SKEW_S = 1.0
FETCH_TIMEOUT_S = 30.0
FETCH_GRACE_S = 2.0
TRANSIENT_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
RECONCILE_MAX_S = 3.0
RECONCILE_SHARE = 0.25
"""With Socket Mode, the last share of the window (≤ 3 s) polls once with the bot token, so an event
lost while the socket reconnected does not fail a run whose reply did arrive."""


class SlackPacer:
    """Per-method request pacing shared by every Slack poller of one daemon (rate limits are per app).

    ``rpm`` is the method's tier budget (Tier 3 ≈ 50/min; 1/min for non-Marketplace commercially
    distributed apps); a ``Retry-After`` penalty blocks the method until it expires.
    """

    def __init__(self, rpm: Mapping[str, float] | None = None) -> None:
        self.rpm = {"conversations.replies": 50.0, "conversations.history": 50.0, **(rpm or {})}
        self._next_s: dict[str, float] = {}
        self._lock = anyio.Lock()
        self.penalties = 0

    async def wait(self, method: str) -> None:
        async with self._lock:
            now = anyio.current_time()
            at = max(now, self._next_s.get(method, now))
            self._next_s[method] = at + 60.0 / self.rpm.get(method, 50.0)
        await anyio.sleep(at - now)

    def penalize(self, method: str, retry_after_s: float) -> None:
        self.penalties += 1
        now = anyio.current_time()
        self._next_s[method] = max(self._next_s.get(method, now), now + retry_after_s)


def _key(msg: Mapping[str, Any]) -> tuple[str, str]:
    return str(msg.get("channel", "")), str(msg.get("ts", ""))


class _Scope:
    """Which messages count: channel, thread, after the trigger, not the probe's own post."""

    def __init__(self, channel: str, thread_ts: str | None, exclude_ts: str | None, since_s: float) -> None:
        self.channel, self.thread_ts, self.exclude_ts, self.since_s = channel, thread_ts, exclude_ts, since_s

    def __call__(self, msg: Mapping[str, Any]) -> bool:
        if msg.get("subtype") in IGNORED_SUBTYPES or msg.get("ts") in (None, self.exclude_ts):
            return False
        try:
            if float(msg["ts"]) < self.since_s - CLOCK_SKEW_S:
                return False
        except (TypeError, ValueError):
            return False
        if self.thread_ts is not None:
            return msg.get("thread_ts") == self.thread_ts and msg.get("ts") != self.thread_ts
        return True

    def event(self, ev: Event) -> bool:
        return ev.get("type") == "message" and ev.get("channel") == self.channel and self(ev)


async def watch_slack(effect: SlackEffect, ctx: WatchContext) -> list[Finding]:
    """Wait until a message satisfying ``effect`` arrives (or, with ``absent``, the window closes).

    ``effect`` is already rendered for the run (the runner renders every side effect once)."""
    channel = effect.channel
    out = _slack_output(ctx.outputs)
    thread_ts = out.get("ts") if effect.in_thread else None
    if effect.in_thread and not thread_ts:
        return [Finding(type="side_effect", severity=Verdict.ERROR, path="side_effects.slack",
                        message="in_thread: true needs the probe's message ts (outputs.slack.ts); none was recorded",
                        expected="outputs.slack.ts", observed=out or None)]
    scope = _Scope(channel, thread_ts, out.get("message_ts"), ctx.probe.trigger_ns / 1e9)
    end_s = ctx.window_end_s(effect.within)
    hub = ctx.services.slack_events
    if hub is not None:
        token = ctx.probe.integrations.slack.bot_token
        reserve_s = min(RECONCILE_MAX_S, RECONCILE_SHARE * max(0.0, end_s - anyio.current_time())) if token else 0.0
        seen = await _watch_events(effect, scope, hub, end_s - reserve_s)
        via = "socket_mode"
        reconcile_error = None
        if reserve_s and not _done(effect, seen):
            seen, reconcile_error = await _reconcile(scope, ctx, seen, end_s, out.get("ts"))
            via = "socket_mode+polling"
            if not _done(effect, seen):
                seen = await _watch_events(effect, scope, hub, end_s, seen)
    else:
        outcome = await _poll(effect, scope, ctx, end_s, out.get("ts"))
        if isinstance(outcome, Finding):
            return [outcome]
        seen, via, reconcile_error = outcome, "polling", None
    ctx.probe.log("slack watch done", via=via, channel=channel, seen=len(seen))
    ctx.saw(seen)
    findings = judge_slack(effect, seen)
    if reconcile_error and findings and not effect.absent:
        note = f"; the poll before the window closed failed: {reconcile_error}"
        findings = [f.model_copy(update={"message": f.message + note}) for f in findings]
    return findings


def _slack_output(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """``outputs.slack`` of a slack_mention probe, or of the last slack_mention step of a steps probe."""
    if isinstance(outputs.get("slack"), dict):
        return dict(outputs["slack"])
    nested = [v["slack"] for v in outputs.values() if isinstance(v, dict) and isinstance(v.get("slack"), dict)]
    return dict(nested[-1]) if nested else {}


def _done(effect: SlackEffect, seen: list[dict[str, Any]]) -> bool:
    return any(slack_mismatch(effect, m) is None for m in seen)


async def _watch_events(effect: SlackEffect, scope: _Scope, hub: EventHub, end_s: float,
                        initial: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    seen = {_key(m): m for m in initial or []}
    with hub.subscribe(scope.event) as sub:
        while True:
            for ev in await sub.next_batch(end_s - anyio.current_time()):
                seen.setdefault(_key(ev), ev)
            if _done(effect, list(seen.values())) or anyio.current_time() >= end_s:
                return list(seen.values())


def _code(error: SlackApiError) -> str | None:
    """Slack's ``error`` code of a failed call (None when the body was not a JSON object, e.g. a 503 page)."""
    data = error.response.data
    return str(data["error"]) if isinstance(data, dict) and data.get("error") else None


def _transient(error: BaseException) -> str | None:
    """What went wrong, when retrying may help (HTTP 5xx, Slack's transient errors, a dropped connection,
    a timeout); None for answers that will not change (invalid_auth, channel_not_found, …)."""
    if isinstance(error, SlackApiError):
        status = int(error.response.status_code)
        code = _code(error)
        if status >= 500 or code in TRANSIENT_ERRORS:
            return f"{status} {code or 'server error'}"
        return None
    if isinstance(error, aiohttp.ClientError):
        return f"{type(error).__name__}: {error}".rstrip(": ")
    if isinstance(error, TimeoutError):
        return "no answer within the request timeout (a Retry-After wait counts toward it)"
    return None


async def _reconcile(scope: _Scope, ctx: WatchContext, seen: list[dict[str, Any]], end_s: float,
                     probe_ts: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """One poll before the window closes (transient failures retried until ``end_s``): the merged
    messages, and the last error when no poll succeeded."""
    cfg = ctx.probe.integrations.slack
    pacer = ctx.services.extra.setdefault("slack_pacer", SlackPacer())
    client = slack_client(cfg.bot_token, cfg.base_url, max_retries=0, session=ctx.probe.session)
    merged = {_key(m): m for m in seen}
    attempts = Attempts(ctx.backoff)
    while True:
        try:
            with anyio.fail_after(max(0.1, end_s - anyio.current_time())):
                for msg in await _fetch(client, pacer, scope, probe_ts):
                    merged.setdefault(_key(msg), msg)
            return list(merged.values()), None
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as e:
            why = _transient(e)
            error = why or str(_code(e) if isinstance(e, SlackApiError) else e)
            delay_s = attempts.failed(error)
            log.warning("slack reconcile failed channel=%s error=%s", scope.channel, error)
            if why is None or anyio.current_time() + delay_s >= end_s:
                return list(merged.values()), error
            await anyio.sleep(delay_s)


async def _poll(
    effect: SlackEffect, scope: _Scope, ctx: WatchContext, end_s: float, probe_ts: str | None
) -> list[dict[str, Any]] | Finding:
    cfg = ctx.probe.integrations.slack
    if not cfg.bot_token:
        return Finding(type="side_effect", severity=Verdict.ERROR, path="side_effects.slack",
                       message="Slack polling needs integrations.slack.bot_token (or app_token for Socket Mode)")
    pacer = ctx.services.extra.setdefault("slack_pacer", SlackPacer())
    client = slack_client(cfg.bot_token, cfg.base_url, max_retries=0, session=ctx.probe.session)
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    attempts = Attempts(ctx.backoff)
    interval_s = ctx.poll_interval_s
    while True:
        wait_s = interval_s
        try:
            # a Retry-After penalty may outlast the window: never wait (much) past its end
            budget_s = min(FETCH_TIMEOUT_S, max(end_s - anyio.current_time(), FETCH_GRACE_S))
            with anyio.fail_after(min(budget_s, max(0.001, ctx.probe.remaining_s()))):
                for msg in await _fetch(client, pacer, scope, probe_ts):
                    seen.setdefault(_key(msg), msg)
            attempts.ok()
            interval_s = min(interval_s * 1.5, ctx.poll_interval_s * 8)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as e:
            if isinstance(e, SlackApiError) and _code(e) == "ratelimited":
                attempts.failed("429 ratelimited")  # the pacer holds the next call for Retry-After
            elif (why := _transient(e)) is not None:
                wait_s = attempts.failed(why)
                log.warning("slack poll failed channel=%s error=%s retry_in_s=%.2f", scope.channel, why, wait_s)
            else:
                error = _code(e) if isinstance(e, SlackApiError) else str(e)
                return Finding(type="side_effect", severity=Verdict.ERROR, path="side_effects.slack",
                               message=f"Slack polling of {scope.channel} failed: {error}", observed=error)
        now = anyio.current_time()
        if _done(effect, list(seen.values())) or now >= end_s:
            break
        await anyio.sleep(min(wait_s, end_s - now))
    # the last look failed and what was seen before it does not decide the effect: the answer is unknown
    if attempts.failing and not _done(effect, list(seen.values())):
        return attempts.finding("side_effects.slack", f"Slack polling of {scope.channel}")
    return list(seen.values())


async def _fetch(client: AsyncWebClient, pacer: SlackPacer, scope: _Scope, probe_ts: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    oldest = f"{max(0.0, scope.since_s - CLOCK_SKEW_S):.6f}"
    calls: list[tuple[str, dict[str, Any]]] = []
    if scope.thread_ts is not None:
        calls.append(("conversations.replies", {"ts": scope.thread_ts}))
    else:
        calls.append(("conversations.history", {"oldest": oldest}))
        if probe_ts:
            calls.append(("conversations.replies", {"ts": probe_ts}))
    for method, args in calls:
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            await pacer.wait(method)
            try:
                resp = await client.api_call(method, http_verb="GET", params={
                    "channel": scope.channel, "limit": PAGE_LIMIT, "include_all_metadata": "true",
                    **args, **({"cursor": cursor} if cursor else {})})
            except SlackApiError as e:
                if e.response.status_code == 429:
                    pacer.penalize(method, _retry_after_s(e.response.headers))
                    raise
                if _code(e) == "thread_not_found":
                    break
                raise
            for msg in resp.get("messages") or []:
                if scope({**msg, "channel": scope.channel}):
                    out.append({**msg, "channel": scope.channel})
            cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                break
    return out


def _retry_after_s(headers: Any) -> float:
    value = None
    for k, v in dict(headers or {}).items():
        if k.lower() == "retry-after":
            value = v[0] if isinstance(v, list) and v else v
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except (TypeError, ValueError):
        return 1.0


class SlackSocketListener:
    """Holds a Socket Mode connection, acks every envelope and publishes ``events_api`` events.

    Start it in the daemon's task group: ``await tg.start(listener.run)``; it reports ready once
    connected (``hello`` received) and closes the connection when cancelled.
    """

    def __init__(self, hub: EventHub, *, app_token: str, base_url: str = "https://slack.com/api/",
                 connect_timeout_s: float = 30.0) -> None:
        self.hub = hub
        self.app_token, self.base_url = app_token, base_url
        self.connect_timeout_s = connect_timeout_s
        self.received = 0

    async def _on_request(self, client: SocketModeClient, req: SocketModeRequest) -> None:
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        if req.type != "events_api":
            return
        event = req.payload.get("event")
        if isinstance(event, dict):
            self.received += 1
            self.hub.publish(event)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        client = SocketModeClient(app_token=self.app_token, web_client=AsyncWebClient(base_url=self.base_url))
        client.socket_mode_request_listeners.append(self._on_request)  # type: ignore[arg-type]
        try:
            with anyio.fail_after(self.connect_timeout_s):
                await client.connect()  # type: ignore[no-untyped-call]
            log.info("slack socket mode connected base_url=%s", self.base_url)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await client.close()  # type: ignore[no-untyped-call]
