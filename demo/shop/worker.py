"""The shop's worker: consume the orders topic, enrich, write SQLite, post to Slack, comment on GitHub PRs.

Each message starts a new trace whose consumer span (``orders process`` / ``pulls process``) carries a
span LINK to the producer span named in the message's ``traceparent`` header — the queue hop is
"linked", not parented. Without the header (the ``break-propagation`` fault) the span has no link
and the probe's ``linked:`` expectation cannot find it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from gidgethub.aiohttp import GitHubAPI
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind
from slack_sdk.web.async_client import AsyncWebClient

from tracecanary.demo.shop.common import Faults, Service, admin_routes, extract, main, setup_tracing

log = logging.getLogger("tracecanary.demo.shop.worker")
CALL_TIMEOUT_S = 10.0


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.topic = str(config.get("topic", "orders"))
        self.bootstrap = str(config["kafka_bootstrap"])
        self.channel = str(config.get("slack_channel", "C0ALERT"))
        self.db_path = str(config.get("db_path", ":memory:"))
        self.faults = Faults(slow_s=float(config.get("slow_s", 1.5)))
        self.tracer = setup_tracing("worker", config.get("otlp_endpoint"))
        self.slack = AsyncWebClient(token=str(config.get("slack_token", "xoxb-bot")),
                                    base_url=str(config["slack_url"]))
        self.github_url = str(config["github_url"])
        self.github_token = str(config.get("github_token", "ghp-bot"))
        self.db = sqlite3.connect(self.db_path, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS signals (signal_id TEXT PRIMARY KEY, symbol TEXT, "
                        "scenario TEXT, payload TEXT)")
        self.session: aiohttp.ClientSession | None = None
        self.processed = 0

    async def consume(self) -> None:
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, group_id="shop-worker",
                                    auto_offset_reset="earliest", enable_auto_commit=True)
        await asyncio.wait_for(consumer.start(), 20)
        self.session = aiohttp.ClientSession()
        try:
            async for msg in consumer:
                headers = {k: v.decode(errors="replace") for k, v in (msg.headers or [])}
                try:
                    await self.handle(json.loads(msg.value), headers)
                except Exception as e:
                    log.exception("message failed offset=%s error=%r", msg.offset, e)
        finally:
            await consumer.stop()
            await self.session.close()

    def _links(self, headers: dict[str, str]) -> list[Link]:
        parent = trace.get_current_span(extract(headers)).get_span_context()
        return [Link(parent, {"messaging.operation.type": "process"})] if parent.is_valid else []

    async def handle(self, message: dict[str, Any], headers: dict[str, str]) -> None:
        kind = message.get("type")
        name = "orders process" if kind == "signal" else "pulls process"
        attrs = {"messaging.system": "kafka", "messaging.destination.name": self.topic,
                 "messaging.operation.type": "process"}
        # a new trace (empty parent context) linked to the producer span
        with self.tracer.start_as_current_span(name, context=Context(), kind=SpanKind.CONSUMER,
                                               links=self._links(headers), attributes=attrs):
            if kind == "signal":
                await self.signal(message)
            elif kind == "pull_request":
                await self.pull_request(message)
            self.processed += 1

    async def signal(self, m: dict[str, Any]) -> None:
        with self.tracer.start_as_current_span("enrich-order", attributes={"signal.id": m["signal_id"]}):
            summary = f"{m['scenario']} signal {m['signal_id']} for {m['symbol']} at {m['enrichment']['price']:.2f}"
            if m.get("test_id"):
                summary += f" (test {m['test_id']})"
        with self.tracer.start_as_current_span("db.insert", kind=SpanKind.CLIENT,
                                               attributes={"db.system": "sqlite", "db.operation.name": "INSERT"}):
            await asyncio.to_thread(self._insert, m)
        with self.tracer.start_as_current_span("chat.postMessage", kind=SpanKind.CLIENT,
                                               attributes={"slack.channel": self.channel}):
            meta = {"event_type": "shop_signal", "event_payload": {"signal_id": m["signal_id"],
                                                                    "test_id": str(m.get("test_id", ""))}}
            await asyncio.wait_for(self.slack.chat_postMessage(channel=self.channel, text=summary, metadata=meta),
                                   CALL_TIMEOUT_S)

    def _insert(self, m: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO signals VALUES (?, ?, ?, ?)",
                            (m["signal_id"], m["symbol"], m["scenario"], json.dumps(m)))

    async def pull_request(self, m: dict[str, Any]) -> None:
        assert self.session is not None
        gh = GitHubAPI(self.session, "tracecanary-demo-worker", oauth_token=self.github_token,
                       base_url=self.github_url)
        with self.tracer.start_as_current_span("review-diff", attributes={"github.pull": m["number"]}):
            verdict = "error handling looks good" if "error" in m.get("title", "").lower() else "looks fine"
        with self.tracer.start_as_current_span("github.create_comment", kind=SpanKind.CLIENT,
                                               attributes={"github.repo": m["repo"], "github.pull": m["number"]}):
            body = f"Automated review of #{m['number']} ({m.get('sha') or 'head'}): {verdict}."
            await asyncio.wait_for(gh.post(f"/repos/{m['repo']}/issues/{m['number']}/comments",
                                           data={"body": body}), CALL_TIMEOUT_S)


async def build(config: dict[str, Any]) -> Service:
    worker = Worker(config)

    async def stats(request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(lambda: worker.db.execute("SELECT COUNT(*) FROM signals").fetchone())
        return web.json_response({"processed": worker.processed, "signals": rows[0]})

    app = web.Application()
    app.add_routes([web.get("/stats", stats), *admin_routes(worker.faults)])
    return Service("worker", app, background=[worker.consume])


if __name__ == "__main__":
    main(build)
