"""The bot under test: answers Slack mentions and reviews GitHub PRs through the emulators.

A small aiohttp app on loopback, instrumented with its own explicit ``TracerProvider`` (never the
global one) exporting to memory, so tests can check the probe's trace context reached it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
from aiohttp import web
from gidgethub import ValidationFailure
from gidgethub.aiohttp import GitHubAPI
from gidgethub.sansio import validate_event
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tracecanary.probes.slack import slack_client

PROPAGATOR = TraceContextTextMapPropagator()


class BotUnderTest:
    """Replies ``reply_text`` in the mention's thread; comments ``review_text`` and reviews opened PRs."""

    def __init__(
        self,
        *,
        slack_base_url: str = "",
        bot_token: str = "xoxb-bot",
        signing_secret: str = "signing-secret",
        github_base_url: str = "",
        github_token: str = "ghp-bot",
        webhook_secret: str = "webhook-secret",
        reply_text: str | None = "pong from bot",
        review_text: str | None = "Review: please add error handling around the retry loop.",
        review_event: str = "COMMENT",
        check_conclusion: str | None = "success",
    ) -> None:
        self.slack_base_url, self.bot_token, self.signing_secret = slack_base_url, bot_token, signing_secret
        self.github_base_url, self.github_token, self.webhook_secret = github_base_url, github_token, webhook_secret
        self.reply_text, self.review_text = reply_text, review_text
        self.review_event, self.check_conclusion = review_event, check_conclusion
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("bot-under-test")
        self.mentions: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    async def __aenter__(self) -> BotUnderTest:
        app = web.Application()
        app.router.add_post("/slack/events", self._slack)
        app.router.add_post("/github/hooks", self._github)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self.provider.shutdown()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Slack -------------------------------------------------------------------------------
    async def _slack(self, request: web.Request) -> web.Response:
        body = await request.read()
        verifier = SignatureVerifier(self.signing_secret)
        if not verifier.is_valid(body, request.headers.get("X-Slack-Request-Timestamp", ""),
                                 request.headers.get("X-Slack-Signature", "")):
            return web.Response(status=401)
        payload = json.loads(body)
        if payload.get("type") == "url_verification":
            return web.json_response({"challenge": payload["challenge"]})
        event = payload.get("event") or {}
        if event.get("type") == "app_mention":
            carrier = {k.lower(): v for k, v in request.headers.items()}
            if "traceparent" not in carrier:
                carrier = dict((event.get("metadata") or {}).get("event_payload") or {})
            self.mentions.append(event)
            self._spawn(self._answer(event, PROPAGATOR.extract(carrier)))
        return web.Response(status=200)  # ack within 3 s; the reply happens after

    async def _answer(self, event: dict[str, Any], parent: Context) -> None:
        with self.tracer.start_as_current_span("handle app_mention", context=parent, kind=trace.SpanKind.SERVER):
            if self.reply_text is None:
                return
            client: AsyncWebClient = slack_client(self.bot_token, self.slack_base_url)
            with self.tracer.start_as_current_span("chat.postMessage", kind=trace.SpanKind.CLIENT) as span:
                span.set_attribute("slack.channel", event["channel"])
                try:
                    await client.chat_postMessage(channel=event["channel"], text=self.reply_text,
                                                  thread_ts=event.get("thread_ts") or event["ts"])
                except Exception as e:  # the test reads errors; a bot must not die on one reply
                    self.errors.append(repr(e))

    # --- GitHub ------------------------------------------------------------------------------
    async def _github(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            validate_event(body, signature=request.headers.get("X-Hub-Signature-256", ""), secret=self.webhook_secret)
        except ValidationFailure:
            return web.Response(status=401)
        payload = json.loads(body)
        if request.headers.get("X-GitHub-Event") == "pull_request" and payload.get("action") == "opened":
            parent = PROPAGATOR.extract({k.lower(): v for k, v in request.headers.items()})
            self._spawn(self._review(payload, parent))
        return web.Response(status=202)

    async def _review(self, payload: dict[str, Any], parent: Context) -> None:
        assert self._session is not None
        gh = GitHubAPI(self._session, "bot-under-test", oauth_token=self.github_token, base_url=self.github_base_url)
        repo, n = payload["repository"]["full_name"], payload["number"]
        with self.tracer.start_as_current_span("review pull_request", context=parent, kind=trace.SpanKind.SERVER):
            try:
                if self.review_text is not None:
                    await gh.post(f"/repos/{repo}/issues/{n}/comments", data={"body": self.review_text})
                    await gh.post(f"/repos/{repo}/pulls/{n}/reviews",
                                  data={"event": self.review_event, "body": self.review_text})
                if self.check_conclusion is not None:
                    await gh.post(f"/repos/{repo}/check-runs", data={
                        "name": "bot-review", "head_sha": payload["pull_request"]["head"]["sha"],
                        "conclusion": self.check_conclusion})
            except Exception as e:  # recorded for the test
                self.errors.append(repr(e))
