"""The objects the GitHub emulator returns and delivers: users, repositories, pull requests, issues, reviews.

Complete as GitHub sends them: every field the published webhook schemas require is present (npm
``@octokit/webhooks-schemas``, checked by tests/watchers/test_github_schemas.py) with GitHub's URL templates
(docs.github.com/rest and "Webhook events and payloads"; the payload examples of github.com/octokit/webhooks).
URLs derive from the emulator's base URL and the repository's full name; node ids encode type and id like
GitHub's legacy global ids; timestamps are ISO-8601 UTC.

Casing differs by path, as on GitHub: the REST API returns a review's ``state`` uppercase (``APPROVED``,
``CHANGES_REQUESTED``, ``COMMENTED``, ``DISMISSED``, ``PENDING``; docs.github.com/rest/pulls/reviews), the
``pull_request_review`` webhook lowercase (``approved``, ``changes_requested``, ``commented``, ``dismissed``;
the schema's ``pull-request-review.state`` enum and docs.github.com/webhooks/webhook-events-and-payloads).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

REPO_CREATED = "2024-01-02T03:04:05Z"

SIMPLE_PULL_KEYS = (
    "url", "id", "node_id", "html_url", "diff_url", "patch_url", "issue_url", "number", "state", "locked", "title",
    "user", "body", "created_at", "updated_at", "closed_at", "merged_at", "merge_commit_sha", "assignee",
    "assignees", "requested_reviewers", "requested_teams", "labels", "milestone", "draft", "commits_url",
    "review_comments_url", "review_comment_url", "comments_url", "statuses_url", "head", "base", "_links",
    "author_association", "auto_merge", "active_lock_reason",
)
"""The pull request as ``pull_request_review`` and ``pull_request_review_comment`` events embed it."""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_id(kind: str, ident: int) -> str:
    """A legacy global node id: base64 of ``0<len>:<Type><id>`` (``MDQ6VXNlcjE=`` is User 1)."""
    return base64.b64encode(f"0{len(kind)}:{kind}{ident}".encode()).decode()


def reactions(url: str) -> dict[str, Any]:
    return {"url": f"{url}/reactions", "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0, "confused": 0,
            "heart": 0, "rocket": 0, "eyes": 0}


def webhook_review(review: dict[str, Any]) -> dict[str, Any]:
    """A REST review as the ``pull_request_review`` webhook carries it: ``state`` lowercase."""
    return {**review, "state": str(review["state"]).lower()}


def simple_pull(pr: dict[str, Any]) -> dict[str, Any]:
    return {k: pr[k] for k in SIMPLE_PULL_KEYS}


@dataclass
class Repo:
    id: int
    owner: str
    name: str
    refs: dict[str, str] = field(default_factory=dict)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    review_comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    check_runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


class GitHubObjects:
    """Builds objects for the emulator (which sets ``base_url`` once it listens, and ``_users``)."""

    base_url: str
    _users: dict[str, int]

    def api(self, repo: Repo) -> str:
        return f"{self.base_url}/repos/{repo.full_name}"

    def web(self, repo: Repo) -> str:
        return f"{self.base_url}/{repo.full_name}"

    def user(self, login: str) -> dict[str, Any]:
        uid = self._users.setdefault(login, 5000 + len(self._users))
        api = f"{self.base_url}/users/{quote(login)}"  # users/review-bot%5Bbot%5D, as GitHub writes it
        bot = login.endswith("[bot]")
        return {
            "login": login, "id": uid, "node_id": node_id("Bot" if bot else "User", uid),
            "avatar_url": f"{self.base_url}/avatars/u/{uid}?v=4", "gravatar_id": "", "url": api,
            "html_url": f"{self.base_url}/apps/{login.removesuffix('[bot]')}" if bot else f"{self.base_url}/{login}",
            "followers_url": f"{api}/followers", "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}", "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions", "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}", "received_events_url": f"{api}/received_events",
            "type": "Bot" if bot else "User", "site_admin": False,
        }

    def repository(self, repo: Repo) -> dict[str, Any]:
        api, html = self.api(repo), self.web(repo)
        host = self.base_url.split("://", 1)[-1]
        templated = {
            "keys": "keys{/key_id}", "collaborators": "collaborators{/collaborator}",
            "issue_events": "issues/events{/number}", "assignees": "assignees{/user}", "branches": "branches{/branch}",
            "blobs": "git/blobs{/sha}", "git_tags": "git/tags{/sha}", "git_refs": "git/refs{/sha}",
            "trees": "git/trees{/sha}", "statuses": "statuses/{sha}", "commits": "commits{/sha}",
            "git_commits": "git/commits{/sha}", "comments": "comments{/number}",
            "issue_comment": "issues/comments{/number}", "contents": "contents/{+path}",
            "compare": "compare/{base}...{head}", "archive": "{archive_format}{/ref}", "issues": "issues{/number}",
            "pulls": "pulls{/number}", "milestones": "milestones{/number}",
            "notifications": "notifications{?since,all,participating}", "labels": "labels{/name}",
            "releases": "releases{/id}",
        }
        plain = ("forks", "teams", "hooks", "events", "tags", "languages", "stargazers", "contributors",
                 "subscribers", "subscription", "merges", "downloads", "deployments")
        open_issues = sum(1 for i in repo.issues.values() if i.get("state") == "open")
        return {
            "id": repo.id, "node_id": node_id("Repository", repo.id), "name": repo.name, "full_name": repo.full_name,
            "private": False, "owner": self.user(repo.owner), "html_url": html, "description": None, "fork": False,
            "url": api, **{f"{k}_url": f"{api}/{path}" for k, path in templated.items()},
            **{f"{k}_url": f"{api}/{k}" for k in plain},
            "created_at": REPO_CREATED, "updated_at": REPO_CREATED, "pushed_at": REPO_CREATED,
            "git_url": f"git://{host}/{repo.full_name}.git", "ssh_url": f"git@{host}:{repo.full_name}.git",
            "clone_url": f"{html}.git", "svn_url": html, "homepage": None, "size": 0, "stargazers_count": 0,
            "watchers_count": 0, "language": None, "has_issues": True, "has_projects": True, "has_downloads": True,
            "has_wiki": True, "has_pages": False, "has_discussions": False, "forks_count": 0, "mirror_url": None,
            "archived": False, "disabled": False, "open_issues_count": open_issues, "license": None,
            "allow_forking": True, "is_template": False, "web_commit_signoff_required": False, "topics": [],
            "visibility": "public", "forks": 0, "open_issues": open_issues, "watchers": 0, "default_branch": "main",
            "custom_properties": {},
        }

    def pull(self, repo: Repo, n: int, pid: int, login: str, title: str, body: str | None, draft: bool,
             head: tuple[str, str], base: tuple[str, str]) -> dict[str, Any]:
        """A new open pull request as GET /repos/{o}/{r}/pulls/{n} returns it (``head``/``base``: ref, sha)."""
        api, html = self.api(repo), f"{self.web(repo)}/pull/{n}"
        links = {"self": f"{api}/pulls/{n}", "html": html, "issue": f"{api}/issues/{n}",
                 "comments": f"{api}/issues/{n}/comments", "review_comments": f"{api}/pulls/{n}/comments",
                 "review_comment": f"{api}/pulls/comments{{/number}}", "commits": f"{api}/pulls/{n}/commits",
                 "statuses": f"{api}/statuses/{head[1]}"}
        stamp = now_iso()
        return {
            "url": links["self"], "id": pid, "node_id": node_id("PullRequest", pid), "html_url": html,
            "diff_url": f"{html}.diff", "patch_url": f"{html}.patch", "issue_url": links["issue"], "number": n,
            "state": "open", "locked": False, "title": title, "user": self.user(login), "body": body,
            "created_at": stamp, "updated_at": stamp, "closed_at": None, "merged_at": None, "merge_commit_sha": None,
            "assignee": None, "assignees": [], "requested_reviewers": [], "requested_teams": [], "labels": [],
            "milestone": None, "draft": draft, "commits_url": links["commits"],
            "review_comments_url": links["review_comments"], "review_comment_url": links["review_comment"],
            "comments_url": links["comments"], "statuses_url": links["statuses"],
            "head": self._branch(repo, *head), "base": self._branch(repo, *base),
            "_links": {k: {"href": v} for k, v in links.items()}, "author_association": "COLLABORATOR",
            "auto_merge": None, "active_lock_reason": None, "merged": False, "mergeable": True, "rebaseable": True,
            "mergeable_state": "clean", "merged_by": None, "comments": 0, "review_comments": 0,
            "maintainer_can_modify": False, "commits": 1, "additions": 1, "deletions": 0, "changed_files": 1,
        }

    def _branch(self, repo: Repo, ref: str, sha: str) -> dict[str, Any]:
        return {"label": f"{repo.owner}:{ref}", "ref": ref, "sha": sha, "user": self.user(repo.owner),
                "repo": self.repository(repo)}

    def issue_view(self, repo: Repo, n: int) -> dict[str, Any]:
        """The issue side of pull request ``n``, as GET /issues/{n} and ``issue_comment`` events show it."""
        pr = repo.issues[n]
        url = f"{self.api(repo)}/issues/{n}"
        return {
            "url": url, "repository_url": self.api(repo), "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments", "events_url": f"{url}/events", "html_url": pr["html_url"],
            "id": pr["id"] + 1, "node_id": node_id("Issue", pr["id"] + 1), "number": n, "title": pr["title"],
            "user": pr["user"], "labels": [], "state": pr["state"], "locked": False, "assignee": None,
            "assignees": [], "milestone": None, "comments": len(repo.comments.get(n, [])),
            "created_at": pr["created_at"], "updated_at": pr["updated_at"], "closed_at": pr["closed_at"],
            "author_association": pr["author_association"], "active_lock_reason": None, "draft": pr["draft"],
            "pull_request": {"url": pr["url"], "html_url": pr["html_url"], "diff_url": pr["diff_url"],
                             "patch_url": pr["patch_url"], "merged_at": pr["merged_at"]},
            "body": pr["body"], "reactions": reactions(url), "timeline_url": f"{url}/timeline",
            "performed_via_github_app": None, "state_reason": None,
        }

    def github_app(self, login: str) -> dict[str, Any]:
        """The GitHub App behind a bot login (``review-bot[bot]`` → app ``review-bot``)."""
        slug = login.removesuffix("[bot]")
        aid = 900 + self.user(login)["id"] % 100
        return {
            "id": aid, "slug": slug, "node_id": node_id("App", aid), "owner": self.user(login), "name": slug,
            "description": None, "external_url": f"{self.base_url}/apps/{slug}",
            "html_url": f"{self.base_url}/apps/{slug}", "created_at": REPO_CREATED, "updated_at": REPO_CREATED,
            "permissions": {"checks": "write", "issues": "write", "pull_requests": "write", "metadata": "read"},
            "events": ["pull_request", "issue_comment"],
        }

    def check_suite(self, repo: Repo, run: dict[str, Any], login: str) -> dict[str, Any]:
        """The full check suite a ``check_run`` webhook embeds (REST check runs carry only its id)."""
        sid = run["check_suite"]["id"]
        head = next((p["head"]["ref"] for p in run["pull_requests"]), None)
        return {
            "id": sid, "node_id": node_id("CheckSuite", sid), "head_branch": head, "head_sha": run["head_sha"],
            "status": run["status"] if run["status"] != "waiting" else "queued", "conclusion": run["conclusion"],
            "url": f"{self.api(repo)}/check-suites/{sid}", "before": None, "after": run["head_sha"],
            "pull_requests": run["pull_requests"], "app": self.github_app(login),
            "created_at": run["started_at"], "updated_at": run["completed_at"] or run["started_at"],
        }
