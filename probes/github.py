"""The github_webhook probe: deliver a complete, signed GitHub event to the system under test.

Payloads validate against GitHub's published webhook schemas (``github_payloads.py``); their URLs point
at ``integrations.github.base_url`` (api.github.com and github.com by default, or a GitHub Enterprise host).

Headers match what GitHub's Hookshot sends: ``X-GitHub-Event``, ``X-GitHub-Delivery`` (the run's
UUID), ``X-GitHub-Hook-ID``, the installation target headers, ``User-Agent: GitHub-Hookshot/…``
and, with a secret, ``X-Hub-Signature`` (sha1) and ``X-Hub-Signature-256`` over the exact body.
"""

from __future__ import annotations

import json as jsonlib
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from tracecanary.assertions.units import Duration
from tracecanary.errors import ProbeError
from tracecanary.model import CREDENTIAL, HEADERS_CREDENTIAL, StrictModel, cross_field_rule
from tracecanary.probes.base import FireResult, ProbeContext, ProbeSpec
from tracecanary.probes.github_payloads import (
    ACTIONS,
    Site,
    build_payload,
    deep_merge,
    missing_required,
    sha,
    stable_id,
)
from tracecanary.probes.http import PreparedRequest, send_prepared
from tracecanary.probes.signing import github_signature, hmac_hex

HOOKSHOT_VERSION = "6d2c4f1"
_DELIVERY_NAMESPACE = uuid.UUID("6f1c3a52-41d4-4c38-9b53-7a8e5c2b9d10")


def delivery_id(run_id: str) -> str:
    """The run's UUID as ``X-GitHub-Delivery`` (a run id that is not a UUID is mapped to one)."""
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return str(uuid.uuid5(_DELIVERY_NAMESPACE, run_id))


def _action_fits_event(fields: Mapping[str, Any]) -> str | None:
    event, action = fields.get("event"), fields.get("action")
    if not isinstance(event, str) or event not in ACTIONS or not isinstance(action, str):
        return None  # no action, or a field error of its own
    allowed = ACTIONS[event]
    if action in allowed:
        return None
    if not allowed:
        return f"event {event} takes no action; got {action!r}"
    return f"action {action!r} is not one of {', '.join(allowed)} for event {event}"


class GithubDelivery(StrictModel):
    """One webhook delivery; ``payload`` overrides are deep-merged into the generated event."""

    url: str = Field(description="The receiver's webhook URL (templated).")
    event: Literal["pull_request", "issue_comment", "push"] = Field(description="X-GitHub-Event.")
    action: str | None = Field(None, description="opened/synchronize (pull_request), created (issue_comment).")
    repo: str = Field("acme/app", pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name of the repository.")
    number: int | str = Field(1, description="Pull request / issue number (templated).")
    sender: str = Field("tracecanary-bot", description="Login of the sender.")
    comment: str = Field("tracecanary probe {{ run_id }}", description="issue_comment: the comment body (templated).")
    ref: str = Field("refs/heads/main", description="push: the ref pushed.")
    payload: dict[str, Any] = Field(default_factory=dict, description="Deep-merged overrides; null removes a key.")
    validate_payload: bool = Field(True, description="Refuse payloads missing fields GitHub always sends.")
    secret: Annotated[str | None, CREDENTIAL] = Field(
        None, description="Webhook secret; default integrations.github.webhook_secret.")
    hook_id: int | None = Field(None, description="X-GitHub-Hook-ID (default: derived from the URL).")
    headers: Annotated[dict[str, str], HEADERS_CREDENTIAL] = Field(
        default_factory=dict, description="Extra headers (templated); their values are masked like credentials.")
    timeout: Duration | None = Field(None, description="Request timeout (default: the run's remaining time).")

    _action_fits_event = cross_field_rule(_action_fits_event)

    def build(self, ctx: ProbeContext) -> dict[str, Any]:
        """The rendered payload (with overrides), validated against GitHub's required fields."""
        number_text = str(ctx.render(self.number)) if isinstance(self.number, str) else str(self.number)
        if not number_text.isdigit():
            raise ProbeError(f"github number {number_text!r} is not a positive integer")
        payload = build_payload(
            self.event, seed=ctx.run_id, repo=str(ctx.render(self.repo)), number=int(number_text),
            action=self.action, sender=self.sender, comment=str(ctx.render(self.comment)), ref=self.ref,
            now=datetime.now().astimezone(), site=Site.from_api(ctx.integrations.github.base_url),
        )
        payload = deep_merge(payload, ctx.templates.render_native(self.payload, ctx.template_vars()))
        missing = missing_required(self.event, payload) if self.validate_payload else []
        if missing:
            raise ProbeError(f"github {self.event} payload lacks required field(s): {', '.join(missing)}")
        return payload

    def prepare(self, ctx: ProbeContext) -> PreparedRequest:
        """Encode, sign and address the delivery exactly as GitHub would."""
        payload = self.build(ctx)
        body = jsonlib.dumps(payload, separators=(",", ":")).encode()
        url = str(ctx.render(self.url))
        repo = payload.get("repository") or {}
        headers = {
            "Content-Type": "application/json", "Accept": "*/*",
            "User-Agent": f"GitHub-Hookshot/{HOOKSHOT_VERSION}",
            "X-GitHub-Event": self.event, "X-GitHub-Delivery": delivery_id(ctx.run_id),
            "X-GitHub-Hook-ID": str(self.hook_id if self.hook_id is not None else stable_id(url, "hook")),
            "X-GitHub-Hook-Installation-Target-Type": "repository",
            "X-GitHub-Hook-Installation-Target-ID": str(repo.get("id", "")),
            **ctx.render(dict(self.headers)),
        }
        secret = self.secret if self.secret is not None else ctx.integrations.github.webhook_secret
        if secret:
            headers["X-Hub-Signature"] = "sha1=" + hmac_hex(secret, body, "sha1")
            headers["X-Hub-Signature-256"] = github_signature(secret, body)
        return PreparedRequest(method="POST", url=url, headers=headers, body=body, timeout_s=self.timeout)

    async def run(self, ctx: ProbeContext) -> FireResult:
        """Deliver once; outputs name the delivery (id, event, action, repo, number, head sha)."""
        prepared = self.prepare(ctx)
        payload = jsonlib.loads(prepared.body or b"{}")
        response = await send_prepared(ctx, prepared, span_name=f"github webhook {self.event}")
        outputs = {
            "delivery_id": prepared.headers["X-GitHub-Delivery"], "event": self.event,
            "action": payload.get("action"), "repo": (payload.get("repository") or {}).get("full_name"),
            "number": payload.get("number", (payload.get("issue") or {}).get("number")),
            "head_sha": sha(ctx.run_id, "head"),
        }
        return FireResult(response=response, outputs=outputs)


class GithubWebhookProbe(ProbeSpec):
    """Deliver a GitHub event (pull_request, issue_comment, push) to a webhook receiver."""

    kind: Literal["github_webhook"] = "github_webhook"
    delivery: GithubDelivery = Field(description="The event to deliver.")

    async def fire(self, ctx: ProbeContext) -> FireResult:
        return await self.delivery.run(ctx)
