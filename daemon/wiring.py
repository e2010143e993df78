"""Routes and hooks attached to an Engine for `run` and `check`.

Kept apart from engine.py so the engine stays the small shared core of both commands.
"""

from __future__ import annotations

from aiohttp import web

from .control import Control
from .engine import Engine


def _common_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    from .hooks_github import github_hook_routes
    from .metrics import metrics_routes

    hub = engine.services.github_events
    assert hub is not None
    return [*metrics_routes(engine.metrics),
            *github_hook_routes(hub, engine.config.integrations.github.webhook_secret)]


def wire_check(engine: Engine) -> None:
    """`check`: span intake and runner; with --listen also /metrics and /hooks/github."""
    engine.extra_routes.append(_common_routes)


def wire_daemon(engine: Engine, control: Control) -> None:
    """`run`: alerts, /metrics, /hooks/github, the API and the dashboard."""
    from .api import api_routes
    from .dashboard.views import dashboard_routes

    engine.daemon_mode = True
    d = engine.config.daemon
    token, reads = d.api_token, d.api_token is not None and d.protect_reads
    engine.extra_routes.append(_common_routes)
    engine.extra_routes.append(lambda e: [*api_routes(control, api_token=token, read_token_required=reads)])
    engine.extra_routes.append(
        lambda e: [*dashboard_routes(control, api_token=token, read_token_required=reads)])
