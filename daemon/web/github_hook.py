"""``POST /hooks/github``: verify GitHub webhook deliveries and publish them to the watchers' hub.

Every delivery must carry a valid signature (``X-Hub-Signature-256``, else the legacy sha1
``X-Hub-Signature``), checked with gidgethub's ``validate_event`` against
``integrations.github.webhook_secret``; unsigned or mis-signed deliveries get 401 and are not
published, so a forged delivery can never satisfy a probe's GitHub side effect. Without a secret every
delivery is refused, unless ``integrations.github.allow_unsigned_webhooks: true`` (a lab setup) says
to accept them unchecked. Published events are ``{"event", "delivery", "payload", "received_ns",
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


def github_hook_routes(hub: EventHub, secret: str | None, *, allow_unsigned: bool = False,
                       announce: bool = True, path: str = "/hooks/github",
                       max_body_bytes: int = MAX_BODY_BYTES) -> list[web.RouteDef]:
    """The aiohttp route that feeds ``hub`` from GitHub webhooks (add to the daemon's app).

    ``announce``: log at start-up how unsigned deliveries are treated when no secret is set — worth
    saying only when a GitHub probe or watcher reads these deliveries.
    """
    if not secret and announce:
        if allow_unsigned:
            log.warning("github webhooks accepted WITHOUT signature check (integrations.github."
                        "allow_unsigned_webhooks: true): anyone who can reach %s can fake deliveries", path)
        else:
            log.warning("github webhooks refused (401): set integrations.github.webhook_secret to receive "
                        "deliveries at %s (GitHub watchers then rely on REST polling with integrations.github.token)", path)

    async def receive(request: web.Request) -> web.Response:
        if (request.content_length or 0) > max_body_bytes:
            return _error(413, f"body over {max_body_bytes} bytes")
        body = await request.content.read(max_body_bytes + 1)
        if len(body) > max_body_bytes:
            return _error(413, f"body over {max_body_bytes} bytes")
        refused = _refusal(body, request, secret, allow_unsigned)
        if refused is not None:
            log.warning("github webhook refused reason=%r delivery=%s peer=%s", refused,
                        request.headers.get("X-GitHub-Delivery", ""), request.remote)
            return _error(401, refused)
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
        if not isinstance(payload, dict):
            return _error(400, "body is not a JSON webhook payload")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        hub.publish({"event": event, "delivery": delivery, "payload": payload, "received_ns": time.time_ns(),
                     "traceparent": request.headers.get("traceparent")})
        log.debug("github webhook event=%s delivery=%s action=%s", event, delivery, payload.get("action"))
        return web.json_response({"ok": True, "delivery": delivery}, status=202)

    return [web.post(path, receive)]


def _refusal(body: bytes, request: web.Request, secret: str | None, allow_unsigned: bool) -> str | None:
    """Why the delivery is refused (401), or None when it may be published."""
    if not secret:
        return None if allow_unsigned else "no webhook secret configured: unsigned deliveries are refused"
    signature = request.headers.get("X-Hub-Signature-256") or request.headers.get("X-Hub-Signature")
    if not signature:
        return "missing X-Hub-Signature-256"
    try:
        validate_event(body, signature=signature, secret=secret)
    except ValidationFailure:
        return "signature mismatch"
    return None
