"""A GitHub REST + webhooks emulator that ``gidgethub`` runs against unmodified (only ``base_url`` changes).

Covers what review bots and tracecanary touch: issue/PR comments, PR reviews, review comments, check
runs, pull requests (create, get, close), branches (git refs), ``Link`` pagination honouring
``per_page``, ``x-ratelimit-*`` headers (403 ``API rate limit exceeded`` at zero), secondary-limit
storms (403/429 with ``retry-after``), GitHub's error bodies (``{"message", "documentation_url",
"status"}``) and signed webhook deliveries (``X-Hub-Signature-256``, ``X-GitHub-Event``,
``X-GitHub-Delivery``) to a configured URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from tracecanary.demo.emulators.github_rest import DOCS, LOGIN, GitHubError, GitHubRestMixin, Repo, error_body

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
    ) -> None:
        self.host, self.port = host, port
        self.tokens = tokens or {"ghp-bot": "review-bot[bot]", "ghp-prober": "prober"}
        self.webhook_urls = [webhook_url] if isinstance(webhook_url, str) else list(webhook_url or [])
        self.webhook_secret = webhook_secret
        self.storm_methods = storm_methods
        self.rate_limit, self.rate_reset_s = rate_limit, rate_reset_s
        self.storm_left, self.storm_status, self.retry_after_s = storm, storm_status, retry_after_s
        self.repos: dict[str, Repo] = {}
        for i, full in enumerate(repos or ["acme/app"], start=1):
            owner, name = full.split("/")
            self.repos[full.lower()] = Repo(id=1000 + i, owner=owner, name=name, refs={"main": "a" * 40})
        self._users: dict[str, int] = {}
        self._ids = 100
        self._used = 0
        self._reset_at = time.time() + rate_reset_s
        self.deliveries: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, int]] = []
        self._outbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=10_000)
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
            self._used, self._reset_at = 0, time.time() + self.rate_reset_s
        return {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(max(0, self.rate_limit - self._used)),
            "x-ratelimit-used": str(self._used),
            "x-ratelimit-reset": str(int(self._reset_at)),
            "x-ratelimit-resource": "core",
            "x-github-request-id": uuid.uuid4().hex[:20].upper(),
            "x-github-media-type": "github.v3; format=json",
        }

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await self._handle(request, handler)
        self.requests.append((request.method, request.path, resp.status))
        return resp

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
        if not self.webhook_urls:
            return
        full = {**payload, "repository": self.repository(repo), "sender": self.user(sender)}
        try:
            self._outbox.put_nowait((event, full))
        except asyncio.QueueFull:
            log.warning("github emulator outbox full dropped=%s", event)

    async def _deliver_loop(self) -> None:
        while True:
            event, payload = await self._outbox.get()
            for url in self.webhook_urls:
                await self._deliver(url, event, payload)

    async def _deliver(self, url: str, event: str, payload: dict[str, Any]) -> None:
        assert self._session is not None
        body = json.dumps(payload).encode()
        delivery = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/emulator",
            "X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-GitHub-Hook-ID": "1",
            "X-GitHub-Hook-Installation-Target-Type": "repository",
            "X-GitHub-Hook-Installation-Target-ID": str(payload["repository"]["id"]),
        }
        if self.webhook_secret:
            headers["X-Hub-Signature-256"] = hub_signature(self.webhook_secret, body)
            headers["X-Hub-Signature"] = "sha1=" + hmac.new(self.webhook_secret.encode(), body, hashlib.sha1).hexdigest()
        record: dict[str, Any] = {"event": event, "delivery": delivery, "action": payload.get("action"),
                                  "url": url, "status": None}
        self.deliveries.append(record)
        try:
            async with asyncio.timeout(10.0):
                async with self._session.post(url, data=body, headers=headers) as resp:
                    record["status"] = resp.status
        except (TimeoutError, aiohttp.ClientError) as e:
            record["error"] = type(e).__name__
