"""Realistic GitHub webhook payloads (``pull_request``, ``issue_comment``, ``push``) for the github probe.

Shapes follow the payloads GitHub delivers (REST object fields, ISO timestamps, 40-hex SHAs);
ids and SHAs are derived from the run id so a delivery is reproducible from its run.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

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


def stable_id(seed: str, salt: str, digits: int = 9) -> int:
    """A positive integer id derived from ``seed`` (GitHub ids are 9–10 digits)."""
    floor: int = 10 ** (digits - 1)
    value = int(hashlib.sha256(f"{seed}:{salt}".encode()).hexdigest(), 16)
    return value % (9 * floor) + floor


def _iso(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def user(login: str) -> dict[str, Any]:
    uid = stable_id(login, "user", 8)
    api = f"https://api.github.com/users/{login}"
    return {
        "login": login, "id": uid, "node_id": f"MDQ6VXNlcj{uid}", "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
        "gravatar_id": "", "url": api, "html_url": f"https://github.com/{login}", "followers_url": f"{api}/followers",
        "repos_url": f"{api}/repos", "type": "User", "user_view_type": "public", "site_admin": False,
    }


def repository(full_name: str, now: datetime) -> dict[str, Any]:
    owner, _, name = full_name.partition("/")
    rid = stable_id(full_name, "repo")
    api = f"https://api.github.com/repos/{full_name}"
    return {
        "id": rid, "node_id": f"R_kgDO{rid}", "name": name, "full_name": full_name, "private": True,
        "owner": user(owner), "html_url": f"https://github.com/{full_name}", "description": None, "fork": False,
        "url": api, "pulls_url": f"{api}/pulls{{/number}}", "issues_url": f"{api}/issues{{/number}}",
        "git_url": f"git://github.com/{full_name}.git", "ssh_url": f"git@github.com:{full_name}.git",
        "clone_url": f"https://github.com/{full_name}.git", "created_at": "2024-01-02T03:04:05Z",
        "updated_at": _iso(now), "pushed_at": _iso(now), "size": 1024, "stargazers_count": 0,
        "language": "Python", "has_issues": True, "archived": False, "disabled": False, "open_issues_count": 1,
        "visibility": "private", "forks": 0, "open_issues": 1, "watchers": 0, "default_branch": "main",
    }


def _branch(full_name: str, ref: str, head_sha: str, now: datetime) -> dict[str, Any]:
    owner = full_name.partition("/")[0]
    return {"label": f"{owner}:{ref}", "ref": ref, "sha": head_sha, "user": user(owner),
            "repo": repository(full_name, now)}


def pull_request(seed: str, full_name: str, number: int, action: str, sender: str, now: datetime) -> dict[str, Any]:
    api = f"https://api.github.com/repos/{full_name}"
    head_sha = sha(seed, "head")
    pr = {
        "url": f"{api}/pulls/{number}", "id": stable_id(seed, "pr", 10), "node_id": f"PR_kwDO{stable_id(seed, 'n')}",
        "html_url": f"https://github.com/{full_name}/pull/{number}", "diff_url": f"https://github.com/{full_name}/pull/{number}.diff",
        "issue_url": f"{api}/issues/{number}", "number": number, "state": "closed" if action == "closed" else "open",
        "locked": False, "title": "tracecanary synthetic change", "user": user(sender),
        "body": f"Synthetic pull request from tracecanary run {seed}.", "created_at": _iso(now), "updated_at": _iso(now),
        "closed_at": _iso(now) if action == "closed" else None, "merged_at": None, "merge_commit_sha": None,
        "assignees": [], "requested_reviewers": [], "labels": [], "draft": False,
        "commits_url": f"{api}/pulls/{number}/commits", "comments_url": f"{api}/issues/{number}/comments",
        "statuses_url": f"{api}/statuses/{head_sha}",
        "head": _branch(full_name, f"tracecanary/{seed[:8]}", head_sha, now),
        "base": _branch(full_name, "main", sha(seed, "base"), now),
        "author_association": "MEMBER", "auto_merge": None, "merged": False, "mergeable": None,
        "comments": 0, "review_comments": 0, "commits": 1, "additions": 3, "deletions": 1, "changed_files": 1,
    }
    return pr


def build_payload(
    event: str, *, seed: str, repo: str, number: int, action: str | None, sender: str, comment: str,
    ref: str, now: datetime,
) -> dict[str, Any]:
    """The payload GitHub would deliver for ``event``; ``seed`` (the run id) fixes ids and SHAs."""
    base = {"repository": repository(repo, now), "sender": user(sender)}
    if event == "pull_request":
        act = action or DEFAULT_ACTION[event]
        payload: dict[str, Any] = {"action": act, "number": number,
                                   "pull_request": pull_request(seed, repo, number, act, sender, now), **base}
        if act == "synchronize":
            payload["before"], payload["after"] = sha(seed, "before"), sha(seed, "head")
        return payload
    if event == "issue_comment":
        pr = pull_request(seed, repo, number, "opened", sender, now)
        issue = {k: pr[k] for k in ("url", "html_url", "number", "state", "locked", "title", "user", "body",
                                    "created_at", "updated_at", "labels", "assignees", "author_association")}
        issue.update(id=stable_id(seed, "issue", 10), node_id=f"PR_kwDO{stable_id(seed, 'n')}", comments=1,
                     pull_request={"url": pr["url"], "html_url": pr["html_url"], "diff_url": pr["diff_url"]})
        cid = stable_id(seed, "comment", 10)
        api = f"https://api.github.com/repos/{repo}"
        return {"action": action or DEFAULT_ACTION[event], "issue": issue, "comment": {
            "url": f"{api}/issues/comments/{cid}", "html_url": f"{pr['html_url']}#issuecomment-{cid}",
            "issue_url": f"{api}/issues/{number}", "id": cid, "node_id": f"IC_kwDO{cid}", "user": user(sender),
            "created_at": _iso(now), "updated_at": _iso(now), "author_association": "MEMBER", "body": comment,
        }, **base}
    before, after = sha(seed, "before"), sha(seed, "head")
    commit = {
        "id": after, "tree_id": sha(seed, "tree"), "distinct": True, "message": f"tracecanary synthetic push {seed}",
        "timestamp": now.astimezone(UTC).isoformat(timespec="seconds"),
        "url": f"https://github.com/{repo}/commit/{after}",
        "author": {"name": sender, "email": f"{sender}@users.noreply.github.com", "username": sender},
        "committer": {"name": sender, "email": f"{sender}@users.noreply.github.com", "username": sender},
        "added": [], "removed": [], "modified": ["README.md"],
    }
    return {
        "ref": ref, "before": before, "after": after, "created": False, "deleted": False, "forced": False,
        "base_ref": None, "compare": f"https://github.com/{repo}/compare/{before[:12]}...{after[:12]}",
        "commits": [commit], "head_commit": commit,
        "pusher": {"name": sender, "email": f"{sender}@users.noreply.github.com"}, **base,
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
