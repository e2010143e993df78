"""REST resources of the GitHub emulator: repos, comments, reviews, pulls, check runs, git refs.

Bodies follow docs.github.com/rest (field names, ``201`` on create, ``204`` on ref delete) and
errors follow GitHub's shape: ``{"message", "errors"?, "documentation_url", "status"}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

DOCS = "https://docs.github.com/rest"
LOGIN = web.RequestKey("login", str)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_body(status: int, message: str, doc: str = DOCS, errors: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    body["documentation_url"] = doc
    body["status"] = str(status)
    return body


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


class GitHubError(Exception):
    def __init__(self, status: int, message: str, doc: str = DOCS, errors: list[Any] | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(status, message, doc, errors)



class GitHubRestMixin:
    """Request handlers of ``GitHubEmulator`` (which sets the attributes declared here)."""

    base_url: str
    repos: dict[str, Repo]
    _users: dict[str, int]
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

    def user(self, login: str) -> dict[str, Any]:
        uid = self._users.setdefault(login, 5000 + len(self._users))
        return {
            "login": login, "id": uid, "node_id": f"MDQ6VXNlcj{uid}", "avatar_url": f"{self.base_url}/avatars/{uid}",
            "gravatar_id": "", "url": f"{self.base_url}/users/{login}", "html_url": f"https://github.com/{login}",
            "type": "Bot" if login.endswith("[bot]") else "User", "site_admin": False,
        }

    def repository(self, repo: Repo) -> dict[str, Any]:
        return {
            "id": repo.id, "node_id": f"MDEwOlJlcG9zaXRvcnk{repo.id}", "name": repo.name, "full_name": repo.full_name,
            "private": False, "owner": self.user(repo.owner), "html_url": f"https://github.com/{repo.full_name}",
            "url": f"{self.base_url}/repos/{repo.full_name}", "default_branch": "main",
        }

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
        comment = {
            "id": cid, "node_id": f"IC_{cid}", "url": f"{self.base_url}/repos/{repo.full_name}/issues/comments/{cid}",
            "html_url": f"https://github.com/{repo.full_name}/issues/{n}#issuecomment-{cid}", "body": body["body"],
            "user": self.user(login), "created_at": _now(), "updated_at": _now(),
            "issue_url": f"{self.base_url}/repos/{repo.full_name}/issues/{n}", "author_association": "COLLABORATOR",
        }
        repo.comments.setdefault(n, []).append(comment)
        self.emit("issue_comment", repo, {"action": "created", "issue": self._issue_view(repo, n), "comment": comment}, login)
        return web.json_response(comment, status=201)

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
        rid = self._next_id()
        base = f"{self.base_url}/repos/{repo.full_name}/pulls/{n}"
        html = f"https://github.com/{repo.full_name}/pull/{n}#pullrequestreview-{rid}"
        review = {
            "id": rid, "node_id": f"PRR_{rid}", "user": self.user(login), "body": body.get("body", ""),
            "state": states[event], "html_url": html, "pull_request_url": base,
            "_links": {"html": {"href": html}, "pull_request": {"href": base}},
            "submitted_at": _now(), "commit_id": body.get("commit_id") or repo.issues[n]["head"]["sha"],
            "author_association": "COLLABORATOR",
        }
        repo.reviews.setdefault(n, []).append(review)
        if event is not None:
            self.emit("pull_request_review", repo, {"action": "submitted", "review": review,
                                                    "pull_request": repo.issues[n]}, login)
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
        cid = self._next_id()
        comment = {
            "id": cid, "node_id": f"PRRC_{cid}", "url": f"{self.base_url}/repos/{repo.full_name}/pulls/comments/{cid}",
            "pull_request_review_id": None, "path": body["path"], "line": body.get("line"),
            "side": body.get("side", "RIGHT"), "commit_id": body.get("commit_id") or repo.issues[n]["head"]["sha"],
            "user": self.user(login), "body": body["body"], "created_at": _now(), "updated_at": _now(),
            "html_url": f"https://github.com/{repo.full_name}/pull/{n}#discussion_r{cid}",
            "pull_request_url": f"{self.base_url}/repos/{repo.full_name}/pulls/{n}", "author_association": "COLLABORATOR",
        }
        repo.review_comments.setdefault(n, []).append(comment)
        self.emit("pull_request_review_comment", repo, {"action": "created", "comment": comment,
                                                        "pull_request": repo.issues[n]}, login)
        return web.json_response(comment, status=201)

    def _issue_view(self, repo: Repo, n: int) -> dict[str, Any]:
        pr = repo.issues[n]
        view = {k: pr[k] for k in ("id", "number", "title", "user", "state", "body", "created_at", "updated_at")}
        view["url"] = f"{self.base_url}/repos/{repo.full_name}/issues/{n}"
        if "head" in pr:
            view["pull_request"] = {"url": pr["url"], "html_url": pr["html_url"]}
        return view

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
        pid = self._next_id()
        head = str(body["head"]).split(":")[-1]
        pr = {
            "url": f"{self.base_url}/repos/{repo.full_name}/pulls/{n}", "id": pid, "node_id": f"PR_{pid}",
            "html_url": f"https://github.com/{repo.full_name}/pull/{n}", "number": n, "state": "open", "locked": False,
            "title": body["title"], "user": self.user(login), "body": body.get("body"), "created_at": _now(),
            "updated_at": _now(), "closed_at": None, "merged_at": None, "draft": bool(body.get("draft", False)),
            "head": {"label": f"{repo.owner}:{head}", "ref": head, "sha": repo.refs[head], "repo": self.repository(repo)},
            "base": {"label": f"{repo.owner}:{body['base']}", "ref": body["base"], "sha": repo.refs[str(body["base"])],
                     "repo": self.repository(repo)},
        }
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
        for key in ("title", "body"):
            if key in body:
                pr[key] = body[key]
        if body.get("state") in ("open", "closed") and body["state"] != pr["state"]:
            pr["state"] = body["state"]
            pr["closed_at"] = _now() if pr["state"] == "closed" else None
            action = "closed" if pr["state"] == "closed" else "reopened"
            self.emit("pull_request", repo, {"action": action, "number": n, "pull_request": pr}, login)
        pr["updated_at"] = _now()
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
        pulls = [{"number": n, "url": pr["url"], "id": pr["id"]} for n, pr in repo.issues.items()
                 if pr.get("head", {}).get("sha") == body["head_sha"] and pr["state"] == "open"]
        conclusion = body.get("conclusion")
        run = {
            "id": cid, "head_sha": body["head_sha"], "node_id": f"CR_{cid}", "external_id": body.get("external_id", ""),
            "url": f"{self.base_url}/repos/{repo.full_name}/check-runs/{cid}",
            "html_url": f"https://github.com/{repo.full_name}/runs/{cid}", "details_url": body.get("details_url"),
            "status": "completed" if conclusion else body.get("status", "queued"), "conclusion": conclusion,
            "started_at": _now(), "completed_at": _now() if conclusion else None,
            "output": {"title": (body.get("output") or {}).get("title"), "summary": (body.get("output") or {}).get("summary"),
                       "text": None, "annotations_count": 0, "annotations_url": ""},
            "name": body["name"], "app": {"id": 1, "slug": login.removesuffix("[bot]"), "name": login},
            "pull_requests": pulls,
        }
        repo.check_runs.append(run)
        self.emit("check_run", repo, {"action": "completed" if conclusion else "created", "check_run": run}, login)
        return web.json_response(run, status=201)

    async def _list_check_runs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        ref = request.match_info["ref"]
        sha = repo.refs.get(ref, ref)
        runs = [r for r in repo.check_runs if r["head_sha"] == sha]
        return web.json_response({"total_count": len(runs), "check_runs": runs})

    def _ref_body(self, repo: Repo, branch: str) -> dict[str, Any]:
        return {"ref": f"refs/heads/{branch}", "node_id": f"REF_{branch}",
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

