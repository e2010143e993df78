"""REST resources of the GitHub emulator: repos, comments, reviews, pulls, check runs, git refs.

Bodies follow docs.github.com/rest (field names, ``201`` on create, ``204`` on ref delete) and
errors follow GitHub's shape: ``{"message", "errors"?, "documentation_url", "status"}``.
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from tracecanary.demo.emulators.github_objects import (
    GitHubObjects,
    Repo,
    node_id,
    reactions,
    simple_pull,
    webhook_review,
)
from tracecanary.demo.emulators.github_objects import now_iso as _now

__all__ = ["DOCS", "LOGIN", "GitHubError", "GitHubRestMixin", "Repo", "error_body"]

DOCS = "https://docs.github.com/rest"
LOGIN = web.RequestKey("login", str)


def error_body(status: int, message: str, doc: str = DOCS, errors: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    body["documentation_url"] = doc
    body["status"] = str(status)
    return body


class GitHubError(Exception):
    def __init__(self, status: int, message: str, doc: str = DOCS, errors: list[Any] | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(status, message, doc, errors)



class GitHubRestMixin(GitHubObjects):
    """Request handlers of ``GitHubEmulator`` (which sets the attributes declared here)."""

    repos: dict[str, Repo]
    _ids: int

    def emit(self, event: str, repo: Repo, payload: dict[str, Any], sender: str) -> None:
        raise NotImplementedError

    def _repo(self, request: web.Request) -> Repo:
        full = f"{request.match_info['owner']}/{request.match_info['repo']}".lower()
        repo = self.repos.get(full)
        if repo is None:
            raise GitHubError(404, "Not Found")
        return repo

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as e:
            raise GitHubError(400, "Problems parsing JSON") from e
        if not isinstance(body, dict):
            raise GitHubError(400, "Problems parsing JSON")
        return body

    def _number(self, request: web.Request, repo: Repo, pull: bool) -> int:
        try:
            n = int(request.match_info["n"])
        except ValueError as e:
            raise GitHubError(404, "Not Found") from e
        issue = repo.issues.get(n)
        if issue is None or (pull and "pull_request" not in issue and "head" not in issue):
            raise GitHubError(404, "Not Found")
        return n

    def _paginate(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        try:
            per_page = max(1, min(100, int(request.query.get("per_page", "30"))))
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            per_page, page = 30, 1
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page: page * per_page]
        links = []

        def url(p: int) -> str:
            return str(request.url.update_query({"per_page": str(per_page), "page": str(p)}))

        if page < last:
            links += [f'<{url(page + 1)}>; rel="next"', f'<{url(last)}>; rel="last"']
        if page > 1:
            links = [f'<{url(page - 1)}>; rel="prev"', f'<{url(1)}>; rel="first"', *links]
        headers = {"Link": ", ".join(links)} if links else {}
        return web.json_response(chunk, headers=headers)

    async def _get_repo(self, request: web.Request) -> web.Response:
        return web.json_response(self.repository(self._repo(request)))

    def _list(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            repo = self._repo(request)
            n = self._number(request, repo, pull=kind != "comments")
            return self._paginate(request, getattr(repo, kind).get(n, []))
        return handler

    def _login(self, request: web.Request) -> str:
        login = request.get(LOGIN)
        if not login:
            raise GitHubError(401, "Requires authentication")
        return str(login)

    async def _create_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        login = self._login(request)
        n = self._number(request, repo, pull=False)
        body = await self._json(request)
        if not isinstance(body.get("body"), str):
            raise GitHubError(422, "Invalid request.\n\n\"body\" wasn't supplied.", DOCS + "/issues/comments#create-an-issue-comment")
        cid = self._next_id()
        url = f"{self.api(repo)}/issues/comments/{cid}"
        comment = {
            "id": cid, "node_id": node_id("IssueComment", cid), "url": url,
            "html_url": f"{repo.issues[n]['html_url']}#issuecomment-{cid}", "body": body["body"],
            "user": self.user(login), "created_at": _now(), "updated_at": _now(),
            "issue_url": f"{self.api(repo)}/issues/{n}", "author_association": "COLLABORATOR",
            "reactions": reactions(url), "performed_via_github_app": None,
        }
        repo.comments.setdefault(n, []).append(comment)
        repo.issues[n]["comments"] = len(repo.comments[n])
        self.emit("issue_comment", repo, {"action": "created", "issue": self.issue_view(repo, n), "comment": comment}, login)
        return web.json_response(comment, status=201)

    def _add_review(self, repo: Repo, n: int, login: str, state: str, text: str, commit_id: str | None) -> dict[str, Any]:
        """Store a review (REST shape, ``state`` uppercase) and, unless pending, deliver it (lowercase)."""
        rid = self._next_id()
        pr = repo.issues[n]
        html = f"{pr['html_url']}#pullrequestreview-{rid}"
        review = {
            "id": rid, "node_id": node_id("PullRequestReview", rid), "user": self.user(login), "body": text,
            "state": state, "html_url": html, "pull_request_url": pr["url"],
            "_links": {"html": {"href": html}, "pull_request": {"href": pr["url"]}},
            "submitted_at": _now(), "commit_id": commit_id or pr["head"]["sha"], "author_association": "COLLABORATOR",
        }
        repo.reviews.setdefault(n, []).append(review)
        if state != "PENDING":
            self.emit("pull_request_review", repo, {"action": "submitted", "review": webhook_review(review),
                                                    "pull_request": simple_pull(pr)}, login)
        return review

    async def _create_review(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        login = self._login(request)
        n = self._number(request, repo, pull=True)
        body = await self._json(request)
        states = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED", "COMMENT": "COMMENTED", None: "PENDING"}
        event = body.get("event")
        if event not in states:
            raise GitHubError(422, "Unprocessable Entity", DOCS + "/pulls/reviews#create-a-review-for-a-pull-request",
                              errors=[f"Variable $event of type PullRequestReviewEvent was provided invalid value {event!r}"])
        if event in ("REQUEST_CHANGES", "COMMENT") and not body.get("body"):
            raise GitHubError(422, "Unprocessable Entity", DOCS + "/pulls/reviews#create-a-review-for-a-pull-request",
                              errors=["Review Can not request changes or comment without a body"])
        review = self._add_review(repo, n, login, states[event], str(body.get("body") or ""), body.get("commit_id"))
        return web.json_response(review)

    async def _create_review_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        login = self._login(request)
        n = self._number(request, repo, pull=True)
        body = await self._json(request)
        missing = [f for f in ("body", "path") if not body.get(f)]
        if missing:
            raise GitHubError(422, "Invalid request.\n\n" + " ".join(f'"{f}" wasn\'t supplied.' for f in missing),
                              DOCS + "/pulls/comments#create-a-review-comment-for-a-pull-request")
        pr = repo.issues[n]
        # A lone review comment is filed under a review of its own (state COMMENTED, empty body), as on GitHub.
        review = self._add_review(repo, n, login, "COMMENTED", "", body.get("commit_id"))
        cid = self._next_id()
        url = f"{self.api(repo)}/pulls/comments/{cid}"
        html = f"{pr['html_url']}#discussion_r{cid}"
        line = body.get("line") if isinstance(body.get("line"), int) else None
        comment = {
            "url": url, "pull_request_review_id": review["id"], "id": cid,
            "node_id": node_id("PullRequestReviewComment", cid), "diff_hunk": "@@ -1,1 +1,1 @@",
            "path": body["path"], "position": line, "original_position": line or 1, "commit_id": review["commit_id"],
            "original_commit_id": review["commit_id"], "user": self.user(login), "body": body["body"],
            "created_at": _now(), "updated_at": _now(), "html_url": html, "pull_request_url": pr["url"],
            "author_association": "COLLABORATOR",
            "_links": {"self": {"href": url}, "html": {"href": html}, "pull_request": {"href": pr["url"]}},
            "reactions": reactions(url), "start_line": None, "original_start_line": None, "start_side": None,
            "line": line, "original_line": line or 1, "side": body.get("side", "RIGHT"), "subject_type": "line",
        }
        repo.review_comments.setdefault(n, []).append(comment)
        pr["review_comments"] = len(repo.review_comments[n])
        self.emit("pull_request_review_comment", repo, {"action": "created", "comment": comment,
                                                        "pull_request": simple_pull(pr)}, login)
        return web.json_response(comment, status=201)

    async def _create_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        login = self._login(request)
        body = await self._json(request)
        doc = DOCS + "/pulls/pulls#create-a-pull-request"
        for f in ("head", "base"):
            if not body.get(f):
                raise GitHubError(422, "Validation Failed", doc, [{"resource": "PullRequest", "field": f, "code": "missing_field"}])
        if not body.get("title"):
            raise GitHubError(422, "Validation Failed", doc, [{"resource": "PullRequest", "field": "title", "code": "missing_field"}])
        for f in ("head", "base"):
            if str(body[f]).split(":")[-1] not in repo.refs:
                raise GitHubError(422, "Validation Failed", doc, [{"resource": "PullRequest", "field": f, "code": "invalid"}])
        n = len(repo.issues) + 1
        head, base = str(body["head"]).split(":")[-1], str(body["base"])
        pr = self.pull(repo, n, self._next_id(), login, str(body["title"]), body.get("body"), bool(body.get("draft", False)),
                       (head, repo.refs[head]), (base, repo.refs[base]))
        self._next_id()  # the issue behind the pull request takes the next id (issue_view: pull id + 1)
        repo.issues[n] = pr
        self.emit("pull_request", repo, {"action": "opened", "number": n, "pull_request": pr}, login)
        return web.json_response(pr, status=201, headers={"Location": pr["url"]})

    async def _get_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        return web.json_response(repo.issues[self._number(request, repo, pull=True)])

    async def _update_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        login = self._login(request)
        n = self._number(request, repo, pull=True)
        body = await self._json(request)
        pr = repo.issues[n]
        changes = {k: {"from": pr[k]} for k in ("title", "body") if k in body and body[k] != pr[k]}
        for key in changes:
            pr[key] = body[key]
        pr["updated_at"] = _now()
        if changes:
            self.emit("pull_request", repo, {"action": "edited", "number": n, "changes": changes, "pull_request": pr}, login)
        if body.get("state") in ("open", "closed") and body["state"] != pr["state"]:
            pr["state"] = body["state"]
            pr["closed_at"] = _now() if pr["state"] == "closed" else None
            pr["mergeable_state"] = "unknown" if pr["state"] == "closed" else "clean"
            action = "closed" if pr["state"] == "closed" else "reopened"
            self.emit("pull_request", repo, {"action": action, "number": n, "pull_request": pr}, login)
        return web.json_response(pr)

    async def _create_check_run(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        login = self._login(request)
        body = await self._json(request)
        doc = DOCS + "/checks/runs#create-a-check-run"
        for f in ("name", "head_sha"):
            if not body.get(f):
                raise GitHubError(422, "Invalid request.\n\n" + f'"{f}" wasn\'t supplied.', doc)
        cid = self._next_id()
        ref = {"id": repo.id, "url": self.api(repo), "name": repo.name}
        pulls = [{"url": pr["url"], "id": pr["id"], "number": n,
                  "head": {"ref": pr["head"]["ref"], "sha": pr["head"]["sha"], "repo": ref},
                  "base": {"ref": pr["base"]["ref"], "sha": pr["base"]["sha"], "repo": ref}}
                 for n, pr in repo.issues.items() if pr["head"]["sha"] == body["head_sha"] and pr["state"] == "open"]
        conclusion = body.get("conclusion")
        url = f"{self.api(repo)}/check-runs/{cid}"
        html = f"{self.web(repo)}/runs/{cid}"
        output = body.get("output") or {}
        run = {
            "id": cid, "head_sha": body["head_sha"], "node_id": node_id("CheckRun", cid),
            "external_id": str(body.get("external_id", "")), "url": url, "html_url": html,
            "details_url": body.get("details_url") or html,
            "status": "completed" if conclusion else body.get("status", "queued"), "conclusion": conclusion,
            "started_at": _now(), "completed_at": _now() if conclusion else None,
            "output": {"title": output.get("title"), "summary": output.get("summary"), "text": output.get("text"),
                       "annotations_count": 0, "annotations_url": f"{url}/annotations"},
            "name": body["name"], "check_suite": {"id": self._next_id()}, "app": self.github_app(login), "pull_requests": pulls,
        }
        repo.check_runs.append(run)
        delivered = {**run, "check_suite": self.check_suite(repo, run, login)}
        self.emit("check_run", repo, {"action": "completed" if conclusion else "created", "check_run": delivered}, login)
        return web.json_response(run, status=201)

    async def _list_check_runs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        ref = request.match_info["ref"]
        sha = repo.refs.get(ref, ref)
        runs = [r for r in repo.check_runs if r["head_sha"] == sha]
        return web.json_response({"total_count": len(runs), "check_runs": runs})

    def _ref_body(self, repo: Repo, branch: str) -> dict[str, Any]:
        return {"ref": f"refs/heads/{branch}", "node_id": base64.b64encode(f"Ref:{branch}".encode()).decode(),
                "url": f"{self.base_url}/repos/{repo.full_name}/git/refs/heads/{branch}",
                "object": {"sha": repo.refs[branch], "type": "commit",
                           "url": f"{self.base_url}/repos/{repo.full_name}/git/commits/{repo.refs[branch]}"}}

    async def _get_ref(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        branch = request.match_info["branch"]
        if branch not in repo.refs:
            raise GitHubError(404, "Not Found", DOCS + "/git/refs#get-a-reference")
        return web.json_response(self._ref_body(repo, branch))

    async def _create_ref(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        self._login(request)
        body = await self._json(request)
        ref, sha = str(body.get("ref", "")), str(body.get("sha", ""))
        doc = DOCS + "/git/refs#create-a-reference"
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise GitHubError(422, "Reference name must start with 'refs/' and have at least two slashes.", doc)
        branch = ref.removeprefix("refs/heads/")
        if branch in repo.refs:
            raise GitHubError(422, "Reference already exists", doc)
        if len(sha) != 40:
            raise GitHubError(422, "Object does not exist", doc)
        repo.refs[branch] = sha
        return web.json_response(self._ref_body(repo, branch), status=201)

    async def _delete_ref(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        self._login(request)
        branch = request.match_info["branch"]
        if repo.refs.pop(branch, None) is None:
            raise GitHubError(422, "Reference does not exist", DOCS + "/git/refs#delete-a-reference")
        return web.Response(status=204)

