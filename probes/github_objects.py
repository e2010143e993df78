"""The GitHub objects a webhook delivery embeds (user, repository, pull request, issue, comment), complete.

Every field the published webhook schemas require is present (npm ``@octokit/webhooks-schemas``, checked
in tests/watchers/test_github_schemas.py), with the URL templates GitHub sends (docs.github.com
"Webhook events and payloads"; the payload examples of github.com/octokit/webhooks). Values agree with
each other: URLs derive from the repository's full name and the API root (``integrations.github.base_url``:
api.github.com → github.com pages, GitHub Enterprise ``https://HOST/api/v3`` → ``https://HOST``), node ids
encode the object's type and id like GitHub's legacy global ids, timestamps are ISO-8601 UTC.

User objects carry no ``user_view_type``: github.com added it in 2024, the schemas list every user
property and forbid others, and a bot that validates deliveries with them would reject it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit


@dataclass(frozen=True)
class Site:
    """Where a delivery's URLs point: the REST API root, the web root and the avatar host."""

    api: str
    web: str
    avatars: str

    @classmethod
    def from_api(cls, base_url: str) -> Site:
        """``https://api.github.com`` → github.com; ``https://HOST/api/v3`` → HOST; anything else serves all."""
        api = base_url.rstrip("/")
        if urlsplit(api).netloc == "api.github.com":
            return cls(api, "https://github.com", "https://avatars.githubusercontent.com")
        if api.endswith("/api/v3"):
            web = api.removesuffix("/api/v3")
            return cls(api, web, f"{web}/avatars")
        return cls(api, api, f"{api}/avatars")

    @property
    def host(self) -> str:
        return urlsplit(self.web).netloc


def iso(moment: datetime) -> str:
    """GitHub's timestamp form: ``2024-05-15T15:20:33Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_id(kind: str, ident: int) -> str:
    """A legacy global node id: base64 of ``0<len>:<Type><id>`` (``MDQ6VXNlcjE=`` is User 1)."""
    return base64.b64encode(f"0{len(kind)}:{kind}{ident}".encode()).decode()


def stable_id(seed: str, salt: str, digits: int = 9) -> int:
    """A positive integer id derived from ``seed`` (GitHub ids are 9–10 digits)."""
    floor: int = 10 ** (digits - 1)
    value = int(hashlib.sha256(f"{seed}:{salt}".encode()).hexdigest(), 16)
    return value % (9 * floor) + floor


def user(site: Site, login: str) -> dict[str, Any]:
    uid = stable_id(login, "user", 8)
    api = f"{site.api}/users/{quote(login)}"  # users/review-bot%5Bbot%5D, as GitHub writes it
    return {
        "login": login, "id": uid, "node_id": node_id("Bot" if login.endswith("[bot]") else "User", uid),
        "avatar_url": f"{site.avatars}/u/{uid}?v=4", "gravatar_id": "", "url": api,
        "html_url": f"{site.web}/apps/{login.removesuffix('[bot]')}" if login.endswith("[bot]") else f"{site.web}/{login}",
        "followers_url": f"{api}/followers", "following_url": f"{api}/following{{/other_user}}",
        "gists_url": f"{api}/gists{{/gist_id}}", "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api}/subscriptions", "organizations_url": f"{api}/orgs",
        "repos_url": f"{api}/repos", "events_url": f"{api}/events{{/privacy}}",
        "received_events_url": f"{api}/received_events",
        "type": "Bot" if login.endswith("[bot]") else "User", "site_admin": False,
    }


def repository(site: Site, full_name: str, now: datetime, *, epoch_times: bool = False) -> dict[str, Any]:
    """The repository object; ``epoch_times``: ``created_at``/``pushed_at`` as integers, as push events carry them."""
    owner, _, name = full_name.partition("/")
    rid = stable_id(full_name, "repo")
    api = f"{site.api}/repos/{full_name}"
    html = f"{site.web}/{full_name}"
    created = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    templated = {
        "keys": "keys{/key_id}", "collaborators": "collaborators{/collaborator}",
        "issue_events": "issues/events{/number}", "assignees": "assignees{/user}", "branches": "branches{/branch}",
        "blobs": "git/blobs{/sha}", "git_tags": "git/tags{/sha}", "git_refs": "git/refs{/sha}",
        "trees": "git/trees{/sha}", "statuses": "statuses/{sha}", "commits": "commits{/sha}",
        "git_commits": "git/commits{/sha}", "comments": "comments{/number}", "issue_comment": "issues/comments{/number}",
        "contents": "contents/{+path}", "compare": "compare/{base}...{head}", "archive": "{archive_format}{/ref}",
        "issues": "issues{/number}", "pulls": "pulls{/number}", "milestones": "milestones{/number}",
        "notifications": "notifications{?since,all,participating}", "labels": "labels{/name}",
        "releases": "releases{/id}",
    }
    plain = ("forks", "teams", "hooks", "events", "tags", "languages", "stargazers", "contributors", "subscribers",
             "subscription", "merges", "downloads", "deployments")
    return {
        "id": rid, "node_id": node_id("Repository", rid), "name": name, "full_name": full_name, "private": True,
        "owner": user(site, owner), "html_url": html, "description": None, "fork": False, "url": api,
        **{f"{k}_url": f"{api}/{path}" for k, path in templated.items()},
        **{f"{k}_url": f"{api}/{k}" for k in plain},
        "created_at": int(created.timestamp()) if epoch_times else iso(created),
        "updated_at": iso(now), "pushed_at": int(now.timestamp()) if epoch_times else iso(now),
        "git_url": f"git://{site.host}/{full_name}.git", "ssh_url": f"git@{site.host}:{full_name}.git",
        "clone_url": f"{html}.git", "svn_url": html, "homepage": None, "size": 1024,
        "stargazers_count": 0, "watchers_count": 0, "language": "Python", "has_issues": True, "has_projects": True,
        "has_downloads": True, "has_wiki": False, "has_pages": False, "has_discussions": False, "forks_count": 0,
        "mirror_url": None, "archived": False, "disabled": False, "open_issues_count": 1, "license": None,
        "allow_forking": False, "is_template": False, "web_commit_signoff_required": False, "topics": [],
        "visibility": "private", "forks": 0, "open_issues": 1, "watchers": 0, "default_branch": "main",
        "custom_properties": {},
    }


def reactions(url: str) -> dict[str, Any]:
    return {"url": f"{url}/reactions", "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0, "confused": 0,
            "heart": 0, "rocket": 0, "eyes": 0}


@dataclass(frozen=True)
class PullState:
    """What a pull request is at delivery time."""

    seed: str
    full_name: str
    number: int
    author: str
    head_ref: str
    head_sha: str
    base_sha: str
    created: datetime
    now: datetime
    closed: bool = False


def _branch(site: Site, pr: PullState, ref: str, sha: str) -> dict[str, Any]:
    owner = pr.full_name.partition("/")[0]
    return {"label": f"{owner}:{ref}", "ref": ref, "sha": sha, "user": user(site, owner),
            "repo": repository(site, pr.full_name, pr.now)}


def simple_pull_request(site: Site, pr: PullState) -> dict[str, Any]:
    """The pull request as review and review-comment events embed it (no merge/diff statistics)."""
    api = f"{site.api}/repos/{pr.full_name}"
    html = f"{site.web}/{pr.full_name}/pull/{pr.number}"
    pid = stable_id(pr.seed, "pr", 10)
    links = {"self": f"{api}/pulls/{pr.number}", "html": html, "issue": f"{api}/issues/{pr.number}",
             "comments": f"{api}/issues/{pr.number}/comments", "review_comments": f"{api}/pulls/{pr.number}/comments",
             "review_comment": f"{api}/pulls/comments{{/number}}", "commits": f"{api}/pulls/{pr.number}/commits",
             "statuses": f"{api}/statuses/{pr.head_sha}"}
    return {
        "url": links["self"], "id": pid, "node_id": node_id("PullRequest", pid), "html_url": html,
        "diff_url": f"{html}.diff", "patch_url": f"{html}.patch", "issue_url": links["issue"], "number": pr.number,
        "state": "closed" if pr.closed else "open", "locked": False, "title": "tracecanary synthetic change",
        "user": user(site, pr.author), "body": f"Synthetic pull request from tracecanary run {pr.seed}.",
        "created_at": iso(pr.created), "updated_at": iso(pr.now), "closed_at": iso(pr.now) if pr.closed else None,
        "merged_at": None, "merge_commit_sha": None, "assignee": None, "assignees": [], "requested_reviewers": [],
        "requested_teams": [], "labels": [], "milestone": None, "draft": False,
        "commits_url": links["commits"], "review_comments_url": links["review_comments"],
        "review_comment_url": links["review_comment"], "comments_url": links["comments"],
        "statuses_url": links["statuses"],
        "head": _branch(site, pr, pr.head_ref, pr.head_sha), "base": _branch(site, pr, "main", pr.base_sha),
        "_links": {k: {"href": v} for k, v in links.items()},
        "author_association": "MEMBER", "auto_merge": None, "active_lock_reason": None,
    }


def pull_request(site: Site, pr: PullState) -> dict[str, Any]:
    """The full pull request of ``pull_request`` events (merge state and diff statistics included)."""
    return {
        **simple_pull_request(site, pr), "merged": False, "mergeable": None, "rebaseable": None,
        "mergeable_state": "unknown", "merged_by": None, "comments": 0, "review_comments": 0,
        "maintainer_can_modify": False, "commits": 1, "additions": 3, "deletions": 1, "changed_files": 1,
    }


def pull_issue(site: Site, pr: PullState, comments: int) -> dict[str, Any]:
    """The issue side of a pull request, as ``issue_comment`` events embed it."""
    api = f"{site.api}/repos/{pr.full_name}"
    html = f"{site.web}/{pr.full_name}/pull/{pr.number}"
    url = f"{api}/issues/{pr.number}"
    iid = stable_id(pr.seed, "issue", 10)
    return {
        "url": url, "repository_url": api, "labels_url": f"{url}/labels{{/name}}", "comments_url": f"{url}/comments",
        "events_url": f"{url}/events", "html_url": html, "id": iid, "node_id": node_id("Issue", iid),
        "number": pr.number, "title": "tracecanary synthetic change", "user": user(site, pr.author), "labels": [],
        "state": "closed" if pr.closed else "open", "locked": False, "assignee": None, "assignees": [],
        "milestone": None, "comments": comments, "created_at": iso(pr.created), "updated_at": iso(pr.now),
        "closed_at": iso(pr.now) if pr.closed else None, "author_association": "MEMBER", "active_lock_reason": None,
        "draft": False,
        "pull_request": {"url": f"{api}/pulls/{pr.number}", "html_url": html, "diff_url": f"{html}.diff",
                         "patch_url": f"{html}.patch", "merged_at": None},
        "body": f"Synthetic pull request from tracecanary run {pr.seed}.", "reactions": reactions(url),
        "timeline_url": f"{url}/timeline", "performed_via_github_app": None, "state_reason": None,
    }


def issue_comment(site: Site, pr: PullState, commenter: str, body: str) -> dict[str, Any]:
    api = f"{site.api}/repos/{pr.full_name}"
    cid = stable_id(pr.seed, "comment", 10)
    url = f"{api}/issues/comments/{cid}"
    return {
        "url": url, "html_url": f"{site.web}/{pr.full_name}/pull/{pr.number}#issuecomment-{cid}",
        "issue_url": f"{api}/issues/{pr.number}", "id": cid, "node_id": node_id("IssueComment", cid),
        "user": user(site, commenter), "created_at": iso(pr.now), "updated_at": iso(pr.now),
        "author_association": "MEMBER", "body": body, "reactions": reactions(url), "performed_via_github_app": None,
    }


def commit(site: Site, full_name: str, sha: str, tree: str, author: str, message: str, now: datetime) -> dict[str, Any]:
    """A commit of a push event (``timestamp`` keeps the committer's UTC offset, as GitHub sends it)."""
    person = {"name": author, "email": f"{author}@users.noreply.{site.host}", "username": author}
    return {
        "id": sha, "tree_id": tree, "distinct": True, "message": message,
        "timestamp": now.isoformat(timespec="seconds"), "url": f"{site.web}/{full_name}/commit/{sha}",
        "author": person, "committer": person, "added": [], "removed": [], "modified": ["README.md"],
    }
