"""Subprocess for the self-reporting and Crons tests (sentry-sdk is process-global).

``python sentry_reporting_child.py DSN`` initialises reporting with ``init_sentry`` (a ``SecretScrubber``
knowing one config secret), reports one probe run
that fails (in_progress, then error with a duration) and one that passes, captures a daemon
exception carrying secrets, flushes, and prints ``DONE <fail check-in id> <ok check-in id>``.
"""

from __future__ import annotations

import sys

from tracecanary.daemon.observe.sentry import (
    CronReporter,
    SecretScrubber,
    capture_daemon_exception,
    flush,
    init_sentry,
)
from tracecanary.probes.http import HttpProbe

SLACK_TOKEN = "xoxb-1234567890-abcdefghijkl"
CONFIG_SECRET = "s3cr3t-webhook-value"


class WebhookRejectedError(RuntimeError):
    """Raised with secrets in its message and locals, as careless code does."""


def main(dsn: str) -> None:
    init_sentry(dsn, environment="test", release="tracecanary@0.1.0", scrubber=SecretScrubber([CONFIG_SECRET]))
    probe = HttpProbe.model_validate({
        "id": "orders-webhook", "kind": "http", "every": "5m", "jitter": "20%", "timeout": "90s",
        "retries": {"count": 1, "delay": "30s"}, "request": {"url": "http://127.0.0.1:9/webhook"},
    })
    reporter = CronReporter(failure_issue_threshold=2, recovery_threshold=3)
    failed = reporter.checkin_start(probe)
    reporter.checkin_finish(probe, failed, ok=False, duration_s=1.25)
    passed = reporter.checkin_start(probe)
    reporter.checkin_finish(probe, passed, ok=True, duration_s=0.5)
    try:
        headers = {"Authorization": f"Bearer {SLACK_TOKEN}", "Cookie": "session=abc123"}  # noqa: F841 - frame var
        raise WebhookRejectedError(f"POST refused with token {SLACK_TOKEN} and secret {CONFIG_SECRET}")
    except WebhookRejectedError as e:
        capture_daemon_exception(e, probe_id=probe.id, run_id="run-42")
    flush(5.0)
    print(f"DONE {failed} {passed}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
