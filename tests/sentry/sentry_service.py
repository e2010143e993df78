"""A system under test instrumented ONLY with sentry-sdk (no OpenTelemetry), run as a subprocess.

``python sentry_service.py DSN`` serves ``POST /checkout`` on a free loopback port and prints
``READY <port>``. Each request continues the caller's trace from ``sentry-trace``/``baggage``
(``sentry_sdk.continue_trace``) and records a transaction ``POST /checkout`` with child spans
``load-cart`` (db.query), ``charge-card`` (http.client) → ``fraud-check`` (function). ``?fail=1``
makes ``charge-card`` raise: the error is captured (so it hangs on that span) and the transaction
ends with status internal_error. sentry-sdk is process-global, hence its own process.
"""

from __future__ import annotations

import asyncio
import sys

import sentry_sdk
from aiohttp import web


class PaymentDeclinedError(Exception):
    """The card was declined (the demo's failure)."""


async def checkout(request: web.Request) -> web.Response:
    headers = {k.lower(): v for k, v in request.headers.items()}
    txn = sentry_sdk.continue_trace(headers, op="http.server", name="POST /checkout", source="route")
    fail = request.query.get("fail") == "1"
    with sentry_sdk.start_transaction(txn):
        with sentry_sdk.start_span(op="db.query", name="load-cart"):
            await asyncio.sleep(0.002)
        with sentry_sdk.start_span(op="http.client", name="charge-card") as charge:
            with sentry_sdk.start_span(op="function", name="fraud-check"):
                await asyncio.sleep(0.001)
            if fail:
                try:
                    raise PaymentDeclinedError("card 4242 declined")
                except PaymentDeclinedError as e:
                    sentry_sdk.capture_exception(e)
                charge.set_status("internal_error")
                txn.set_status("internal_error")
        if not fail:
            txn.set_status("ok")
    body = {"trace_id": txn.trace_id, "span_id": txn.span_id, "parent_span_id": txn.parent_span_id}
    return web.json_response(body, status=500 if fail else 200)


async def main(dsn: str) -> None:
    sentry_sdk.init(
        dsn=dsn,
        traces_sample_rate=1.0,
        environment="test",
        release="shop@1.0.0",
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    app = web.Application()
    app.router.add_post("/checkout", checkout)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    # Serve until the parent closes our stdin (or kills us).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    sentry_sdk.flush(timeout=2.0)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
