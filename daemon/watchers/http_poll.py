"""HTTP side effects: poll an endpoint every ``every`` until ``until`` holds or the window closes.

Polls do not carry the run's trace context: they observe the system, and their server spans must
not join (and distort) the trace under judgement. Judgement is ``assertions.side_effects.judge_http``.
"""

from __future__ import annotations

import json as jsonlib
import time
from collections import deque
from typing import Any

import aiohttp
import anyio

from tracecanary.assertions.side_effects import HttpEffect, HttpPollRequest, http_until_mismatch, judge_http
from tracecanary.assertions.verdict import Finding
from tracecanary.daemon.watchers.base import WatchContext
from tracecanary.probes.base import ProbeContext

MAX_BODY_BYTES = 256 * 1024
MAX_KEPT = 20
"""Observations kept to explain a miss (the newest)."""
POLL_TIMEOUT_S = 10.0


async def poll_once(ctx: ProbeContext, request: HttpPollRequest, timeout_s: float) -> dict[str, Any]:
    """One request; ``{status, json, body, error, latency_s}`` (never raises for network trouble)."""
    t0 = time.perf_counter()
    try:
        with anyio.fail_after(max(0.001, timeout_s)):
            async with ctx.session.request(request.method, request.url, headers=request.headers) as resp:
                raw = await resp.content.read(MAX_BODY_BYTES)
                text = raw.decode(errors="replace")
                try:
                    doc: Any = jsonlib.loads(text) if text.strip() else None
                except ValueError:
                    doc = None
                return {"status": resp.status, "json": doc, "body": text[:2048], "error": None,
                        "latency_s": time.perf_counter() - t0}
    except TimeoutError:
        error = f"no response within {timeout_s:.3g}s"
    except aiohttp.ClientError as e:
        error = f"{type(e).__name__}: {e}"
    return {"status": None, "json": None, "body": "", "error": error, "latency_s": time.perf_counter() - t0}


async def watch_http(effect: HttpEffect, wctx: WatchContext, *, path: str = "side_effects.http") -> list[Finding]:
    """Poll until the endpoint reports the expected state (or, with absent, until the window ends).

    ``effect`` arrives rendered (the runner renders every side effect once per run).
    """
    rendered = effect
    end_s = wctx.window_end_s(rendered.within)
    seen: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT)
    polls = 0
    while True:
        started = anyio.current_time()
        observation = await poll_once(wctx.probe, rendered.request, min(POLL_TIMEOUT_S, max(1.0, end_s - started)))
        polls += 1
        seen.append(observation)
        if http_until_mismatch(rendered.until, observation) is None:
            break  # reached: a pass, or (absent) the forbidden state — judged below either way
        wake = started + rendered.every
        if wake >= end_s:
            break
        await anyio.sleep(max(0.0, wake - anyio.current_time()))  # a slow poll may overrun `every`
    wctx.probe.log("http poll done", url=rendered.request.url, polls=polls)
    wctx.saw(seen)
    return judge_http(rendered, list(seen), path=path)
