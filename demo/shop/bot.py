"""The shop's Slack bot: answers @mentions in a thread, over the Events API (signed HTTP callbacks).

The trace continues from ``traceparent`` in the callback's HTTP headers, or else from the message
metadata a probe attached (``event_payload.traceparent``). Spans: ``slack app_mention`` (server) →
``answer-mention`` → ``chat.postMessage`` (client). Fault ``silent-bot``: acknowledge, never answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from typing import Any

from aiohttp import web
from opentelemetry.trace import SpanKind
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tracecanary.demo.shop.common import Faults, Service, admin_routes, extract, main, setup_tracing

log = logging.getLogger("tracecanary.demo.shop.bot")
MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^>]*)?>\s*")
MAX_BODY_BYTES = 256 * 1024
SEEN_EVENTS = 1000
CALL_TIMEOUT_S = 10.0


class Bot:
    def __init__(self, config: dict[str, Any]) -> None:
        self.verifier = SignatureVerifier(str(config.get("signing_secret", "signing-secret")))
        self.slack = AsyncWebClient(token=str(config.get("slack_token", "xoxb-bot")), base_url=str(config["slack_url"]))
        self.faults = Faults()
        self.tracer = setup_tracing("slack-bot", config.get("otlp_endpoint"))
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()

    async def events(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY_BYTES)
        if not self.verifier.is_valid_request(body, dict(request.headers)):
            return web.json_response({"error": "invalid signature"}, status=401)
        payload = json.loads(body)
        if payload.get("type") == "url_verification":
            return web.json_response({"challenge": payload.get("challenge")})
        event_id = str(payload.get("event_id", ""))
        if event_id in self.seen:  # Slack retries (X-Slack-Retry-Num) must not answer twice
            return web.Response(status=200)
        self.seen[event_id] = None
        while len(self.seen) > SEEN_EVENTS:
            self.seen.popitem(last=False)
        event = payload.get("event") or {}
        if event.get("type") == "app_mention" and not self.faults.on("silent-bot"):
            carrier = dict(request.headers) if "traceparent" in request.headers else \
                dict((event.get("metadata") or {}).get("event_payload") or {})
            task = asyncio.create_task(self.answer(event, carrier))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return web.Response(status=200)  # ack within 3 s; the answer follows

    async def answer(self, event: dict[str, Any], carrier: dict[str, Any]) -> None:
        ctx = extract({k: str(v) for k, v in carrier.items()})
        channel = str(event.get("channel", ""))
        try:
            with self.tracer.start_as_current_span("slack app_mention", context=ctx, kind=SpanKind.SERVER,
                                                   attributes={"slack.channel": channel,
                                                               "slack.user": str(event.get("user", ""))}):
                with self.tracer.start_as_current_span("answer-mention"):
                    question = MENTION.sub("", str(event.get("text", ""))).strip()
                    reply = f"Hi <@{event.get('user')}>! pong: {question}"
                with self.tracer.start_as_current_span("chat.postMessage", kind=SpanKind.CLIENT,
                                                       attributes={"slack.channel": channel}):
                    await asyncio.wait_for(self.slack.chat_postMessage(
                        channel=channel, text=reply, thread_ts=event.get("thread_ts") or event.get("ts"),
                    ), CALL_TIMEOUT_S)
        except Exception as e:
            log.warning("answer failed channel=%s error=%r", channel, e)


async def build(config: dict[str, Any]) -> Service:
    bot = Bot(config)
    app = web.Application()
    app.add_routes([web.post("/slack/events", bot.events), *admin_routes(bot.faults)])
    return Service("bot", app)


if __name__ == "__main__":
    main(build)
