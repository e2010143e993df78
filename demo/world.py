"""Start the demo world on loopback: tansu broker, Slack/GitHub/Sentry emulators, the shop's services.

``world = await start_world(otlp_endpoint=...)`` returns a :class:`DemoWorld` whose ``env`` holds the
``DEMO_*`` variables ``config/demo.yaml`` uses (``${DEMO_INGEST_URL}`` …); pass them to the config
loader as its environ (the process environment stays untouched). ``await world.set_fault("drop-span")`` injects one fault into every shop
service; ``await world.aclose()`` stops everything. ``DemoSettings`` is the model of the suite's
top-level ``demo:`` section (which fault must produce which verdict and finding).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import anyio
from anyio.abc import Process
from pydantic import BaseModel, ConfigDict, Field

from tracecanary.demo.broker import TansuBroker, start_tansu
from tracecanary.demo.emulators.github import GitHubEmulator
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.demo.shop.common import FAULTS
from tracecanary.errors import StartupError

log = logging.getLogger("tracecanary.demo.world")

SERVICES = ("ingest", "worker", "bot", "scheduler", "pricing")
WEBHOOK_SECRET = "demo-webhook-secret"
SLACK_SIGNING_SECRET = "demo-signing-secret"
REPO = "acme/shop"
CHANNELS = {"alerts": "C0ALERT", "reports": "C0REPORTS", "mentions": "C0MENTIONS", "oncall": "C0ONCALL"}
READY_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0


class FaultDeclaration(BaseModel):
    """One chaos pass: the fault injected and what each affected probe must then conclude."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Name shown in the report and the dashboard.")
    inject: Literal["drop-span", "slow-dependency", "break-propagation", "silent-bot"] = Field(
        description="The shop fault switched on for this pass.")
    description: str = Field("", description="What the fault does to the system under test.")
    verdicts: dict[str, Literal["pass", "degraded", "fail", "error"]] = Field(
        description="probe id → the verdict it must reach; probes not named must pass.")
    finding: dict[str, str] = Field(
        default_factory=dict,
        description="probe id → a substring one of its findings (path or message) must contain.")


class DemoSettings(BaseModel):
    """The ``demo:`` section of config/demo.yaml (read by `tracecanary demo`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    faults: list[FaultDeclaration] = Field(default_factory=list, description="One chaos pass per fault, in order.")
    slow_s: float = Field(1.5, gt=0, description="How slow the slow-dependency fault makes a dependency.")
    tour: str = Field("", description="Text printed after the dashboard URL.")

    def fault(self, name: str) -> FaultDeclaration:
        for f in self.faults:
            if f.name == name:
                return f
        raise KeyError(name)


def mismatches(fault: FaultDeclaration | None, results: dict[str, tuple[str | None, list[str]]]) -> list[str]:
    """How one pass differs from its declaration (empty = it matches).

    ``results``: probe id → (final verdict, its findings as ``"path: message"`` strings). A clean
    pass (``fault`` None) expects every probe to pass (degraded counts as a pass); a fault pass
    expects the declared verdicts, a finding containing the declared substring, and every other
    probe to pass.
    """
    out: list[str] = []
    expected = fault.verdicts if fault else {}
    for probe_id, (verdict, findings) in sorted(results.items()):
        want = expected.get(probe_id, "pass")
        ok = verdict in ("pass", "degraded") if want == "pass" else verdict == want
        if not ok:
            top = f" ({findings[0]})" if findings else ""
            out.append(f"{probe_id}: expected verdict {want}, observed {verdict}{top}")
            continue
        needle = fault.finding.get(probe_id) if fault else None
        if needle and not any(needle in f for f in findings):
            out.append(f"{probe_id}: expected a finding containing {needle!r}, observed {findings or 'none'}")
    for probe_id in sorted(set(expected) - set(results)):
        out.append(f"{probe_id}: declared for fault {fault.name if fault else ''} but did not run")
    return out


@dataclass(frozen=True)
class ChaosState:
    """The fault switch as the dashboard's chaos toggle shows it."""

    faults: tuple[str, ...]
    """Declared fault names, in order."""
    active: str | None
    """The fault switched on (None: healthy)."""


@dataclass
class DemoWorld:
    """Everything `tracecanary demo` started besides the daemon; ``env`` feeds config/demo.yaml."""

    broker: TansuBroker
    slack: SlackEmulator
    github: GitHubEmulator
    sentry: SentryEmulator
    services: dict[str, str] = field(default_factory=dict)
    announced: dict[str, dict[str, str]] = field(default_factory=dict)
    """Other addresses a service announced, by service (``pricing`` → ``{"grpc": "127.0.0.1:P"}``)."""
    processes: dict[str, Process] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    settings: DemoSettings = field(default_factory=DemoSettings)
    workdir: Path = field(default_factory=Path)
    """Service logs (``<service>.log``) and the shop's SQLite file."""
    owns_workdir: bool = True
    """Remove ``workdir`` on close (a caller-given directory is kept)."""
    active_fault: str | None = None
    _closed: bool = False

    async def set_fault(self, name: str | None) -> None:
        """Switch a declared fault (by its name, or a shop fault id) on in every service; None = healthy."""
        inject: str | None = None
        if name:
            try:
                inject = self.settings.fault(name).inject
            except KeyError:
                if name not in FAULTS:
                    raise ValueError(f"unknown fault {name!r}") from None
                inject = name
        async with aiohttp.ClientSession() as s:
            for svc, url in self.services.items():
                with anyio.fail_after(CALL_TIMEOUT_S):
                    async with s.post(f"{url}/admin/faults", json={"fault": inject, "slow_s": self.settings.slow_s}) as r:
                        if r.status != 200:
                            raise StartupError(f"{svc}: fault switch answered HTTP {r.status}")
        self.active_fault = name or None
        log.info("demo fault fault=%s inject=%s", name, inject)

    def chaos_state(self) -> ChaosState:
        """For the dashboard's chaos toggle."""
        return ChaosState(faults=tuple(f.name for f in self.settings.faults), active=self.active_fault)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            for name, proc in self.processes.items():
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        with anyio.fail_after(5):
                            await proc.wait()
                    except TimeoutError:
                        log.warning("demo service did not stop service=%s; killing", name)
                        proc.kill()
                        await proc.wait()
            for emu in (self.slack, self.github, self.sentry):
                await emu.stop()
            await anyio.to_thread.run_sync(self.broker.stop)
            if self.owns_workdir:
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.workdir, ignore_errors=True))

    async def __aenter__(self) -> DemoWorld:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _spawn(world: DemoWorld, name: str, config: dict[str, Any]) -> str:
    """Start ``python -m tracecanary.demo.shop.<name>`` and wait for its READY line; returns its URL (other
    addresses it announced land in ``world.announced``)."""
    errlog = (world.workdir / f"{name}.log").open("ab")
    proc = await anyio.open_process(
        [sys.executable, "-m", f"tracecanary.demo.shop.{name}", json.dumps(config)],
        stdin=None, stderr=errlog, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    world.processes[name] = proc
    assert proc.stdout is not None
    buf = b""
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            while b"\n" not in buf:
                buf += await proc.stdout.receive()
    except (TimeoutError, anyio.EndOfStream) as e:
        tail = (world.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
        raise StartupError(f"demo service {name} did not start:\n{tail}") from e
    line = buf.split(b"\n", 1)[0].decode()
    if not line.startswith(f"READY {name} "):
        raise StartupError(f"demo service {name} printed {line!r} instead of READY")
    url, *extra = line.split(" ")[2:]
    world.announced[name] = dict(part.split("=", 1) for part in extra if "=" in part)
    return url


async def _open_pull(github: GitHubEmulator) -> int:
    """A pull request the GitHub-webhook probe names (the worker comments on it)."""
    headers = {"Authorization": "Bearer ghp-prober", "Accept": "application/vnd.github+json"}
    base = github.base_url.rstrip("/")
    async with aiohttp.ClientSession(headers=headers) as s:
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with s.post(f"{base}/repos/{REPO}/git/refs",
                              json={"ref": "refs/heads/fix-error-handling", "sha": "b" * 40}) as r:
                r.raise_for_status()
            async with s.post(f"{base}/repos/{REPO}/pulls", json={
                "title": "Improve error handling in checkout", "head": "fix-error-handling", "base": "main",
            }) as r:
                r.raise_for_status()
                return int((await r.json())["number"])


async def start_world(
    otlp_endpoint: str | None, *, settings: DemoSettings | None = None, workdir: Path | None = None
) -> DemoWorld:
    """Start broker, emulators and shop services on free loopback ports; the caller must ``aclose()``.

    ``otlp_endpoint`` is where the shop exports spans (tracecanary's OTLP/HTTP receiver, e.g.
    ``http://127.0.0.1:4318``); ``workdir`` keeps the services' logs after close.
    """
    owns = workdir is None
    workdir = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="tracecanary-demo-"))) \
        if workdir is None else workdir
    await anyio.Path(workdir).mkdir(parents=True, exist_ok=True)
    broker = await anyio.to_thread.run_sync(start_tansu)
    slack = SlackEmulator(signing_secret=SLACK_SIGNING_SECRET, channels=list(CHANNELS.values()))
    github = GitHubEmulator(repos=[REPO])
    sentry = SentryEmulator()
    world = DemoWorld(broker=broker, slack=slack, github=github, sentry=sentry,
                      settings=settings or DemoSettings(), workdir=workdir, owns_workdir=owns)
    try:
        await slack.start()
        await github.start()
        await sentry.start()
        pull = await _open_pull(github)
        common = {"otlp_endpoint": otlp_endpoint, "kafka_bootstrap": broker.bootstrap, "slack_url": slack.base_url,
                  "github_url": github.base_url.rstrip("/"), "slow_s": world.settings.slow_s}
        sentry_dsn = f"http://{sentry.public_key}@{sentry.base_url.split('://', 1)[1].split('/', 1)[0]}/1"
        configs = {
            "ingest": {**common, "webhook_secret": WEBHOOK_SECRET, "sentry_dsn": sentry_dsn},
            "worker": {**common, "slack_channel": CHANNELS["alerts"], "db_path": str(world.workdir / "shop.db")},
            "bot": {**common, "signing_secret": SLACK_SIGNING_SECRET},
            "scheduler": {**common, "slack_channel": CHANNELS["reports"]},
            "pricing": common,
        }
        for name in SERVICES:
            world.services[name] = await _spawn(world, name, configs[name])
        slack.events_url = f"{world.services['bot']}/slack/events"
        world.env = {
            "DEMO_INGEST_URL": world.services["ingest"], "DEMO_WORKER_URL": world.services["worker"],
            "DEMO_BOT_URL": world.services["bot"], "DEMO_SCHEDULER_URL": world.services["scheduler"],
            "DEMO_KAFKA_BOOTSTRAP": broker.bootstrap, "DEMO_SLACK_API": slack.base_url,
            "DEMO_GITHUB_API": github.base_url.rstrip("/"), "DEMO_SENTRY_URL": sentry.base_url.rstrip("/"),
            "DEMO_WEBHOOK_SECRET": WEBHOOK_SECRET, "DEMO_SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
            "DEMO_GITHUB_REPO": REPO, "DEMO_GITHUB_PULL": str(pull), "DEMO_BOT_USER": slack.bot_user_id,
            "DEMO_SLACK_TEAM": slack.team_id, "DEMO_SLACK_APP": slack.app_id,
            "DEMO_SLACK_USER_TOKEN": "xoxp-user", "DEMO_SLACK_BOT_TOKEN": "xoxb-bot", "DEMO_SLACK_APP_TOKEN": "xapp-app",
            "DEMO_GITHUB_TOKEN": "ghp-prober", "DEMO_SENTRY_TOKEN": sentry.token, "DEMO_SENTRY_DSN": sentry_dsn,
            "DEMO_SENTRY_ORG": sentry.org, "DEMO_PRICING_GRPC": world.announced["pricing"]["grpc"],
            **{f"DEMO_CHANNEL_{k.upper()}": v for k, v in CHANNELS.items()},
        }
        log.info("demo world ready services=%s", world.services)
        return world
    except BaseException:
        await world.aclose()
        raise
