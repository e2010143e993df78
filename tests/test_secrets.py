"""Secrets by provenance, end to end: distinctive values in every credential field, then everything
the daemon and ``check`` let out is searched for them — the store file (and its WAL), the debug log,
every report format, the alert webhook's payloads, /metrics, every API response and dashboard page.

The target echoes each request back (headers, query, body) and answers 500, the worst case: the
run's response, its findings and the alert all carry what the probe sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.daemon.test_lifecycle import eventually
from tracecanary.demo.broker import free_port
from tracecanary.demo.emulators.slack import SlackEmulator, SlackToken

pytestmark = pytest.mark.anyio

ENV = {  # ${VAR} values: secrets by provenance
    "TC_S_HEADER": "env-header-8HJQ2P",
    "TC_S_TOKEN": "env-token-Z3LK9D",  # inside a longer string: "Session ${TC_S_TOKEN}"
    "TC_S_QUERY": "env-query-W1NB6V",  # lands in the URL the run records
    "TC_S_GH_TOKEN": "env-ghtoken-Q8MC4L",
    "TC_S_GH_HOOK": "env-ghhook-T6YP1R",
    "TC_S_SENTRY": "env-sentrytoken-B9XW3E",
    "TC_S_API": "env-apitoken-H2KD7U",
    "TC_S_ALERT_SECRET": "env-alertsecret-F4QN5J",
    "TC_S_ALERT_HEADER": "env-alertheader-C7VR2M",
}
LITERAL = {  # values of credential fields written in the file itself
    "bearer": "lit-bearer-7QX9ZK",
    "password": "lit-password-R4TM2W",
    "delivery_secret": "lit-ghsecret-M5RT8Y",
    "otlp_token": "lit-otlptoken-J3HS6A",
    "slack_user": "xoxp-lit-user-K2VB7N",
    "slack_bot": "xoxb-lit-bot-D8FL3G",
    "slack_app": "xapp-lit-app-N1ZC9T",
    "slack_signing": "lit-slacksigning-E5UW4P",
    "dsn_key": "litdsnkey0U7G2Y",
}
FILE_SECRET = "file-sign-P0DF3S"  # ${file:…}
ALL = [*ENV.values(), *LITERAL.values(), FILE_SECRET]


@dataclass
class Target:
    """The system under test and the alert receiver: echoes every request, answers /echo with 500."""

    seen: list[str] = field(default_factory=list)
    alerts: list[bytes] = field(default_factory=list)

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.text()
        echoed = {"headers": dict(request.headers), "query": dict(request.query), "body": body}
        self.seen.append(json.dumps(echoed))
        return web.json_response(echoed, status=500)

    async def github(self, request: web.Request) -> web.Response:
        self.seen.append(json.dumps(dict(request.headers)))
        return web.json_response({"ok": True}, status=202)

    async def alert(self, request: web.Request) -> web.Response:
        self.alerts.append(await request.read())
        return web.json_response({"ok": True})


@pytest.fixture
async def target() -> AsyncIterator[tuple[Target, str]]:
    t = Target()
    app = web.Application()
    app.add_routes([web.route("*", "/echo", t.echo), web.post("/gh", t.github), web.post("/alert", t.alert)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield t, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def suite(base: str, slack_api: str, secret_file: Path) -> str:
    s = LITERAL
    return f"""
daemon:
  api_token: ${{TC_S_API}}
  otlp: {{token: {s['otlp_token']}}}
integrations:
  slack: {{user_token: {s['slack_user']}, bot_token: {s['slack_bot']}, app_token: {s['slack_app']},
          signing_secret: {s['slack_signing']}, base_url: "{slack_api}"}}
  github: {{token: "${{TC_S_GH_TOKEN}}", webhook_secret: "${{TC_S_GH_HOOK}}", base_url: "{base}"}}
  sentry: {{org: acme, token: "${{TC_S_SENTRY}}", api_url: "{base}", dsn: "http://{s['dsn_key']}@127.0.0.1:9/1"}}
alerts:
  channels:
    hook: {{type: webhook, url: "{base}/alert", secret: "${{TC_S_ALERT_SECRET}}",
           headers: {{X-Hook-Token: "${{TC_S_ALERT_HEADER}}"}}}}
  policies:
    default: {{channels: [hook], failure_threshold: 1}}
probes:
  - id: leaky
    kind: http
    timeout: 10s
    request:
      method: POST
      url: "{base}/echo"
      query: {{key: "${{TC_S_QUERY}}"}}
      headers: {{X-Api-Key: "${{TC_S_HEADER}}", X-Session: "Session ${{TC_S_TOKEN}}", Accept: application/json}}
      auth: {{bearer: {s['bearer']}}}
      json: {{run: "{{{{ run_id }}}}"}}
      sign: {{scheme: hmac, header: X-Sig, secret: "${{file:{secret_file}}}"}}
    expect:
      response: {{status: 200}}
  - id: basic
    kind: http
    timeout: 10s
    request:
      url: "{base}/echo"
      auth: {{basic: {{username: canary, password: {s['password']}}}}}
  - id: gh
    kind: github_webhook
    timeout: 10s
    delivery: {{url: "{base}/gh", event: pull_request, action: opened, secret: {s['delivery_secret']}}}
  - id: mention
    kind: slack_mention
    timeout: 10s
    channel: C0SECRETS
    bot_user_id: U0BOT
    text: "hello {{{{ run_id }}}}"
"""


def _forms(value: str) -> set[str]:
    return {value, quote(value, safe=""), json.dumps(value)[1:-1]}


def leaks(text: str) -> list[str]:
    """The secret values (in any of their rendered forms) found in ``text``."""
    return [v for v in ALL if any(f in text for f in _forms(v))]


async def _get(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, headers={"Authorization": f"Bearer {ENV['TC_S_API']}"}) as r:
        assert r.status == 200, (url, r.status, await r.text())
        return await r.text()


async def _daemon_outputs(base_url: str, target: Target, probes: list[str]) -> dict[str, str]:
    """Fire every probe through the API, wait for the runs and the alert, read every page."""
    out: dict[str, str] = {}
    auth = {"Authorization": f"Bearer {ENV['TC_S_API']}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        for pid in probes:
            async with s.post(f"{base_url}/api/probes/{pid}/run", headers=auth, data="{}") as r:
                assert r.status == 202, await r.text()

        async def finished() -> bool:
            for pid in probes:
                runs = json.loads(await _get(s, f"{base_url}/api/probes/{pid}/runs"))["runs"]
                if not runs or runs[0]["status"] != "finished":
                    return False
            return True

        await eventually(finished, 60, "every probe finished")
        await eventually(lambda: bool(target.alerts), 30, "the alert delivered")
        for path in ("/api/probes", "/api/alerts", "/metrics", "/", *[f"/probes/{p}" for p in probes]):
            out[path] = await _get(s, base_url + path)
        for pid in probes:
            for run in json.loads(out.setdefault(f"runs:{pid}", await _get(s, f"{base_url}/api/probes/{pid}/runs")))["runs"]:
                out[f"/api/runs/{run['run_id']}"] = await _get(s, f"{base_url}/api/runs/{run['run_id']}")
                out[f"/runs/{run['run_id']}"] = await _get(s, f"{base_url}/runs/{run['run_id']}")
    return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_S_")}
    return {**env, **ENV}


async def test_no_secret_leaves_the_daemon_or_check(tmp_path: Path, target: tuple[Target, str]) -> None:
    t, base = target
    secret_file = tmp_path / "sign-secret"
    secret_file.write_text(FILE_SECRET + "\n")
    tokens = {LITERAL["slack_user"]: SlackToken("user", user_id="U0PROBER"),
              LITERAL["slack_bot"]: SlackToken("bot", user_id="U0BOT", bot_id="B0BOT"),
              LITERAL["slack_app"]: SlackToken("app")}
    async with SlackEmulator(tokens=tokens) as slack:
        config = tmp_path / "suite.yaml"
        config.write_text(suite(base, slack.base_url, secret_file))
        db, log = tmp_path / "tc.db", tmp_path / "daemon.log"
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tracecanary.daemon.cli.main", "--log-level", "DEBUG", "run", str(config),
                 "--listen", f"127.0.0.1:{port}", "--otlp-http", "none", "--otlp-grpc", "none",
                 "--store", f"sqlite:///{db}"], stdout=out, stderr=subprocess.STDOUT, env=_env())
        try:
            await _ready(proc, port, log)
            outputs = await _daemon_outputs(f"http://127.0.0.1:{port}", t, ["leaky", "basic", "gh", "mention"])
        finally:
            proc.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30))
        reports = tmp_path / "reports"
        reports.mkdir()
        check = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "tracecanary.daemon.cli.main", "--log-level", "DEBUG", "check", str(config),
             "--otlp-http", "none", "--otlp-grpc", "none", "--json", str(reports / "r.json"),
             "--junit", str(reports / "r.xml"), "--markdown", str(reports / "r.md")],
            capture_output=True, text=True, env=_env(), timeout=120))
    assert check.returncode == 1, check.stdout + check.stderr  # leaky fails: the target answers 500

    # The secrets were really used: the target saw them (positive control).
    seen = "\n".join(t.seen)
    for value in (LITERAL["bearer"], ENV["TC_S_HEADER"], ENV["TC_S_TOKEN"], ENV["TC_S_QUERY"]):
        assert value in seen
    assert LITERAL["slack_user"] not in seen  # went to the Slack emulator, not the target
    assert slack.state.messages, "the slack_mention probe posted with the user token"

    artifacts: dict[str, str] = {f"api {k}": v for k, v in outputs.items()}
    artifacts["daemon log (DEBUG)"] = log.read_text(errors="replace")
    for f in sorted(tmp_path.glob("tc.db*")):  # the database, its WAL and shared memory, free pages included
        artifacts[f"store {f.name}"] = f.read_bytes().decode("latin-1")
    for i, body in enumerate(t.alerts):
        artifacts[f"alert payload {i}"] = body.decode()
    for f in sorted(reports.iterdir()):
        artifacts[f"report {f.name}"] = f.read_text()
    artifacts["check output"] = check.stdout + check.stderr
    found = {name: leaks(text) for name, text in artifacts.items() if leaks(text)}
    assert not found, f"secrets leaked: {found}"

    # And what was masked says so, where a reader would look for it.
    leaky_run = next(v for k, v in outputs.items() if k.startswith("/api/runs/") and '"probe_id":"leaky"' in
                     v.replace(" ", ""))
    run = json.loads(leaky_run)
    assert run["response"]["url"].endswith("/echo?key=[redacted]")  # inside a longer string
    assert '\\"Authorization\\": \\"Bearer [redacted]\\"' in leaky_run  # the echoed header, in the body text
    assert "[redacted]" in outputs["/probes/leaky"]


async def _ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    async def check() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(check, 60, "daemon ready")


def test_config_secrets_gather_every_source(tmp_path: Path) -> None:
    """Provenance, not key names: ${VAR} and ${file:} values, credential fields, the store password;
    ${public:VAR} and defaults are not secrets."""
    from tracecanary.daemon.config.load import load_config

    secret_file = tmp_path / "s"
    secret_file.write_text("from-a-file\n")
    f = tmp_path / "suite.yaml"
    f.write_text(f"""
daemon: {{store: "postgresql://tc:store-pass%21@127.0.0.1/tc", api_token: lit-api-token, listen: "${{LISTEN}}"}}
probes:
  - id: one
    kind: http
    request:
      url: "${{public:TARGET}}/x?k=${{KEY}}"
      headers: {{X-Custom: header-value-1, Content-Type: application/json, X-F: "${{file:{secret_file}}}"}}
      json: {{note: "${{MISSING:-a-default}}"}}
""")
    cfg = load_config(f, {"TARGET": "http://127.0.0.1:9", "KEY": "query-key-1", "LISTEN": "127.0.0.1:18080"})
    secrets = set(cfg.secrets())
    assert {"query-key-1", "from-a-file", "header-value-1", "lit-api-token", "store-pass!"} <= secrets
    # Not secrets: a public value, a header that never is one, a default, the daemon's own address.
    assert not {"http://127.0.0.1:9", "application/json", "a-default", "127.0.0.1:18080"} & secrets
