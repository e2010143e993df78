"""A GitHub REST + webhooks emulator that ``gidgethub`` runs against unmodified (only ``base_url`` changes).

Covers what review bots and tracecanary touch: issue/PR comments, PR reviews, review comments, check
runs, pull requests (create, get, edit, close, reopen), branches (git refs), ``Link`` pagination honouring
``per_page``, ``x-ratelimit-*`` headers (403 ``API rate limit exceeded`` at zero), secondary-limit
storms (403/429 with ``retry-after``), GitHub's error bodies (``{"message", "documentation_url",
"status"}``) and signed webhook deliveries (``X-Hub-Signature-256``, ``X-GitHub-Event``,
``X-GitHub-Delivery``) to the configured URLs, complete as GitHub sends them (``github_objects.py``).

Conditional requests as on GitHub (docs.github.com/rest/using-the-rest-api/best-practices-for-using-the-
rest-api, "Use conditional requests"): every 200 GET carries an ``ETag``; a GET whose ``If-None-Match``
names the current one gets ``304 Not Modified`` without a body, and does not count against the rate limit.

Faults at the HTTP level, for retry tests: ``fail(count, status=…)`` answers the next ``count`` requests
with a 5xx and GitHub's error body, ``fail(count, disconnect=True)`` closes their connections unanswered.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import socket
import time
import uuid
from collections import deque
from typing import Any

import aiohttp
from aiohttp import web

from tracecanary.demo.emulators.github_objects import Repo
from tracecanary.demo.emulators.github_rest import DOCS, LOGIN, GitHubError, GitHubRestMixin, error_body

__all__ = ["GitHubEmulator", "GitHubError", "error_body", "hub_signature"]

log = logging.getLogger("tracecanary.demo.github")

DOCS_RATE = DOCS + "/overview/rate-limits-for-the-rest-api"
MAX_BODY_BYTES = 1 << 20


def hub_signature(secret: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256(secret, body): the ``X-Hub-Signature-256`` header."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class GitHubEmulator(GitHubRestMixin):
    """An aiohttp app emulating api.github.com; ``await start()`` returns the API base URL."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        repos: list[str] | None = None,
        tokens: dict[str, str] | None = None,
        webhook_url: str | list[str] | None = None,
        webhook_secret: str | None = "webhook-secret",
        rate_limit: int = 5000,
        rate_reset_s: float = 3600.0,
        storm: int = 0,
        storm_status: int = 403,
        storm_methods: tuple[str, ...] = ("GET", "POST", "PATCH", "DELETE"),
        retry_after_s: int = 1,
        server_errors: int = 0,
        server_error_status: int = 502,
    ) -> None:
        self.host, self.port = host, port
        self.tokens = tokens or {"ghp-bot": "review-bot[bot]", "ghp-prober": "prober"}
        self.webhook_urls = [webhook_url] if isinstance(webhook_url, str) else list(webhook_url or [])
        self.webhook_secret = webhook_secret
        self.storm_methods = storm_methods
        self.rate_limit, self.rate_reset_s = rate_limit, rate_reset_s
        self.storm_left, self.storm_status, self.retry_after_s = storm, storm_status, retry_after_s
        self._faults_left, self._fault_status, self._fault_disconnect = server_errors, server_error_status, False
        self._fault_methods: tuple[str, ...] = ("GET", "POST", "PATCH", "DELETE")
        self.not_modified = 0
        self.repos: dict[str, Repo] = {}
        for i, full in enumerate(repos or ["acme/app"], start=1):
            owner, name = full.split("/")
            self.repos[full.lower()] = Repo(id=1000 + i, owner=owner, name=name, refs={"main": "a" * 40})
        self._users: dict[str, int] = {}
        self._ids = 100
        self._used = 0
        self._reset_at = math.ceil(time.time() + rate_reset_s)  # whole epoch seconds, as x-ratelimit-reset says
        self.deliveries: list[dict[str, Any]] = []
        self.sent: deque[tuple[str, dict[str, Any]]] = deque(maxlen=1000)
        """The last webhook payloads emitted (event, body), whether or not a URL was set to receive them."""
        self.requests: list[tuple[str, str, int]] = []
        self._outbox: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    @property
    def webhook_url(self) -> str | None:
        """The first webhook URL (set it to point deliveries at one receiver after start)."""
        return self.webhook_urls[0] if self.webhook_urls else None

    @webhook_url.setter
    def webhook_url(self, url: str | None) -> None:
        self.webhook_urls = [url] if url else []

    # --- lifecycle -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._middleware])
        r = app.router
        p = "/repos/{owner}/{repo}"
        r.add_get(p, self._get_repo)
        r.add_get(p + "/issues/{n}/comments", self._list("comments"))
        r.add_post(p + "/issues/{n}/comments", self._create_comment)
        r.add_get(p + "/pulls/{n}/reviews", self._list("reviews"))
        r.add_post(p + "/pulls/{n}/reviews", self._create_review)
        r.add_get(p + "/pulls/{n}/comments", self._list("review_comments"))
        r.add_post(p + "/pulls/{n}/comments", self._create_review_comment)
        r.add_post(p + "/pulls", self._create_pull)
        r.add_get(p + "/pulls/{n}", self._get_pull)
        r.add_patch(p + "/pulls/{n}", self._update_pull)
        r.add_post(p + "/check-runs", self._create_check_run)
        r.add_get(p + "/commits/{ref}/check-runs", self._list_check_runs)
        r.add_get(p + "/git/ref/heads/{branch:.+}", self._get_ref)
        r.add_post(p + "/git/refs", self._create_ref)
        r.add_delete(p + "/git/refs/heads/{branch:.+}", self._delete_ref)
        r.add_get("/rate_limit", self._rate_limit)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://{self.host}:{self.port}"
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._deliver_loop())
        return self.base_url

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GitHubEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- plumbing ------------------------------------------------------------------------------
    def _rate_headers(self) -> dict[str, str]:
        if time.time() >= self._reset_at:
            self._used, self._reset_at = 0, math.ceil(time.time() + self.rate_reset_s)
        return {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(max(0, self.rate_limit - self._used)),
            "x-ratelimit-used": str(self._used),
            "x-ratelimit-reset": str(self._reset_at),
            "x-ratelimit-resource": "core",
            "x-github-request-id": uuid.uuid4().hex[:20].upper(),
            "x-github-media-type": "github.v3; format=json",
        }

    def fail(self, count: int, *, status: int = 502, disconnect: bool = False,
             methods: tuple[str, ...] = ("GET", "POST", "PATCH", "DELETE")) -> None:
        """Answer the next ``count`` requests (of ``methods``) with ``status`` (5xx), or drop their connections."""
        self._faults_left, self._fault_status, self._fault_disconnect = count, status, disconnect
        self._fault_methods = methods

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._faults_left > 0 and request.method in self._fault_methods:
            self._faults_left -= 1
            if self._fault_disconnect:
                self.requests.append((request.method, request.path, 0))
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # never reaches the client: its connection is gone
            resp: web.StreamResponse = web.json_response(
                error_body(self._fault_status, "Server Error"), status=self._fault_status,
                headers={"x-github-request-id": uuid.uuid4().hex[:20].upper()})
        else:
            resp = await self._handle(request, handler)
        self.requests.append((request.method, request.path, resp.status))
        return resp

    @staticmethod
    def _etag(body: bytes) -> str:
        return 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'

    async def _handle(self, request: web.Request, handler: Any) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth.split(" ", 1)[1] if " " in auth else ""
        if auth and token not in self.tokens:
            return web.json_response(error_body(401, "Bad credentials"), status=401, headers=self._rate_headers())
        if self.storm_left > 0 and request.method in self.storm_methods:
            self.storm_left -= 1
            msg = ("You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
                   "If you reach out to GitHub Support for help, please include the request ID "
                   f"{uuid.uuid4().hex[:20].upper()}.")
            return web.json_response(
                error_body(self.storm_status, msg, DOCS_RATE),
                status=self.storm_status, headers={**self._rate_headers(), "retry-after": str(self.retry_after_s)},
            )
        headers = self._rate_headers()
        if self._used >= self.rate_limit:
            msg = "API rate limit exceeded for user ID 1."
            return web.json_response(
                error_body(403, msg, DOCS_RATE), status=403, headers=headers
            )
        self._used += 1
        request[LOGIN] = self.tokens.get(token, "")
        try:
            resp: web.StreamResponse = await handler(request)
        except GitHubError as e:
            resp = web.json_response(e.body, status=e.status)
        except web.HTTPNotFound:
            resp = web.json_response(error_body(404, "Not Found"), status=404)
        body = resp.body if isinstance(resp, web.Response) else None
        if request.method == "GET" and resp.status == 200 and isinstance(body, bytes | bytearray):
            etag = self._etag(bytes(body))
            if etag in (t.strip() for t in request.headers.get("If-None-Match", "").split(",")):
                self._used -= 1  # a 304 is not counted against the rate limit
                self.not_modified += 1
                resp = web.Response(status=304)
            resp.headers["ETag"] = etag
            resp.headers["Cache-Control"] = "private, max-age=60, s-maxage=60"
            resp.headers["Vary"] = "Accept, Authorization, Cookie, X-GitHub-OTP"
        resp.headers.update(self._rate_headers())
        return resp

    async def _rate_limit(self, request: web.Request) -> web.Response:
        h = self._rate_headers()
        core = {"limit": self.rate_limit, "remaining": int(h["x-ratelimit-remaining"]),
                "reset": int(h["x-ratelimit-reset"]), "used": self._used, "resource": "core"}
        return web.json_response({"resources": {"core": core}, "rate": core})

    # --- webhooks ------------------------------------------------------------------------------
    def emit(self, event: str, repo: Repo, payload: dict[str, Any], sender: str) -> None:
        """Queue a webhook delivery of ``event`` (payload gains ``repository`` and ``sender``)."""
        full = {**payload, "repository": self.repository(repo), "sender": self.user(sender)}
        # serialized now: later changes to the pull request must not leak into this delivery
        body = json.dumps(full).encode()
        self.sent.append((event, json.loads(body)))
        try:
            self._outbox.put_nowait((event, str(full.get("action") or ""), body))
        except asyncio.QueueFull:
            log.warning("github emulator outbox full dropped=%s", event)

    async def _deliver_loop(self) -> None:
        while True:
            event, action, body = await self._outbox.get()
            for url in self.webhook_urls:
                await self._deliver(url, event, action, body)

    async def _deliver(self, url: str, event: str, action: str, body: bytes) -> None:
        assert self._session is not None
        delivery = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/emulator",
            "X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-GitHub-Hook-ID": "1",
            "X-GitHub-Hook-Installation-Target-Type": "repository",
            "X-GitHub-Hook-Installation-Target-ID": str(json.loads(body)["repository"]["id"]),
        }
        if self.webhook_secret:
            headers["X-Hub-Signature-256"] = hub_signature(self.webhook_secret, body)
            headers["X-Hub-Signature"] = "sha1=" + hmac.new(self.webhook_secret.encode(), body, hashlib.sha1).hexdigest()
        record: dict[str, Any] = {"event": event, "delivery": delivery, "action": action or None,
                                  "url": url, "status": None}
        self.deliveries.append(record)
        try:
            async with asyncio.timeout(10.0):
                async with self._session.post(url, data=body, headers=headers) as resp:
                    record["status"] = resp.status
        except (TimeoutError, aiohttp.ClientError) as e:
            record["error"] = type(e).__name__
