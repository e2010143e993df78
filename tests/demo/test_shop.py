"""The demo shop end to end: real broker, real emulators, real OTel exports, real clients."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import grpc
import grpc.aio
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from tests.demo.conftest import Demo
from tracecanary.assertions.spans import Span, SpanKind
from tracecanary.demo.shop import pricing
from tracecanary.demo.world import WEBHOOK_SECRET
from tracecanary.probes.grpc_proto import compile_proto, message_class

pytestmark = pytest.mark.anyio


def signed(body: dict[str, Any], secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"X-Hub-Signature-256": sig, "Content-Type": "application/json"}


def traceparent() -> tuple[str, str]:
    trace_id = uuid.uuid4().hex
    return trace_id, f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"


async def post_signal(demo: Demo, **extra: Any) -> tuple[str, dict[str, Any]]:
    trace_id, tp = traceparent()
    raw, headers = signed({"symbol": "SPY", "scenario": "ORB_BREAKOUT", **extra})
    async with aiohttp.ClientSession() as s, s.post(f"{demo.world.services['ingest']}/webhook", data=raw,
                                                    headers={**headers, "traceparent": tp}) as r:
        assert r.status == 200, await r.text()
        return trace_id, await r.json()


def in_trace(trace_id: str, name: str) -> Any:
    return lambda spans: [s for s in spans if s.trace_id == trace_id and s.name == name]


def consumer_for(signal_id: str) -> Any:
    """The worker's consumer span of the trace whose enrich-order span carries the signal id."""
    def pred(spans: list[Span]) -> list[Span]:
        tids = {s.trace_id for s in spans if s.attributes.get("signal.id") == signal_id and s.name == "enrich-order"}
        return [s for s in spans if s.trace_id in tids and s.name == "orders process"]
    return pred


async def test_webhook_tree_and_linked_consumer(demo: Demo) -> None:
    trace_id, body = await post_signal(demo)
    assert set(body) >= {"signal_id", "enrichment", "variant"}
    (publish,) = await demo.sink.wait_for(in_trace(trace_id, "orders publish"))
    names = {s.name for s in demo.sink.spans if s.trace_id == trace_id}
    assert names >= {"POST /webhook", "validate-payload", "data-enrichment", "fetch-market-data", "fetch-gex-data"}
    assert publish.kind is SpanKind.PRODUCER and publish.service == "ingest"
    (consumer,) = await demo.sink.wait_for(consumer_for(body["signal_id"]))
    assert consumer.trace_id != trace_id and consumer.kind is SpanKind.CONSUMER
    assert [(ln.trace_id, ln.span_id) for ln in consumer.links] == [(trace_id, publish.span_id)]
    await demo.sink.wait_for(in_trace(consumer.trace_id, "chat.postMessage"))
    slack = AsyncWebClient(token="xoxb-bot", base_url=demo.world.slack.base_url)
    history = await slack.conversations_history(channel=demo.world.env["DEMO_CHANNEL_ALERTS"])
    assert any(body["signal_id"] in m["text"] for m in history["messages"])


async def test_bad_signature_and_missing_fields_are_refused(demo: Demo) -> None:
    url = f"{demo.world.services['ingest']}/webhook"
    raw, headers = signed({"symbol": "SPY"}, secret="wrong")
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=raw, headers=headers) as r:
            assert r.status == 401
        raw, headers = signed({"symbol": "SPY"})
        async with s.post(url, data=raw, headers=headers) as r:
            assert r.status == 422 and "scenario" in (await r.json())["error"]


async def test_faults_drop_span_and_break_propagation(demo: Demo) -> None:
    await demo.world.set_fault("drop-span")
    try:
        trace_id, _ = await post_signal(demo)
        await demo.sink.wait_for(in_trace(trace_id, "orders publish"))
        await demo.world.set_fault("break-propagation")
        _, body = await post_signal(demo)
    finally:
        await demo.world.set_fault(None)
    assert not in_trace(trace_id, "fetch-gex-data")(demo.sink.spans)
    assert in_trace(trace_id, "fetch-market-data")(demo.sink.spans)
    (consumer,) = await demo.sink.wait_for(consumer_for(body["signal_id"]))
    assert consumer.links == ()  # no traceparent on the message: nothing links back


async def _mention(client: AsyncWebClient, channel: str, text: str, tp: str) -> str:
    resp = await client.chat_postMessage(channel=channel, text=f"<@U0BOT> {text}", metadata={
        "event_type": "tracecanary_probe", "event_payload": {"traceparent": tp}})
    return str(resp["ts"])


async def _replies(client: AsyncWebClient, channel: str, ts: str) -> list[dict[str, Any]]:
    resp = await client.conversations_replies(channel=channel, ts=ts)
    return [m for m in resp["messages"] if m["ts"] != ts]


async def test_bot_answers_mentions_in_thread_and_silent_fault(demo: Demo) -> None:
    user = AsyncWebClient(token="xoxp-user", base_url=demo.world.slack.base_url)
    channel = demo.world.env["DEMO_CHANNEL_MENTIONS"]
    await demo.world.set_fault("silent-bot")
    try:
        _, tp = traceparent()
        silent_ts = await _mention(user, channel, "anyone there?", tp)
    finally:
        await demo.world.set_fault(None)
    trace_id, tp = traceparent()
    ts = await _mention(user, channel, "hello", tp)
    (answer,) = await demo.sink.wait_for(in_trace(trace_id, "slack app_mention"))
    assert answer.service == "slack-bot" and answer.parent_span_id == tp.split("-")[2]
    with anyio.fail_after(10):
        while not (replies := await _replies(user, channel, ts)):
            await demo.sink.changed.wait()
    assert "pong: hello" in replies[0]["text"]
    # the silenced mention was delivered (and acked) before the answered one, and got no answer
    assert await _replies(user, channel, silent_ts) == []


async def test_scheduler_job_runs_posts_report_and_deletes(demo: Demo) -> None:
    base = demo.world.services["scheduler"]
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/jobs", json={"name": "nightly", "every_s": 0.3}) as r:
            assert r.status == 201
            job = await r.json()
        runs = await demo.sink.wait_for(
            lambda spans: [x for x in spans if x.name == "job.run" and x.attributes.get("job.id") == job["id"]])
        await demo.sink.wait_for(in_trace(runs[0].trace_id, "chat.postMessage"))
        async with s.delete(f"{base}/jobs/{job['id']}") as r:
            assert r.status == 204
        async with s.get(f"{base}/jobs/{job['id']}") as r:
            assert r.status == 404
    bot = AsyncWebClient(token="xoxb-bot", base_url=demo.world.slack.base_url)
    history = await bot.conversations_history(channel=demo.world.env["DEMO_CHANNEL_REPORTS"])
    assert any(job["id"] in m["text"] for m in history["messages"])


async def test_pull_request_webhook_gets_review_comment(demo: Demo) -> None:
    env = demo.world.env
    number = int(env["DEMO_GITHUB_PULL"])
    event = {"action": "opened", "number": number, "repository": {"full_name": env["DEMO_GITHUB_REPO"]},
             "pull_request": {"number": number, "title": "Improve error handling", "head": {"sha": "b" * 40}},
             "sender": {"login": "prober"}}
    raw, headers = signed(event)
    trace_id, tp = traceparent()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{demo.world.services['ingest']}/github/webhook", data=raw, headers={
            **headers, "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": str(uuid.uuid4()), "traceparent": tp,
        }) as r:
            assert r.status == 202
        (publish,) = await demo.sink.wait_for(in_trace(trace_id, "pulls publish"))
        await demo.sink.wait_for(lambda spans: [x for x in spans if x.name == "github.create_comment"
                                                and any(ln.span_id == publish.span_id for ln in
                                                        _root_links(spans, x.trace_id))])
        url = f"{env['DEMO_GITHUB_API']}/repos/{env['DEMO_GITHUB_REPO']}/issues/{number}/comments"
        async with s.get(url, headers={"Authorization": "Bearer ghp-prober"}) as r:
            comments = await r.json()
    assert any("error handling looks good" in c["body"] for c in comments)


def _root_links(spans: list[Span], trace_id: str) -> tuple[Any, ...]:
    return tuple(ln for s in spans if s.trace_id == trace_id and s.name == "pulls process" for ln in s.links)


async def test_ingest_reports_transactions_to_sentry_in_the_probe_trace(demo: Demo) -> None:
    trace_id, tp = traceparent()
    span_id = tp.split("-")[2]
    raw, headers = signed({"symbol": "SPY", "scenario": "SENTRY"})
    env = demo.world.env
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{demo.world.services['ingest']}/webhook", data=raw, headers={
            **headers, "traceparent": tp, "sentry-trace": f"{trace_id}-{span_id}-1",
            "baggage": f"sentry-trace_id={trace_id},sentry-sampled=true",
        }) as r:
            assert r.status == 200
        url = f"{env['DEMO_SENTRY_URL']}/api/0/organizations/{env['DEMO_SENTRY_ORG']}/trace/{trace_id}/"
        with anyio.fail_after(15):
            while True:
                async with s.get(url, headers={"Authorization": f"Bearer {env['DEMO_SENTRY_TOKEN']}"}) as r:
                    spans = await r.json() if r.status == 200 else []
                if spans:
                    break
                await anyio.sleep(0.1)  # poll the Sentry API until the envelope has been ingested
    assert any(sp.get("parent_span_id") == span_id for sp in spans)


async def test_pricing_quotes_over_grpc_in_the_callers_trace(demo: Demo) -> None:
    schema = compile_proto((Path(pricing.__file__).parent / "pricing.proto").read_text())
    method = schema.unary("shop.pricing.Pricing/Quote")
    request, reply = message_class(method.input_type), message_class(method.output_type)
    trace_id, tp = traceparent()
    async with grpc.aio.insecure_channel(demo.world.env["DEMO_PRICING_GRPC"]) as channel:
        quote = channel.unary_unary("/shop.pricing.Pricing/Quote", request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=reply.FromString)
        answer = await quote(request(symbol="SPY", quantity=2), metadata=(("traceparent", tp),), timeout=10)
        assert answer.symbol == "SPY" and answer.total == answer.price * 2
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await quote(request(symbol="NOPE"), timeout=10)
        assert e.value.code() is grpc.StatusCode.NOT_FOUND
    (server,) = await demo.sink.wait_for(in_trace(trace_id, "shop.pricing.Pricing/Quote"))
    assert server.kind is SpanKind.SERVER and server.service == "pricing"
    assert server.parent_span_id == tp.split("-")[2] and server.attributes["rpc.grpc.status_code"] == 0
    children = await demo.sink.wait_for(lambda spans: [s for s in spans if s.parent_span_id == server.span_id])
    assert {s.name for s in children} == {"price-lookup", "risk-check"}
