"""The shop's webhook ingestion service: verify, validate, enrich, publish to Kafka with trace headers.

``POST /webhook`` — a signed trading signal (``X-Hub-Signature-256``): span tree
``POST /webhook`` → ``validate-payload``, ``data-enrichment`` (→ ``fetch-market-data``,
``fetch-gex-data``), ``orders publish`` (producer; the message carries ``traceparent``).
``POST /github/webhook`` — a GitHub delivery; ``pull_request`` opened/synchronize is published for the
worker, which comments on the PR.

Faults: ``drop-span`` (fetch-gex-data does its work without a span), ``slow-dependency``
(fetch-gex-data takes ``slow_s``), ``break-propagation`` (no trace headers on the Kafka message).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tracecanary.demo.shop.common import (
    Faults,
    Service,
    admin_routes,
    extract,
    inject,
    main,
    setup_sentry,
    setup_tracing,
)

MAX_BODY_BYTES = 256 * 1024
REQUIRED = ("symbol", "scenario")
SEND_TIMEOUT_S = 10.0


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """GitHub-style ``sha256=<hex HMAC-SHA256(secret, raw body)>``, compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, header)


class Ingest:
    def __init__(self, config: dict[str, Any]) -> None:
        self.secret = str(config.get("webhook_secret", "webhook-secret"))
        self.topic = str(config.get("topic", "orders"))
        self.bootstrap = str(config["kafka_bootstrap"])
        self.faults = Faults(slow_s=float(config.get("slow_s", 1.5)))
        self.tracer = setup_tracing("ingest", config.get("otlp_endpoint"))
        setup_sentry(config.get("sentry_dsn"), "ingest")
        self.producer: AIOKafkaProducer | None = None
        self.dependency_s = float(config.get("dependency_s", 0.005))

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await asyncio.wait_for(self.producer.start(), 20)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def publish(self, span_name: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
        assert self.producer is not None
        attrs = {"messaging.system": "kafka", "messaging.destination.name": self.topic,
                 "messaging.operation.type": "send"}
        with self.tracer.start_as_current_span(span_name, kind=SpanKind.PRODUCER, attributes=attrs) as span:
            headers = [] if self.faults.on("break-propagation") else [
                (k, v.encode()) for k, v in inject().items()
            ]
            md = await asyncio.wait_for(
                self.producer.send_and_wait(self.topic, json.dumps(value).encode(), key=key.encode(),
                                            headers=headers), SEND_TIMEOUT_S)
            span.set_attribute("messaging.kafka.offset", md.offset)
            return {"topic": md.topic, "partition": md.partition, "offset": md.offset}

    async def enrich(self, payload: dict[str, Any]) -> dict[str, Any]:
        with self.tracer.start_as_current_span("data-enrichment"):
            with self.tracer.start_as_current_span("fetch-market-data", kind=SpanKind.CLIENT,
                                                   attributes={"peer.service": "market-data"}):
                await asyncio.sleep(self.dependency_s)
                price = 500.0 + len(str(payload["symbol"]))
            gex_s = self.dependency_s + (self.faults.slow_s if self.faults.on("slow-dependency") else 0.0)
            if self.faults.on("drop-span"):
                await asyncio.sleep(gex_s)  # the work happens, the span does not
            else:
                with self.tracer.start_as_current_span("fetch-gex-data", kind=SpanKind.CLIENT,
                                                       attributes={"peer.service": "gex"}):
                    await asyncio.sleep(gex_s)
            return {"price": price, "gex": "positive"}

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY_BYTES + 1)
        with self.tracer.start_as_current_span(
            "POST /webhook", context=extract(request.headers), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": "/webhook"},
        ) as span:
            if len(body) > MAX_BODY_BYTES:
                return self._fail(span, 413, "body too large")
            if not signature_ok(self.secret, body, request.headers.get("X-Hub-Signature-256")):
                return self._fail(span, 401, "bad signature")
            with self.tracer.start_as_current_span("validate-payload") as v:
                try:
                    payload = json.loads(body)
                except ValueError:
                    v.set_status(Status(StatusCode.ERROR, "invalid JSON"))
                    return self._fail(span, 400, "invalid JSON")
                missing = [k for k in REQUIRED if not isinstance(payload, dict) or k not in payload]
                if missing:
                    v.set_status(Status(StatusCode.ERROR, f"missing {missing}"))
                    return self._fail(span, 422, f"missing fields: {', '.join(missing)}")
            enrichment = await self.enrich(payload)
            signal_id = "sig-" + uuid.uuid4().hex[:10]
            span.set_attribute("signal.id", signal_id)
            message = {"type": "signal", "signal_id": signal_id, "enrichment": enrichment, **payload}
            where = await self.publish("orders publish", signal_id, message)
            span.set_attribute("http.response.status_code", 200)
            return web.json_response({"signal_id": signal_id, "enrichment": enrichment,
                                      "variant": "b" if hash(signal_id) % 2 else "a", "published": where})

    async def github(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY_BYTES + 1)
        event = request.headers.get("X-GitHub-Event", "")
        with self.tracer.start_as_current_span(
            "POST /github/webhook", context=extract(request.headers), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "github.event": event,
                        "github.delivery": request.headers.get("X-GitHub-Delivery", "")},
        ) as span:
            if not signature_ok(self.secret, body, request.headers.get("X-Hub-Signature-256")):
                return self._fail(span, 401, "bad signature")
            payload = json.loads(body)
            if event == "ping":
                return web.json_response({"ok": True})
            if event != "pull_request" or payload.get("action") not in ("opened", "synchronize", "reopened"):
                return web.json_response({"ignored": event}, status=202)
            pr = payload["pull_request"]
            message = {"type": "pull_request", "repo": payload["repository"]["full_name"],
                       "number": payload["number"], "title": pr.get("title", ""), "sha": pr.get("head", {}).get("sha")}
            await self.publish("pulls publish", f"{message['repo']}#{message['number']}", message)
            return web.json_response({"accepted": True}, status=202)

    @staticmethod
    def _fail(span: trace.Span, status: int, message: str) -> web.Response:
        span.set_status(Status(StatusCode.ERROR, message))
        span.set_attribute("http.response.status_code", status)
        return web.json_response({"error": message}, status=status)


async def build(config: dict[str, Any]) -> Service:
    ingest = Ingest(config)
    await ingest.start()
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1024)
    app.add_routes([web.post("/webhook", ingest.webhook), web.post("/github/webhook", ingest.github),
                    *admin_routes(ingest.faults)])
    return Service("ingest", app, cleanup=[ingest.stop])


if __name__ == "__main__":
    main(build)
