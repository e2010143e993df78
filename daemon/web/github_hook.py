"""``POST /hooks/github``: verify GitHub webhook deliveries and publish them to the watchers' hub.

The signature (``X-Hub-Signature-256``, else the legacy sha1 ``X-Hub-Signature``) is checked with
gidgethub's ``validate_event`` when a secret is configured; unsigned or mis-signed deliveries get
401 and are not published. Published events are ``{"event", "delivery", "payload", "received_ns",
"traceparent"}``. Bodies are capped (GitHub caps payloads at 25 MB).
"""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import parse_qs

from aiohttp import web
from gidgethub import ValidationFailure
from gidgethub.sansio import validate_event

from tracecanary.daemon.watchers.base import EventHub

log = logging.getLogger("tracecanary.hooks.github")

MAX_BODY_BYTES = 25 * 1024 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def github_hook_routes(hub: EventHub, secret: str | None, *, path: str = "/hooks/github",
                       max_body_bytes: int = MAX_BODY_BYTES) -> list[web.RouteDef]:
    """The aiohttp route that feeds ``hub`` from GitHub webhooks (add to the daemon's app)."""
    if not secret:
        log.warning("github webhooks accepted without signature check: no integrations.github.webhook_secret")

    async def receive(request: web.Request) -> web.Response:
        if (request.content_length or 0) > max_body_bytes:
            return _error(413, f"body over {max_body_bytes} bytes")
        body = await request.content.read(max_body_bytes + 1)
        if len(body) > max_body_bytes:
            return _error(413, f"body over {max_body_bytes} bytes")
        if secret:
            signature = request.headers.get("X-Hub-Signature-256") or request.headers.get("X-Hub-Signature")
            if not signature:
                return _error(401, "missing X-Hub-Signature-256")
            try:
                validate_event(body, signature=signature, secret=secret)
            except ValidationFailure as e:
                log.warning("github webhook rejected reason=%s", e)
                return _error(401, "signature mismatch")
        event = request.headers.get("X-GitHub-Event")
        if not event:
            return _error(400, "missing X-GitHub-Event")
        try:
            if request.content_type == "application/x-www-form-urlencoded":
                payload = json.loads(parse_qs(body.decode())["payload"][0])
            else:
                payload = json.loads(body)
        except (ValueError, KeyError, IndexError):
            return _error(400, "body is not a JSON webhook payload")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        hub.publish({"event": event, "delivery": delivery, "payload": payload, "received_ns": time.time_ns(),
                     "traceparent": request.headers.get("traceparent")})
        log.debug("github webhook event=%s delivery=%s action=%s", event, delivery, payload.get("action"))
        return web.json_response({"ok": True, "delivery": delivery}, status=202)

    return [web.post(path, receive)]
