"""The shop's pricing service: a gRPC ``shop.pricing.Pricing/Quote`` (``grpc.aio``) beside the chaos admin endpoint.

Each call continues the caller's trace: the W3C ``traceparent``/``tracestate`` come out of the call
metadata through OTel's propagator, and the service's spans (``shop.pricing.Pricing/Quote`` server span,
``price-lookup``, ``risk-check``) go out with the OTel SDK like every shop service's. The message classes
come from ``pricing.proto`` beside this file (``grpc.protos_and_services``, grpcio-tools at runtime). The
``slow-dependency`` fault makes ``price-lookup`` take ``slow_s``. The gRPC address is announced on the
READY line (``grpc=127.0.0.1:PORT``).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tracecanary.demo.shop.common import Faults, Service, admin_routes, extract, main, setup_tracing

PRICES = {"SPY": 512.25, "QQQ": 441.5, "IWM": 203.75}
STOP_GRACE_S = 2.0


def load_pricing() -> tuple[Any, Any]:
    """(messages module, services module) of ``pricing.proto``, generated at runtime by grpcio-tools."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.append(here)
    return grpc.protos_and_services("pricing.proto")  # type: ignore[no-any-return]


class Pricing:
    """The servicer: one span per call, children for the lookup and the risk check."""

    def __init__(self, messages: Any, faults: Faults, tracer: trace.Tracer) -> None:
        self.messages, self.faults, self.tracer = messages, faults, tracer

    async def Quote(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        attrs = {"rpc.system": "grpc", "rpc.service": "shop.pricing.Pricing", "rpc.method": "Quote",
                 "symbol": request.symbol, "test.id": request.test_id}
        with self.tracer.start_as_current_span("shop.pricing.Pricing/Quote", context=extract(metadata),
                                               kind=SpanKind.SERVER, attributes=attrs) as span:
            with self.tracer.start_as_current_span("price-lookup", attributes={"symbol": request.symbol}):
                if self.faults.on("slow-dependency"):
                    await asyncio.sleep(self.faults.slow_s)
                price = PRICES.get(request.symbol)
            if price is None:
                span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.NOT_FOUND.value[0])
                span.set_status(Status(StatusCode.ERROR, f"unknown symbol {request.symbol!r}"))
                await context.abort(grpc.StatusCode.NOT_FOUND, f"the shop does not trade {request.symbol!r}")
            with self.tracer.start_as_current_span("risk-check", attributes={"quantity": request.quantity}):
                total = price * max(1, request.quantity)
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
            return self.messages.QuoteReply(quote_id=f"q-{uuid.uuid4().hex[:12]}", symbol=request.symbol,
                                            price=price, total=total)


async def build(config: dict[str, Any]) -> Service:
    faults = Faults(slow_s=float(config.get("slow_s", 1.5)))
    tracer = setup_tracing("pricing", config.get("otlp_endpoint"))
    messages, services = load_pricing()
    server = grpc.aio.server()
    services.add_PricingServicer_to_server(Pricing(messages, faults, tracer), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def stop() -> None:
        await server.stop(STOP_GRACE_S)

    app = web.Application()
    app.add_routes(admin_routes(faults))
    return Service("pricing", app, cleanup=[stop], announce={"grpc": f"127.0.0.1:{port}"})


if __name__ == "__main__":
    main(build)
