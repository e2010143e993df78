"""The Jaeger and Tempo emulators at the HTTP level, read with a plain client (no tracecanary decoder):
OTLP ingestion, each endpoint's envelope and encodings, not-found bodies, tenants, faults."""

from __future__ import annotations

import base64
import json
import secrets

import aiohttp
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tracecanary.demo.emulators.jaeger import JaegerEmulator
from tracecanary.demo.emulators.tempo import TempoEmulator

pytestmark = pytest.mark.anyio


def request(trace_id: bytes, services: tuple[str, ...] = ("shop", "payments")) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    parent = b""
    for i, service in enumerate(services):
        rs = req.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", service
        ss = rs.scope_spans.add()
        ss.scope.name = f"{service}.lib"
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.parent_span_id = trace_id, secrets.token_bytes(8), parent
        sp.name, sp.kind = f"op-{i}", 2 if i == 0 else 3
        sp.start_time_unix_nano, sp.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_500_000_000
        sp.status.code = 2 if i else 0
        parent = sp.span_id
    return req


async def post_otlp(session: aiohttp.ClientSession, url: str, req: ExportTraceServiceRequest,
                    tenant: str | None = None) -> int:
    headers = {"Content-Type": "application/x-protobuf", **({"X-Scope-OrgID": tenant} if tenant else {})}
    async with session.post(url + "/v1/traces", data=req.SerializeToString(), headers=headers) as resp:
        return resp.status


async def test_jaeger_v1_and_v3_shapes() -> None:
    tid = secrets.token_bytes(16)
    async with JaegerEmulator() as jaeger, aiohttp.ClientSession() as session:
        assert await post_otlp(session, jaeger.base_url, request(tid)) == 200
        async with session.get(f"{jaeger.base_url}/api/traces/{tid.hex()}") as resp:
            v1 = await resp.json()
        async with session.get(f"{jaeger.base_url}/api/v3/traces/{tid.hex()}") as resp:
            v3 = await resp.json()
        async with session.get(f"{jaeger.base_url}/api/traces/{secrets.token_hex(16)}") as resp:
            assert resp.status == 404 and (await resp.json())["errors"] == [{"code": 404, "msg": "trace not found"}]
    [trace] = v1["data"]
    assert set(v1) == {"data", "total", "limit", "offset", "errors"}
    assert sorted(p["serviceName"] for p in trace["processes"].values()) == ["payments", "shop"]
    root, child = trace["spans"]
    assert root["references"] == [] and child["references"][0]["refType"] == "CHILD_OF"
    assert {"key": "span.kind", "type": "string", "value": "client"} in child["tags"]
    assert {"key": "error", "type": "bool", "value": True} in child["tags"]
    assert child["duration"] == 500_000 and child["startTime"] == 1_700_000_000_000_000
    spans = [sp for rs in v3["result"]["resourceSpans"] for ss in rs["scopeSpans"] for sp in ss["spans"]]
    assert spans[0]["traceId"] == tid.hex() and spans[0]["kind"] == 2 and spans[1]["status"] == {"code": 2}


async def test_jaeger_grpc_gateway_streams_one_chunk_per_resource() -> None:
    tid = secrets.token_bytes(16)
    async with JaegerEmulator(api_v3="grpc-gateway") as jaeger, aiohttp.ClientSession() as session:
        jaeger.ingest(request(tid))
        async with session.get(f"{jaeger.base_url}/api/v3/traces/{tid.hex()}") as resp:
            lines = (await resp.read()).decode().strip().splitlines()
        async with session.get(f"{jaeger.base_url}/api/v3/traces/{secrets.token_hex(16)}") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["grpcCode"] == 5
    chunks = [json.loads(line) for line in lines]
    assert len(chunks) == 2
    span = chunks[0]["result"]["resourceSpans"][0]["instrumentationLibrarySpans"][0]["spans"][0]
    assert base64.b64decode(span["traceId"]) == tid and span["kind"] == "SPAN_KIND_SERVER"


async def test_tempo_shapes_tenants_and_faults() -> None:
    tid = secrets.token_bytes(16)
    async with TempoEmulator(multitenant=True) as tempo, aiohttp.ClientSession() as session:
        assert await post_otlp(session, tempo.base_url, request(tid), tenant="a") == 200
        headers = {"X-Scope-OrgID": "a"}
        async with session.get(f"{tempo.base_url}/api/traces/{tid.hex()}", headers=headers) as resp:
            v1 = await resp.json()
        tempo.partial = True
        async with session.get(f"{tempo.base_url}/api/v2/traces/{tid.hex()}", headers=headers) as resp:
            v2 = await resp.json()
        async with session.get(f"{tempo.base_url}/api/traces/{tid.hex()}",
                               headers={**headers, "Accept": "application/protobuf"}) as resp:
            assert resp.content_type == "application/protobuf"
            proto = TracesData.FromString(await resp.read())
        async with session.get(f"{tempo.base_url}/api/traces/{tid.hex()}", headers={"X-Scope-OrgID": "b"}) as resp:
            assert resp.status == 404 and await resp.read() == b""
        async with session.get(f"{tempo.base_url}/api/traces/{tid.hex()}") as resp:
            assert resp.status == 401 and await resp.text() == "no org id"
        tempo.throttle(1, retry_after_s=7)
        tempo.fail(1, status=502)
        async with session.get(f"{tempo.base_url}/api/traces/{tid.hex()}", headers=headers) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "7"
        async with session.get(f"{tempo.base_url}/api/traces/{tid.hex()}", headers=headers) as resp:
            assert resp.status == 502
    span = v1["batches"][0]["scopeSpans"][0]["spans"][0]
    assert base64.b64decode(span["traceId"]) == tid and span["kind"] == "SPAN_KIND_SERVER"
    assert span["startTimeUnixNano"] == "1700000000000000000"
    assert v2["status"] == "PARTIAL" and "resourceSpans" in v2["trace"] and "metrics" in v2
    assert len(proto.resource_spans) == 2


async def test_tempo_1x_has_no_v2_and_writes_library_spans() -> None:
    tid = secrets.token_bytes(16)
    async with TempoEmulator(version="1.x", ingest_delay_s=60) as tempo, aiohttp.ClientSession() as session:
        tempo.ingest(request(tid))
        async with session.get(f"{tempo.base_url}/api/traces/{tid.hex()}") as resp:
            assert resp.status == 404  # ingested, not visible for a minute
        tempo.ingest_delay_s = 0
        tempo.ingest(request(tid, ("late",)))
        async with session.get(f"{tempo.base_url}/api/traces/{tid.hex()}") as resp:
            v1 = await resp.json()
        async with session.get(f"{tempo.base_url}/api/v2/traces/{tid.hex()}") as resp:
            assert resp.status == 404
    [batch] = v1["batches"]
    assert batch["instrumentationLibrarySpans"][0]["instrumentationLibrary"] == {"name": "late.lib"}
