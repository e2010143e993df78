"""Optional components attached to an Engine: API, dashboard, metrics, alerts, hooks, telemetry.

Kept apart from engine.py so the engine stays the small shared core of `run` and `check`.
"""

from __future__ import annotations

from .engine import Engine


def wire_check(engine: Engine) -> None:
    """`check`: the span intake and runner only (plus the API when --listen is given)."""
    _wire_common(engine)


def wire_daemon(engine: Engine) -> None:
    """`run`: everything."""
    _wire_common(engine)


def _wire_common(engine: Engine) -> None:
    return None
