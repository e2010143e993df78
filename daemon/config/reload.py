"""What a reload (SIGHUP) cannot apply: the settings the running engine keeps until a restart."""

from __future__ import annotations

from tracecanary.daemon.config.load import Config

RESTART_SETTINGS = ("listen", "otlp", "store", "buffer", "kafka", "max_concurrent_runs", "telemetry",
                    "poll_interval")
"""``daemon.*`` settings the running engine keeps until a restart (the others follow a reload)."""


def needs_restart(old: Config, new: Config) -> list[str]:
    """The settings changed between two configs that a reload does not apply (named in its log line)."""
    changed = [f"daemon.{key}" for key in RESTART_SETTINGS
               if getattr(old.daemon, key) != getattr(new.daemon, key)]
    if old.integrations != new.integrations:
        changed.append("integrations (probes and watchers; alert channels follow the reload)")
    if old.extra.demo != new.extra.demo:
        changed.append("demo")
    return changed
