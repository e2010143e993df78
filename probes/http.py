"""The http probe (reference probe kind): send one HTTP request carrying the run's trace context.

``HttpRequest`` is also the request shape other kinds reuse (steps, scheduled_job, watchers):
``prepare`` renders templates and builds the exact body bytes (so a signature covers what is
sent), ``send_prepared`` sends them inside a client span with the trace headers.
"""

from __future__ import annotations

import base64
import json as jsonlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import aiohttp
import anyio
from pydantic import Field

from tracecanary.assertions.units import Duration
from tracecanary.errors import ProbeError
from tracecanary.model import CREDENTIAL, HEADERS_CREDENTIAL, StrictModel, cross_field_rule
from tracecanary.probes.base import FireResult, ProbeContext, ProbeSpec, ResponseSummary
from tracecanary.probes.signing import SignSpec, sign_headers

MAX_BODY_BYTES = 1 << 20


class BasicAuth(StrictModel):
    """HTTP basic credentials."""

    username: str = Field(description="User name (templated).")
    password: Annotated[str, CREDENTIAL] = Field(description="Password (usually ${ENV}).")


class HttpAuth(StrictModel):
    """``auth: {bearer: TOKEN}`` or ``auth: {basic: {username, password}}``."""

    bearer: Annotated[str | None, CREDENTIAL] = Field(None, description="Sent as Authorization: Bearer <token>.")
    basic: BasicAuth | None = Field(None, description="Sent as Authorization: Basic <b64>.")

    _one = cross_field_rule(
        lambda raw: None if (raw.get("bearer") is None) != (raw.get("basic") is None)
        else "auth takes exactly one of bearer, basic")

    def header(self, ctx: ProbeContext) -> str:
        if self.bearer is not None:
            return f"Bearer {ctx.render(self.bearer)}"
        assert self.basic is not None
        user, password = ctx.render(self.basic.username), ctx.render(self.basic.password)
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class PreparedRequest:
    """A rendered request: the exact bytes and headers that will be sent."""

    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    timeout_s: float | None = None
    verify_tls: bool = True
    follow_redirects: bool = True
    max_redirects: int = 10


def _one_body(fields: Mapping[str, Any]) -> str | None:
    given = [n for n in ("json", "body", "form") if fields.get("json_" if n == "json" else n) is not None]
    return f"request takes at most one of json, body, form; got {', '.join(given)}" if len(given) > 1 else None


class HttpRequest(StrictModel):
    """The request to send; strings may hold ``{{ }}`` templates rendered per run."""

    method: str = Field("GET", description="HTTP method.")
    url: str = Field(description="Absolute URL (templated).")
    headers: Annotated[dict[str, str], HEADERS_CREDENTIAL] = Field(
        default_factory=dict, description="Extra request headers (templated); their values are masked like credentials.")
    query: dict[str, str] = Field(default_factory=dict, description="Query parameters (templated).")
    json_: Any = Field(None, alias="json", description="JSON body (templated).")
    body: str | None = Field(None, description="Raw body (templated).")
    form: dict[str, str] | None = Field(None, description="application/x-www-form-urlencoded body (templated).")
    auth: HttpAuth | None = Field(None, description="Basic or bearer credentials.")
    timeout: Duration | None = Field(None, description="Request timeout (default: the run's remaining time).")
    verify_tls: bool = Field(True, description="Verify the server certificate.")
    follow_redirects: bool = Field(True, description="Follow 3xx redirects.")
    max_redirects: int = Field(10, ge=0, le=50, description="Redirect limit when following.")
    sign: SignSpec | None = Field(None, description="Sign the exact body bytes (github | slack | hmac).")

    _one_body = cross_field_rule(_one_body)

    def prepare(self, ctx: ProbeContext) -> PreparedRequest:
        """Render templates, encode the body and sign it."""
        headers: dict[str, str] = ctx.render(dict(self.headers))
        lower = {k.lower() for k in headers}
        body: bytes | None = None
        if self.json_ is not None:
            body = jsonlib.dumps(ctx.templates.render_native(self.json_, ctx.template_vars()), separators=(",", ":")).encode()
            if "content-type" not in lower:
                headers["Content-Type"] = "application/json"
        elif self.form is not None:
            body = urlencode(ctx.render(dict(self.form))).encode()
            if "content-type" not in lower:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif self.body is not None:
            body = str(ctx.render(self.body)).encode()
        if self.auth is not None:
            headers["Authorization"] = self.auth.header(ctx)
        if self.sign is not None:
            headers.update(sign_headers(self.sign, body or b""))
        return PreparedRequest(
            method=str(ctx.render(self.method)).upper(), url=str(ctx.render(self.url)), headers=headers,
            params=ctx.render(dict(self.query)), body=body, timeout_s=self.timeout,
            verify_tls=self.verify_tls, follow_redirects=self.follow_redirects, max_redirects=self.max_redirects,
        )

    async def run(self, ctx: ProbeContext) -> FireResult:
        """Send the request once (the action steps and other kinds reuse)."""
        return FireResult(response=await send_prepared(ctx, self.prepare(ctx)))


async def _read_capped(resp: aiohttp.ClientResponse, limit: int = MAX_BODY_BYTES) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _parse_json(text: str, content_type: str) -> Any:
    stripped = text.lstrip()
    if "json" not in content_type and not stripped.startswith(("{", "[")):
        return None
    try:
        return jsonlib.loads(text)
    except ValueError:
        return None


async def send_prepared(ctx: ProbeContext, req: PreparedRequest, *, span_name: str | None = None) -> ResponseSummary:
    """Send ``req`` inside a client span carrying the trace headers; raise ProbeError if no response."""
    name = span_name or f"{req.method} {req.url}"
    with ctx.client_span(name, "client", **{"http.request.method": req.method, "url.full": req.url}) as sid:
        headers = ctx.with_trace_headers(req.headers, sid)
        ctx.log("http request", method=req.method, url=req.url, bytes=len(req.body or b""))
        limit_s = ctx.remaining_s() if req.timeout_s is None else min(req.timeout_s, ctx.remaining_s())
        t0 = time.perf_counter()
        try:
            with anyio.fail_after(max(0.001, limit_s)):
                async with ctx.session.request(
                    req.method, req.url, headers=headers, params=req.params or None, data=req.body,
                    ssl=True if req.verify_tls else False, allow_redirects=req.follow_redirects,
                    max_redirects=req.max_redirects,
                ) as resp:
                    raw = await _read_capped(resp)
                    latency_s = time.perf_counter() - t0
                    text = raw.decode(errors="replace")
                    summary = ResponseSummary(
                        status=resp.status, headers=dict(resp.headers), body_text=text,
                        json=_parse_json(text, resp.headers.get("Content-Type", "")),
                        latency_s=latency_s, method=req.method, url=str(resp.url),
                    )
        except TimeoutError as e:
            raise ProbeError(f"{req.method} {req.url}: no response within {limit_s:.3g}s") from e
        except aiohttp.ClientError as e:
            raise ProbeError(f"{req.method} {req.url}: {type(e).__name__}: {e}") from e
    ctx.log("http response", status=summary.status, latency_s=round(summary.latency_s, 4))
    return summary


class HttpProbe(ProbeSpec):
    """POST a webhook (or any request) and judge its response, trace and side effects."""

    kind: Literal["http"] = "http"
    request: HttpRequest = Field(description="The request to send.")

    async def fire(self, ctx: ProbeContext) -> FireResult:
        return await self.request.run(ctx)
