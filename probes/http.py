"""The http probe (reference probe kind): send one HTTP request carrying the run's trace context."""

from __future__ import annotations

import json as jsonlib
import time
from typing import Any, Literal

import aiohttp
import anyio
from pydantic import Field

from tracecanary.errors import ProbeError

from .base import FireResult, ProbeContext, ProbeSpec, ResponseSummary, StrictModel

MAX_BODY_BYTES = 1 << 20


class HttpRequest(StrictModel):
    """The request to send; strings may hold ``{{ }}`` templates rendered per run."""

    method: str = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    json_: Any = Field(None, alias="json", description="JSON body.")
    body: str | None = Field(None, description="Raw body.")
    timeout: float | None = Field(None, description="Request timeout (default: the run's remaining time).")


class HttpProbe(ProbeSpec):
    """POST a webhook (or any request) and judge its response, trace and side effects."""

    kind: Literal["http"] = "http"
    request: HttpRequest

    async def fire(self, ctx: ProbeContext) -> FireResult:
        req = self.request
        url = ctx.render(req.url)
        headers = ctx.render(dict(req.headers))
        data: bytes | None = None
        if req.json_ is not None:
            data = jsonlib.dumps(ctx.render(req.json_)).encode()
            headers.setdefault("Content-Type", "application/json")
        elif req.body is not None:
            data = ctx.render(req.body).encode()
        with ctx.client_span(f"{req.method} {url}", "client", **{"http.request.method": req.method}) as sid:
            headers.update(ctx.trace_headers(sid))
            ctx.log("http request", method=req.method, url=url)
            t0 = time.perf_counter()
            try:
                with anyio.fail_after(req.timeout or max(0.001, ctx.remaining_s())):
                    async with ctx.session.request(
                        req.method, url, headers=headers, params=ctx.render(dict(req.query)), data=data
                    ) as resp:
                        raw = await resp.content.read(MAX_BODY_BYTES)
                        latency = time.perf_counter() - t0
                        text = raw.decode(errors="replace")
                        parsed: Any = None
                        if "json" in resp.headers.get("Content-Type", ""):
                            try:
                                parsed = jsonlib.loads(text)
                            except ValueError:
                                parsed = None
                        summary = ResponseSummary(
                            status=resp.status, headers=dict(resp.headers), body_text=text, json=parsed,
                            latency_s=latency, method=req.method, url=url,
                        )
            except TimeoutError as e:
                raise ProbeError(f"{req.method} {url}: no response within the deadline") from e
            except aiohttp.ClientError as e:
                raise ProbeError(f"{req.method} {url}: {e}") from e
        ctx.log("http response", status=summary.status, latency_s=round(summary.latency_s, 4))
        return FireResult(response=summary)
