"""Reporting into Sentry natively: the daemon's own exceptions, and a Crons monitor per probe.

One DSN (``integrations.sentry.dsn``) serves self-reporting and check-ins. sentry-sdk is
process-global: call :func:`init_sentry` once at startup, with the :class:`SecretScrubber` built from
the config's credentials (it becomes sentry-sdk's ``before_send``). Nothing here enables sentry-sdk tracing or
its auto-enabled integrations: the aiohttp/stdlib integrations would rewrite the ``sentry-trace`` and
``baggage`` headers our probes inject (``trace_propagation_targets`` is empty for the same reason).

Check-ins (``sentry_sdk.crons.capture_checkin``): ``in_progress`` when a probe fires, ``ok``/``error``
with the duration at the verdict, and the monitor upserted from the probe's schedule each time, so
Sentry notices when tracecanary itself stops running (a *missed* check-in) or hangs (*timeout*).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from typing import Any, ClassVar

import sentry_sdk
from sentry_sdk.crons import capture_checkin
from sentry_sdk.crons.consts import MonitorStatus
from sentry_sdk.integrations.logging import LoggingIntegration

from tracecanary.daemon.config.secrets import Secrets
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.sentry_reporting")

FILTERED = "[Filtered]"
_SENSITIVE_KEY_RE = re.compile(
    r"(?i)(authorization|cookie|token|secret|passw(or)?d|api[-_]?key|signature|x-sentry-auth|dsn|credentials?|session)"
)
_SECRET_VALUE_RE = re.compile(
    r"(?i)(?P<scheme>\b(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}"  # Authorization header values
    r"|\bxox[abposre]-[A-Za-z0-9-]{8,}"  # Slack bot/user tokens
    r"|\bxapp-[A-Za-z0-9-]{8,}"  # Slack app-level tokens
    r"|\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{16,}|\bgithub_pat_[A-Za-z0-9_]{16,}"  # GitHub tokens
    r"|\bsntry[su]_[A-Za-z0-9+/=_-]{16,}"  # Sentry auth tokens
    r"|(?<=://)[^/\s:@]+(?::[^/\s@]*)?(?=@)"  # user[:password]@ in URLs (DSN keys too)
)
_MAX_DEPTH = 12
SHUTDOWN_TIMEOUT_S = 2.0
"""How long sentry-sdk may take to send what is queued when the process exits."""


class SecretScrubber:
    """sentry-sdk's ``before_send``: drop cookies, mask sensitive keys (Authorization, *token*, *secret* …),
    token-shaped strings (Slack, GitHub, Sentry, bearer values, URL credentials) and the known secrets
    (literal values, e.g. the tokens of ``integrations:``) anywhere in the event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # The config's secrets (Config.secrets(): by provenance), masked the way every other output masks them.
        self._secrets = secrets if isinstance(secrets, Secrets) else Secrets(secrets)

    def __call__(self, event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
        """The scrubbed event (``hint``: sentry-sdk's, unused)."""
        request = event.get("request")
        if isinstance(request, dict):
            request.pop("cookies", None)
        scrubbed = self.scrub(event)
        assert isinstance(scrubbed, dict)
        return scrubbed

    def scrub(self, value: Any, depth: int = 0) -> Any:
        """``value`` with every secret masked (dicts, lists and tuples walked up to a fixed depth)."""
        if depth > _MAX_DEPTH:
            return value
        if isinstance(value, str):
            return self._scrub_text(value)
        if isinstance(value, dict):
            return {
                k: FILTERED if isinstance(k, str) and _SENSITIVE_KEY_RE.search(k) and v not in (None, "")
                else self.scrub(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            items = [self.scrub(v, depth + 1) for v in value]
            # Header lists come as [name, value] pairs: judge the value by its name.
            if len(items) == 2 and isinstance(items[0], str) and _SENSITIVE_KEY_RE.search(items[0]):
                items[1] = FILTERED
            return items
        return value

    def _scrub_text(self, text: str) -> str:
        text = self._secrets.mask_text(text, FILTERED)
        return _SECRET_VALUE_RE.sub(lambda m: (m.group("scheme") or "") + FILTERED, text)


def init_sentry(dsn: str, *, environment: str, release: str, scrubber: SecretScrubber) -> None:
    """Initialise sentry-sdk for the daemon: errors only, scrubbed by ``scrubber``, tagged
    ``service: tracecanary``."""
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        before_send=scrubber,  # type: ignore[arg-type]
        send_default_pii=False,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
        trace_propagation_targets=[],
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    sentry_sdk.set_tag("service", "tracecanary")
    log.info("sentry reporting on environment=%s release=%s", environment, release)


def capture_daemon_exception(exc: BaseException, probe_id: str | None = None, run_id: str | None = None) -> str | None:
    """Report a daemon exception tagged with the probe and run; returns the Sentry event id."""
    with sentry_sdk.new_scope() as scope:
        if probe_id:
            scope.set_tag("probe_id", probe_id)
        if run_id:
            scope.set_tag("run_id", run_id)
        return sentry_sdk.capture_exception(exc)


def flush(timeout_s: float = 2.0) -> None:
    """Send what is queued (at shutdown, and in tests)."""
    sentry_sdk.flush(timeout=timeout_s)


def _interval_schedule(every_s: float) -> dict[str, Any]:
    # Sentry intervals have no seconds: a sub-minute probe checks in more often than its schedule.
    minutes = max(1, math.ceil(every_s / 60))
    if minutes % 1440 == 0:
        return {"type": "interval", "value": minutes // 1440, "unit": "day"}
    if minutes % 60 == 0:
        return {"type": "interval", "value": minutes // 60, "unit": "hour"}
    return {"type": "interval", "value": minutes, "unit": "minute"}


class CronReporter:
    """Sentry Crons check-ins per probe: one monitor per probe id (``tracecanary-{probe id}``).

    The monitor config is derived from the probe: schedule (``every`` → interval, ``cron`` → crontab
    with ``timezone``), ``checkin_margin`` covering the probe's jitter, ``max_runtime`` covering its
    timeout times its attempts plus the delays between them, and the failure/recovery thresholds given here.
    """

    SLUG_PREFIX: ClassVar[str] = "tracecanary-"
    MIN_CHECKIN_MARGIN_MIN: ClassVar[int] = 1

    def __init__(self, *, failure_issue_threshold: int = 1, recovery_threshold: int = 1) -> None:
        self.failure_issue_threshold = failure_issue_threshold
        self.recovery_threshold = recovery_threshold

    def monitor_slug(self, probe: ProbeSpec) -> str:
        """Sentry monitor slugs are at most 50 characters of [a-z0-9_-]."""
        return f"{self.SLUG_PREFIX}{probe.id}"[:50]

    def monitor_config(self, probe: ProbeSpec) -> dict[str, Any] | None:
        """The upsert config, or None for a probe without a schedule (check-ins only)."""
        config: dict[str, Any] = {
            "timezone": probe.timezone,
            "failure_issue_threshold": self.failure_issue_threshold,
            "recovery_threshold": self.recovery_threshold,
        }
        if probe.cron is not None:
            config["schedule"] = {"type": "crontab", "value": probe.cron}
            jitter_s = 0.0
        elif probe.every is not None:
            config["schedule"] = _interval_schedule(probe.every)
            jitter_s = probe.every * probe.jitter
        else:
            return None
        attempts = probe.retries.count + 1
        runtime_s = probe.timeout * attempts + probe.retries.delay * probe.retries.count
        config["checkin_margin"] = max(self.MIN_CHECKIN_MARGIN_MIN, math.ceil(jitter_s / 60) + 1)
        config["max_runtime"] = max(1, math.ceil(runtime_s / 60))
        return config

    def checkin_start(self, probe: ProbeSpec) -> str:
        """``in_progress`` check-in (upserting the monitor); returns its check-in id ("" when Sentry is off)."""
        check_in_id = capture_checkin(
            monitor_slug=self.monitor_slug(probe),
            status=MonitorStatus.IN_PROGRESS,
            monitor_config=self.monitor_config(probe),  # type: ignore[arg-type]
        )
        return check_in_id or ""

    def checkin_finish(self, probe: ProbeSpec, check_in_id: str, ok: bool, duration_s: float) -> None:
        """Close the run's check-in: ``ok`` or ``error`` with the run's duration in seconds."""
        capture_checkin(
            monitor_slug=self.monitor_slug(probe),
            check_in_id=check_in_id or None,
            status=MonitorStatus.OK if ok else MonitorStatus.ERROR,
            duration=duration_s,
            monitor_config=self.monitor_config(probe),  # type: ignore[arg-type]
        )
