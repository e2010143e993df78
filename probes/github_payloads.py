"""Complete GitHub webhook payloads (``pull_request``, ``issue_comment``, ``push``) for the github probe.

Each validates against GitHub's published webhook schemas (``@octokit/webhooks-schemas``; the objects
are built in ``github_objects.py``); ids and SHAs are derived from the run id so a delivery is
reproducible from its run.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from tracecanary.probes.github_objects import (
    PullState,
    Site,
    commit,
    issue_comment,
    pull_issue,
    pull_request,
    repository,
    stable_id,
    user,
)

__all__ = ["ACTIONS", "REQUIRED", "Site", "build_payload", "deep_merge", "missing_required", "sha", "stable_id"]

REQUIRED: dict[str, tuple[str, ...]] = {
    "pull_request": ("action", "number", "pull_request", "repository", "sender"),
    "issue_comment": ("action", "issue", "comment", "repository", "sender"),
    "push": ("ref", "before", "after", "repository", "pusher", "sender"),
}
"""Top-level fields GitHub always sends for each event (a payload missing one is refused)."""

ACTIONS: dict[str, tuple[str, ...]] = {
    "pull_request": ("opened", "synchronize", "reopened", "closed", "edited", "ready_for_review"),
    "issue_comment": ("created", "edited", "deleted"),
    "push": (),
}
DEFAULT_ACTION = {"pull_request": "opened", "issue_comment": "created"}


def sha(seed: str, salt: str) -> str:
    """A 40-hex commit-like SHA derived from ``seed``."""
    return hashlib.sha1(f"{seed}:{salt}".encode(), usedforsecurity=False).hexdigest()


def _pull(seed: str, repo: str, number: int, sender: str, action: str, now: datetime) -> PullState:
    # a pull request opened by this delivery was created now; any other action acts on an older one
    created = now if action == "opened" else now - timedelta(minutes=10)
    return PullState(seed=seed, full_name=repo, number=number, author=sender, head_ref=f"tracecanary/{seed[:8]}",
                     head_sha=sha(seed, "head"), base_sha=sha(seed, "base"), created=created, now=now,
                     closed=action == "closed")


def build_payload(
    event: str, *, seed: str, repo: str, number: int, action: str | None, sender: str, comment: str,
    ref: str, now: datetime, site: Site | None = None,
) -> dict[str, Any]:
    """The payload GitHub would deliver for ``event``; ``seed`` (the run id) fixes ids and SHAs, ``site``
    (default github.com) the URLs."""
    site = site or Site.from_api("https://api.github.com")
    now = now.astimezone(UTC).replace(microsecond=0)
    if event == "push":
        return _push(site, seed, repo, sender, ref, now)
    act = action or DEFAULT_ACTION[event]
    base = {"repository": repository(site, repo, now), "sender": user(site, sender)}
    if event == "pull_request":
        pr = _pull(seed, repo, number, sender, act, now)
        payload: dict[str, Any] = {"action": act, "number": number}
        if act == "synchronize":
            payload["before"], payload["after"] = sha(seed, "before"), pr.head_sha
        if act == "edited":
            payload["changes"] = {"title": {"from": "tracecanary synthetic change (draft title)"}}
        return {**payload, "pull_request": pull_request(site, pr), **base}
    pr = _pull(seed, repo, number, sender, "commented", now)
    payload = {"action": act}
    if act == "edited":
        payload["changes"] = {"body": {"from": f"{comment} (before the edit)"}}
    return {**payload, "issue": pull_issue(site, pr, comments=0 if act == "deleted" else 1),
            "comment": issue_comment(site, pr, sender, comment), **base}


def _push(site: Site, seed: str, repo: str, sender: str, ref: str, now: datetime) -> dict[str, Any]:
    before, after = sha(seed, "before"), sha(seed, "head")
    head = commit(site, repo, after, sha(seed, "tree"), sender, f"tracecanary synthetic push {seed}", now)
    return {
        "ref": ref, "before": before, "after": after, "repository": repository(site, repo, now, epoch_times=True),
        "pusher": {"name": sender, "email": f"{sender}@users.noreply.{site.host}"}, "sender": user(site, sender),
        "created": False, "deleted": False, "forced": False, "base_ref": None,
        "compare": f"{site.web}/{repo}/compare/{before[:12]}...{after[:12]}",
        "commits": [head], "head_commit": head,
    }


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` merged into ``base`` recursively; an override of ``None`` removes the key."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def missing_required(event: str, payload: dict[str, Any]) -> list[str]:
    """Required top-level fields absent from ``payload``."""
    return [k for k in REQUIRED[event] if k not in payload]
