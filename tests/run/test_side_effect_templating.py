"""Every string of a side effect — matchers included — is rendered per run by the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.probes.helpers import make_ctx, serve
from tracecanary.assertions.side_effects import SideEffect, SlackEffect
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.daemon.watchers.base import Services
from tracecanary.daemon.watchers.slack import SlackPacer
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.errors import ProbeError
from tracecanary.integrations import Integrations
from tracecanary.probes.http import HttpProbe
from tracecanary.probes.slack import slack_client
from tracecanary.probes.templating import render_spec

CHANNEL = "C0ORDERS"

EFFECTS: list[dict[str, Any]] = [
    {"slack": {"channel": "{{ probe_id }}", "from": "U0BOT", "text": {"contains": "done {{ run_id }}"},
               "blocks_text": {"matches": "^{{ run_id }}$"}}},
    {"github": {"repo": "acme/{{ probe_id }}", "pull": "{{ steps.pr.number }}", "comment": "ok {{ run_id }}",
                "review": {"state": "approved", "body": {"contains": "{{ run_id }}"}},
                "check_run": {"name": "ci-{{ probe_id }}"}}},
    {"kafka": {"topic": "t-{{ probe_id }}", "key": "{{ run_id }}", "value": {"contains": "{{ trace_id }}"},
               "header": {"x-run": {"equals": "{{ run_id }}"}}}},
    {"http": {"request": {"url": "http://127.0.0.1:1/o/{{ run_id }}", "headers": {"X-Run": "{{ run_id }}"}},
              "until": {"status": 200, "json": {"$.run": "{{ run_id }}", "$.n": {"gte": "{{ steps.pr.number }}"}}}}},
    {"sentry": {"event": {"level": "error", "message": {"contains": "{{ run_id }}"}}}},
]


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # the model_construct()ed effect below
def test_every_string_matcher_is_rendered() -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            ctx = make_ctx(session, probe_id="shop")
            ctx.steps["pr"] = {"number": 12}
            run = ctx.run_id
            slack, github, kafka, http, sentry = (render_spec(SideEffect.model_validate(e).spec, ctx.render)
                                                  for e in EFFECTS)
            assert slack.model_dump(by_alias=True, exclude_unset=True) == {
                "channel": "shop", "from": "U0BOT", "text": {"contains": f"done {run}"},
                "blocks_text": {"matches": f"^{run}$"}}
            assert github.model_dump(exclude_unset=True, exclude_none=True) == {
                "repo": "acme/shop", "pull": "12", "comment": f"ok {run}",
                "review": {"state": "approved", "body": {"contains": run}}, "check_run": {"name": "ci-shop"}}
            assert kafka.model_dump(exclude_unset=True) == {
                "topic": "t-shop", "key": run, "value": {"contains": ctx.trace.trace_id},
                "header": {"x-run": {"equals": run}}}
            assert http.model_dump(by_alias=True, exclude_unset=True)["until"] == {
                "status": 200, "json": {"$.run": run, "$.n": {"gte": "12"}}}
            assert http.request.url.endswith(f"/o/{run}") and http.request.headers == {"X-Run": run}
            assert sentry.model_dump(exclude_unset=True) == {"event": {"level": "error", "message": {"contains": run}}}
            plain = SideEffect.model_validate({"slack": {"channel": "C1", "text": "pong"}}).spec
            assert render_spec(plain, ctx.render) is plain  # nothing templated: the same object
            with pytest.raises(ProbeError, match="nope"):
                render_spec(SideEffect.model_validate({"slack": {"channel": "C1", "text": "{{ nope }}"}}).spec,
                            ctx.render)
            # A value the field does not take once rendered is a clear error, not a crash in the watcher.
            odd = SlackEffect.model_construct(channel="C1", in_thread="{{ steps.pr.number }}")
            with pytest.raises(ProbeError, match=r"in_thread: .* after rendering templates \(got '12'\)"):
                render_spec(odd, ctx.render)

    anyio.run(go)


class Shop:
    """The system under test: on POST /orders it announces the order in Slack and records its state."""

    def __init__(self, slack_base_url: str) -> None:
        self.slack_base_url = slack_base_url
        self.state: dict[str, dict[str, Any]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/orders", self.create)
        app.router.add_get("/orders/{run}", self.get)
        return app

    async def create(self, request: web.Request) -> web.Response:
        run = (await request.json())["run"]
        self.state[run] = {"run": run, "state": "placed"}
        client = slack_client("xoxb-bot", self.slack_base_url)
        await client.chat_postMessage(channel=CHANNEL, text=f"order placed for run {run}")
        return web.json_response({"ok": True}, status=201)

    async def get(self, request: web.Request) -> web.Response:
        found = self.state.get(request.match_info["run"])
        return web.json_response(found or {"error": "no such order"}, status=200 if found else 404)


def _probe(url: str, *effects: dict[str, Any]) -> HttpProbe:
    return HttpProbe.model_validate({
        "id": "order-announced", "kind": "http", "timeout": "8s",
        "request": {"method": "POST", "url": url + "/orders", "json": {"run": "{{ run_id }}"}},
        "expect": {"response": {"status": 201}, "side_effects": list(effects)},
    })


@pytest.mark.anyio
async def test_runner_renders_matchers_per_run(tmp_path: Path) -> None:
    announced = {"slack": {"channel": CHANNEL, "from": "U0BOT", "text": {"contains": "for run {{ run_id }}"},
                           "within": "5s"}}
    stored = {"http": {"request": {"url": "{{ steps.base }}/orders/{{ run_id }}"}, "every": "50ms", "within": "5s",
                       "until": {"json": {"$.run": "{{ run_id }}", "$.state": "placed"}}}}
    bad = {"slack": {"channel": CHANNEL, "text": {"contains": "{{ no_such_variable }}"}, "within": "1s"}}
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    try:
        async with SlackEmulator() as em, aiohttp.ClientSession() as session:
            shop = Shop(em.base_url)
            async with serve(shop.app()) as url:
                stored["http"]["request"]["url"] = url + "/orders/{{ run_id }}"
                integrations = Integrations.model_validate(
                    {"slack": {"bot_token": "xoxb-bot", "base_url": em.base_url}})
                services = Services(extra={"slack_pacer": SlackPacer({"conversations.history": 6000})})
                runner = Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session, services=services,
                                           integrations=integrations, poll_interval_s=0.05))
                with anyio.fail_after(30):
                    [first] = await runner.run_probe(_probe(url, announced, stored))
                    [second] = await runner.run_probe(_probe(url, announced, stored))
                    [broken] = await runner.run_probe(_probe(url, bad))
    finally:
        await store.aclose()
    assert first.verdict is Verdict.PASS, [str(f) for f in first.findings]
    assert second.verdict is Verdict.PASS, [str(f) for f in second.findings]
    assert first.run_id != second.run_id and set(shop.state) == {first.run_id, second.run_id, broken.run_id}
    assert broken.verdict is Verdict.ERROR
    [finding] = broken.findings
    assert finding.path == "expect.side_effects[0].slack"
    assert "bad template" in finding.message and "no_such_variable" in finding.message
