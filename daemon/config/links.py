"""Trace links: URL templates rendered per run into reports, alerts and the dashboard.

The ``links:`` setting maps a name to a URL template. Placeholders: ``{trace_id}`` (32 hex),
``{run_id}``, ``{probe_id}``, ``{org}`` (from ``integrations.sentry.org``) and ``{host}`` (the
``host`` setting, for self-hosted backends). Values are URL-quoted before substitution. Examples::

    links:
      sentry: "https://{org}.sentry.io/explore/traces/trace/{trace_id}"            # sentry.io (default)
      # self-hosted Sentry: name it `sentry` too, so it replaces the sentry.io default
      # sentry: "https://{host}/organizations/{org}/explore/traces/trace/{trace_id}"
      jaeger: "http://jaeger.internal:16686/trace/{trace_id}"
      tempo: "https://grafana.internal/explore?left=%7B%22datasource%22:%22tempo%22,%22queries%22:%5B%7B%22query%22:%22{trace_id}%22%7D%5D%7D"
      dashboard: "http://tracecanary.internal:8080/runs/{run_id}"

A template naming a placeholder with no value (``{org}`` without a Sentry org) is skipped rather than
rendered into a broken URL; when no ``sentry`` template is configured and an org is known, the
sentry.io link is added by default. ``{host}`` comes from the caller (for self-hosted Sentry the host
of ``integrations.sentry.api_url``, see :func:`host_of`).
"""

from __future__ import annotations

import string
from typing import Protocol
from urllib.parse import quote, urlsplit

from pydantic import ConfigDict, Field, RootModel, field_validator

SENTRY_SAAS = "https://{org}.sentry.io/explore/traces/trace/{trace_id}"
PLACEHOLDERS = frozenset({"org", "trace_id", "host", "run_id", "probe_id"})


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class LinkSettings(RootModel[dict[str, str]]):
    """The ``links:`` section: link name → URL template.

    Placeholders: {org} {trace_id} {host} {run_id} {probe_id}; e.g.
    ``sentry: https://{org}.sentry.io/explore/traces/trace/{trace_id}``. An empty section still yields
    the sentry.io link when ``integrations.sentry.org`` is set.
    """

    model_config = ConfigDict(frozen=True)

    root: dict[str, str] = Field(default_factory=dict)

    @field_validator("root")
    @classmethod
    def _known_placeholders(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            try:
                unknown = _fields(template) - PLACEHOLDERS
            except ValueError as e:
                raise ValueError(f"link {name!r}: invalid template {template!r}: {e}") from e
            if unknown:
                raise ValueError(
                    f"link {name!r}: unknown placeholder {{{sorted(unknown)[0]}}}; "
                    f"known: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
                )
        return value


class LinkRenderer(Protocol):
    """Renders one run's trace links: the engine's ``links_for`` (``links:`` with org and host bound)."""

    def __call__(self, trace_id: str, run_id: str, probe_id: str) -> dict[str, str]:
        """Link name → URL for one run."""
        ...


def host_of(url: str | None) -> str | None:
    """``{host}`` for a self-hosted backend: the host[:port] of e.g. ``integrations.sentry.api_url``."""
    return urlsplit(url).netloc or None if url else None


def render_links(
    settings: LinkSettings,
    *,
    trace_id: str,
    run_id: str = "",
    probe_id: str = "",
    org: str | None = None,
    host: str | None = None,
) -> dict[str, str]:
    """Every link whose placeholders all have values (sentry.io default first when ``org`` is set).

    ``host`` fills {host} (pass ``host_of(integrations.sentry.api_url)`` for self-hosted Sentry).
    A template with a placeholder lacking a value is skipped, never rendered half-empty.
    """
    values = {"trace_id": trace_id, "run_id": run_id, "probe_id": probe_id, "org": org or "", "host": host or ""}
    templates = dict(settings.root)
    if org and "sentry" not in templates:
        templates = {"sentry": SENTRY_SAAS, **templates}
    out: dict[str, str] = {}
    for name, template in templates.items():
        needed = _fields(template)
        if any(not values[p] for p in needed):
            continue
        out[name] = template.format(**{p: quote(values[p], safe=":@") for p in needed})
    return out
