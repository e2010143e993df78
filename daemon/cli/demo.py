"""``tracecanary demo``: the demo world (shop, emulators, Kafka broker) and the daemon judging it.

``demo`` runs the daemon with its dashboard until Ctrl-C; ``--chaos`` rotates the declared faults.
``demo --once`` runs every demo probe once (and with ``--chaos`` one more pass per fault, one fault at
a time) and exits 0 only when every pass matches ``config/demo.yaml``'s declarations.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from rich.console import Console
from rich.table import Table

from tracecanary.daemon.config.load import Config, load_config
from tracecanary.daemon.engine import Engine, Overrides
from tracecanary.errors import ConfigError, StartupError
from tracecanary.probes.base import ProbeSpec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tracecanary.demo.world import DemoWorld, FaultDeclaration

log = logging.getLogger("tracecanary.demo")

CHAOS_ROTATE_S = 120.0
PASSIVE_SLACK_S = 5.0
"""Beyond a passive probe's timeout, how long a pass waits for the traffic it made to be judged."""


def demo_config_path() -> Path:
    """``config/demo.yaml``, in the ``config/`` folder beside the ``demo/`` one wherever the code runs from.

    In a checkout (an editable install) that is the top-level ``config/``; a wheel carries it as
    ``tracecanary/config/`` beside ``tracecanary/demo/`` (pyproject maps ``config/`` to ``tracecanary.config``).
    """
    import tracecanary.demo as demo_pkg

    path = Path(demo_pkg.__file__).resolve().parent.parent / "config" / "demo.yaml"
    if not path.exists():
        raise StartupError(f"demo suite not found at {path}: this installation lacks the package data "
                           "tracecanary/config/demo.yaml (pyproject.toml, [tool.setuptools.package-data])")
    return path


def cmd_demo(args: argparse.Namespace, overrides: Overrides) -> int:
    quiet_emulators()
    return anyio.run(_demo, args, overrides)


def quiet_emulators() -> None:
    """The emulators' and the shop's aiohttp access logs (``aiohttp.access``) show only at debug level:
    the demo's own output stays readable."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _demo(args: argparse.Namespace, overrides: Overrides) -> int:
    from tracecanary.demo.broker import free_port
    from tracecanary.demo.world import WEBHOOK_SECRET, DemoSettings, start_world

    listen = overrides.listen or "127.0.0.1:8080"
    otlp_http = overrides.otlp_http if overrides.otlp_http not in (None, "none") else f"127.0.0.1:{free_port()}"
    console = Console()
    console.print("[bold]tracecanary demo[/bold]: starting a Kafka broker, Slack/GitHub/Sentry emulators and the shop…")
    world = await start_world(f"http://{otlp_http}")
    try:
        store = overrides.store or f"sqlite:///{world.workdir / 'demo.db'}"
        # The suite's ${DEMO_*} come from the world, never written into this process's environment.
        environ = {**os.environ, **world.env,
                   "DEMO_LISTEN": listen, "DEMO_OTLP_HTTP": otlp_http, "DEMO_STORE": store}
        path = demo_config_path()
        cfg = load_config(path, environ)
        try:
            world.settings = DemoSettings.model_validate(cfg.extra.demo or {})
        except ValueError as e:
            raise ConfigError([f"{path}: demo: {e}"]) from e
        # GitHub deliveries reach the daemon's /hooks/github (once it listens), signed like GitHub's.
        world.github.webhook_secret = WEBHOOK_SECRET
        fixed = Overrides(listen=listen, otlp_http=otlp_http, otlp_grpc="none", store=store)
        if args.once:
            return await _once(cfg, world, fixed, chaos=args.chaos, console=console)
        return await _daemon(path, cfg, environ, world, fixed, chaos=args.chaos, console=console)
    finally:
        with anyio.CancelScope(shield=True):
            await world.aclose()


async def _daemon(path: Path, cfg: Config, environ: Mapping[str, str], world: DemoWorld, overrides: Overrides,
                  *, chaos: bool, console: Console) -> int:
    from tracecanary.daemon.app import Daemon

    def ready(daemon: Daemon) -> None:
        url = f"http://{daemon.engine.addresses.get('api', overrides.listen)}"
        world.github.webhook_url = f"{url}/hooks/github"
        console.print(f"\n[bold green]dashboard:[/bold green] {url}\n")
        if world.settings.tour:
            console.print(world.settings.tour.rstrip())
        console.print(f"\nfaults: {', '.join(f.name for f in world.settings.faults)} — toggle them on the "
                      f"dashboard{' (rotating every 2 minutes: --chaos)' if chaos else ''}. Ctrl-C stops.")

    daemon = Daemon(path, cfg, overrides, on_ready=ready, demo=world, environ=environ)
    async with anyio.create_task_group() as tg:
        if chaos:
            tg.start_soon(_rotate_faults, world, console)
        code = await daemon.run()
        tg.cancel_scope.cancel()
    return code


async def _rotate_faults(world: DemoWorld, console: Console) -> None:
    names = [f.name for f in world.settings.faults]
    while names:
        for name in [*names, None]:
            await anyio.sleep(CHAOS_ROTATE_S)
            await world.set_fault(name)
            console.print(f"[yellow]chaos:[/yellow] {name or 'all faults off'}")


async def _once(cfg: Config, world: DemoWorld, overrides: Overrides, *, chaos: bool, console: Console) -> int:
    engine = Engine(cfg, overrides, serve_api=True)
    passes: list[tuple[str, list[str], dict[str, tuple[str | None, list[str]]]]] = []
    async with engine.started():
        world.github.webhook_url = f"http://{engine.addresses['api']}/hooks/github"
        faults = list(world.settings.faults) if chaos else []
        for fault in [None, *faults]:
            await world.set_fault(fault.name if fault else None)
            results = await _one_pass(engine, cfg.probes)
            passes.append((fault.name if fault else "clean", _mismatches(fault, results), results))
        await world.set_fault(None)
    _print_passes(console, passes)
    return 0 if all(not miss for _, miss, _ in passes) else 1


def _mismatches(fault: FaultDeclaration | None, results: dict[str, tuple[str | None, list[str]]]) -> list[str]:
    from tracecanary.demo.world import mismatches

    return mismatches(fault, results)


async def _one_pass(engine: Engine, probes: list[ProbeSpec]) -> dict[str, tuple[str | None, list[str]]]:
    results: dict[str, tuple[str | None, list[str]]] = {}

    async def one(probe: ProbeSpec) -> None:
        run = (await engine.runner.run_probe(probe, retry_delay_override_s=0.0))[-1]  # the final attempt
        findings = [f"{f.path}: {f.message}" if f.path else f.message for f in run.findings]
        results[probe.id] = (run.verdict.value if run.verdict else None, findings)

    async with anyio.create_task_group() as tg:
        for probe in probes:
            if probe.judges_run:
                tg.start_soon(one, probe)
    passive = [p for p in probes if not p.judges_run]
    if passive:  # they judge the traffic the others made: once it is all judged (deadlines bound the wait)
        with anyio.move_on_after(max(p.timeout for p in passive) + PASSIVE_SLACK_S):
            await engine.passive.settled()
        async with anyio.create_task_group() as tg:
            for probe in passive:
                tg.start_soon(one, probe)
    return results


def _print_passes(console: Console, passes: list[tuple[str, list[str], dict[str, tuple[str | None, list[str]]]]]
                  ) -> None:
    for name, miss, results in passes:
        table = Table(title=f"pass: {name} — {'matches its declaration' if not miss else 'MISMATCH'}")
        for col in ("probe", "verdict", "first finding"):
            table.add_column(col, overflow="fold")
        for probe_id, (verdict, findings) in sorted(results.items()):
            style = "green" if verdict in ("pass", "degraded") else "red"
            table.add_row(probe_id, f"[{style}]{verdict}[/]", findings[0] if findings else "")
        console.print(table)
        for m in miss:
            console.print(f"  [red]✗[/red] {m}")
    ok = sum(1 for _, miss, _ in passes if not miss)
    console.print(f"\n{ok} of {len(passes)} passes match their declarations")
