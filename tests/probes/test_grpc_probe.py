"""The grpc probe against real grpcio servers on 127.0.0.1: the call and its trace context, statuses,
deadlines, an unreachable address, masking, and a whole `tracecanary check` run whose trace is judged."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import grpc
import grpc.aio
import pytest
from opentelemetry.trace import Tracer

from tests.fixtures.grpc_server import GrpcServer, grpc_server, self_signed
from tests.probes.helpers import make_ctx
from tracecanary.assertions.response import judge_response
from tracecanary.daemon.config.load import load_config
from tracecanary.demo.broker import free_port
from tracecanary.errors import ProbeError
from tracecanary.probes.grpc import GrpcProbe

pytestmark = pytest.mark.anyio
PROTO = """syntax = "proto3";
package shop.pricing;
import "google/protobuf/timestamp.proto";
service Pricing {
  rpc Quote (QuoteRequest) returns (QuoteReply);
  rpc Ticks (QuoteRequest) returns (stream QuoteReply);
}
message QuoteRequest { string symbol = 1; int32 quantity = 2; string test_id = 3; }
message QuoteReply { string quote_id = 1; double price = 2; google.protobuf.Timestamp at = 3; }
"""


async def quote(request: dict[str, Any], context: grpc.aio.ServicerContext, tracer: Tracer) -> dict[str, Any]:
    symbol = request.get("symbol", "")
    if symbol == "slow":  # answers only once the caller gave up (its deadline cancels this call)
        await anyio.Event().wait()
    if symbol == "missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no price for {symbol!r}")
    with tracer.start_as_current_span("price-lookup", attributes={"symbol": symbol}):
        pass
    await context.send_initial_metadata((("x-served-by", "pricing-1"),))
    return {"quoteId": f"q-{request.get('testId', '')}", "price": 1.5 * request.get("quantity", 1),
            "at": "2026-01-01T00:00:00Z"}


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    async with grpc_server(PROTO, {"shop.pricing.Pricing/Quote": quote}) as s:
        yield s


def probe(address: str, **request: Any) -> GrpcProbe:
    raw = {"id": "quote", "kind": "grpc", "timeout": "10s",
           "request": {"address": address, "method": "shop.pricing.Pricing/Quote", "proto": PROTO, **request}}
    return GrpcProbe.model_validate(raw)


async def test_call_carries_trace_context_and_records_the_response(server: GrpcServer) -> None:
    spec = probe(server.address, message={"symbol": "SPY", "quantity": 2, "testId": "{{ run_id }}"},
                 metadata={"X-Tenant": "acme"})
    async with aiohttp.ClientSession() as session:
        ctx = make_ctx(session)
        result = await spec.fire(ctx)
    [seen] = server.metadata
    assert seen["traceparent"] == ctx.trace.traceparent()
    assert seen["tracestate"] == f"tracecanary={ctx.run_id}" and seen["x-tenant"] == "acme"
    assert f"sentry-trace_id={ctx.trace.trace_id}" in seen["baggage"]
    assert result.response is not None
    response = result.response.to_dict()
    assert response["status"] == 0 and response["method"] == "shop.pricing.Pricing/Quote"
    assert response["json"] == {"quoteId": f"q-{ctx.run_id}", "price": 3.0, "at": "2026-01-01T00:00:00Z"}
    assert response["headers"]["x-served-by"] == "pricing-1"
    assert judge_response(spec.expect.response, response) == []  # default: status OK
    checked = probe(server.address).model_copy(update={"expect": spec.expect.model_validate(
        {"response": {"status": "OK", "json": {"price": {"gt": 5}}, "json_fields": ["quoteId"],
                      "headers": {"x-served-by": "pricing-1"}}})})
    [finding] = judge_response(checked.expect.response, response)
    assert finding.message == "response JSON price: expected > 5, got 3.0"


async def test_a_non_ok_status_is_judged_with_its_message(server: GrpcServer) -> None:
    spec = probe(server.address, message={"symbol": "missing"})
    async with aiohttp.ClientSession() as session:
        result = await spec.fire(make_ctx(session))
    assert result.response is not None
    [finding] = judge_response(spec.expect.response, result.response.to_dict())
    assert finding.message == "status NOT_FOUND (5), expected OK; body: \"no price for 'missing'\""
    expected = spec.expect.model_validate({"response": {"status": ["NOT_FOUND", 0]}})
    assert judge_response(expected.response, result.response.to_dict()) == []


async def test_the_deadline_is_a_probe_error(server: GrpcServer) -> None:
    spec = probe(server.address, message={"symbol": "slow"}, timeout="300ms")
    async with aiohttp.ClientSession() as session:
        with anyio.fail_after(30), pytest.raises(ProbeError) as e:
            await spec.fire(make_ctx(session))
    assert str(e.value) == (f"grpc {server.address} /shop.pricing.Pricing/Quote: DEADLINE_EXCEEDED: "
                            "no response within 0.3s")


async def test_an_unreachable_address_is_a_probe_error() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with aiohttp.ClientSession() as session:
        with anyio.fail_after(30), pytest.raises(ProbeError) as e:
            await probe(address).fire(make_ctx(session, deadline_s=20))
    assert str(e.value).startswith(f"grpc {address} /shop.pricing.Pricing/Quote: UNAVAILABLE: ")


async def test_a_templated_message_that_no_longer_fits_is_a_probe_error(server: GrpcServer) -> None:
    spec = probe(server.address, message='{"symbol": "SPY", "quantity": {{ run_id | tojson }}}')
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProbeError, match=r"message does not fit shop.pricing.QuoteRequest: Failed to parse "
                                             r"quantity field"):
            await spec.fire(make_ctx(session))


def test_metadata_values_from_variables_are_masked(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("""probes:
  - id: quote
    kind: grpc
    request:
      address: 127.0.0.1:1
      method: shop.pricing.Pricing.Quote
      proto_file: pricing.proto
      metadata: {authorization: "Bearer ${PRICING_TOKEN}", x-literal: plain-credential-value}
""")
    (tmp_path / "pricing.proto").write_text(PROTO)
    config = load_config(suite, {"PRICING_TOKEN": "tok-123456789"})
    secrets = config.secrets()
    assert secrets.mask_text("sent Bearer tok-123456789") == "sent [redacted]"  # the whole value is a credential
    assert secrets.mask_text("plain-credential-value") == "[redacted]"


async def test_check_judges_the_trace_the_server_continued(tmp_path: Path) -> None:
    otlp = free_port()
    async with grpc_server(PROTO, {"shop.pricing.Pricing/Quote": quote}, otlp_endpoint=f"http://127.0.0.1:{otlp}",
                           service_name="pricing") as server:
        (tmp_path / "pricing.proto").write_text(PROTO)
        (tmp_path / "suite.yaml").write_text(f"""probes:
  - id: quote
    kind: grpc
    timeout: 20s
    request:
      address: {server.address}
      method: shop.pricing.Pricing/Quote
      proto_file: pricing.proto
      message: {{symbol: SPY, quantity: 4}}
    expect:
      response: {{status: OK, json: {{price: 6}}, max_latency: 10s}}
      trace:
        tree:
          - span: shop.pricing.Pricing/Quote
            kind: client
            service: tracecanary
            children:
              - span: shop.pricing.Pricing/Quote
                kind: server
                service: pricing
                attributes: {{rpc.system: grpc}}
                children: [{{span: price-lookup, attributes: {{symbol: SPY}}}}]
""")
        with anyio.fail_after(120):
            proc = await anyio.run_process(
                [sys.executable, "-m", "tracecanary.daemon.cli.main", "check", str(tmp_path / "suite.yaml"),
                 "--json", str(tmp_path / "r.json"), "--otlp-http", f"127.0.0.1:{otlp}", "--otlp-grpc", "none"],
                check=False, env={**os.environ})
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    [report] = json.loads((tmp_path / "r.json").read_text())["probes"]
    run = report["runs"][0]
    assert run["verdict"] == "pass" and server.metadata[0]["traceparent"].split("-")[1] == run["trace_id"]



async def test_tls_with_a_private_ca_and_server_name(tmp_path: Path) -> None:
    """``tls: {ca_file, server_name}``: the call verifies the server against that CA and name; a server whose
    certificate another CA signed fails the handshake (UNAVAILABLE, a probe error naming the address)."""
    key, cert = self_signed("pricing.tracecanary.test")
    (tmp_path / "ca.pem").write_bytes(cert)
    (tmp_path / "other.pem").write_bytes(self_signed("pricing.tracecanary.test")[1])
    async with grpc_server(PROTO, {"shop.pricing.Pricing/Quote": quote}, tls=(key, cert)) as tls_server:
        trusted = probe(tls_server.address, message={"symbol": "SPY"},
                        tls={"ca_file": str(tmp_path / "ca.pem"), "server_name": "pricing.tracecanary.test"})
        untrusted = probe(tls_server.address, message={"symbol": "SPY"},
                          tls={"ca_file": str(tmp_path / "other.pem"), "server_name": "pricing.tracecanary.test"})
        async with aiohttp.ClientSession() as session:
            result = await trusted.fire(make_ctx(session))
            with anyio.fail_after(30), pytest.raises(ProbeError) as e:
                await untrusted.fire(make_ctx(session, deadline_s=5))
    assert result.response is not None and result.response.to_dict()["status"] == 0
    assert str(e.value).startswith(f"grpc {tls_server.address} /shop.pricing.Pricing/Quote: UNAVAILABLE: ")
    assert [m["traceparent"] for m in tls_server.metadata][:1]  # the trusted call reached the service
