"""Self-reporting and Crons check-ins through the real sentry-sdk, in a subprocess, into the emulator."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tracecanary.daemon.observe.sentry import CronReporter, SecretScrubber
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.probes.http import HttpProbe

CHILD = Path(__file__).with_name("sentry_reporting_child.py")


def _probe(**kw: Any) -> HttpProbe:
    return HttpProbe.model_validate({"id": "p", "kind": "http", "request": {"url": "http://127.0.0.1:9/"}, **kw})


@pytest.mark.anyio
async def test_failed_run_produces_error_check_in_and_scrubbed_event(sentry_emulator: SentryEmulator) -> None:
    with anyio.fail_after(30):
        result = await anyio.run_process([sys.executable, str(CHILD), sentry_emulator.dsn()])
    failed_id, passed_id = result.stdout.decode().split()[1:3]
    url = f"{sentry_emulator.base_url}/api/0/organizations/acme/monitors/tracecanary-orders-webhook/checkins/"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {sentry_emulator.token}"}) as session:
        with anyio.fail_after(10):
            async with session.get(url) as resp:
                assert resp.status == 200
                check_ins = await resp.json()
    by_id = {c["id"]: c for c in check_ins}
    assert by_id[failed_id]["status"] == "error" and by_id[failed_id]["duration"] == 1250
    assert by_id[passed_id]["status"] == "ok"
    assert check_ins[0]["monitorConfig"] == {
        "schedule": {"type": "interval", "value": 5, "unit": "minute"},
        "timezone": "UTC",
        "checkin_margin": 2,  # 20% jitter of 5m = 1m, plus one
        "max_runtime": 4,  # 2 attempts x 90s + 30s delay = 210s
        "failure_issue_threshold": 2,
        "recovery_threshold": 3,
    }
    (event,) = sentry_emulator.store.errors
    text = json.dumps(event.payload)
    assert "xoxb-1234567890" not in text and "s3cr3t-webhook-value" not in text
    assert event.payload["tags"] == {"service": "tracecanary", "probe_id": "orders-webhook", "run_id": "run-42"}
    (exc,) = event.payload["exception"]["values"]
    assert exc["type"] == "WebhookRejectedError"
    assert exc["value"] == "POST refused with token [Filtered] and secret [Filtered]"
    frame_vars = exc["stacktrace"]["frames"][-1]["vars"]
    assert frame_vars["headers"] == {"Authorization": "[Filtered]", "Cookie": "[Filtered]"}


def test_scrub_event_masks_headers_tokens_and_cookies() -> None:
    event = {
        "request": {
            "headers": {"Authorization": "Bearer abc.def.ghi", "X-Slack-Signature": "v0=dead", "Accept": "*/*"},
            "cookies": {"session": "x"},
            "url": "https://user:pa55@hooks.example.com/x",
        },
        "breadcrumbs": {"values": [{"message": "posting with xapp-1-A0-123456789-abcdef and ghp_" + "a" * 36}]},
        "extra": {"pairs": [["Cookie", "sid=1"], ["Accept", "json"]], "count": 3},
    }
    out = SecretScrubber()(event, {})
    assert out["request"]["headers"] == {"Authorization": "[Filtered]", "X-Slack-Signature": "[Filtered]", "Accept": "*/*"}
    assert "cookies" not in out["request"]
    assert out["request"]["url"] == "https://[Filtered]@hooks.example.com/x"
    assert out["breadcrumbs"]["values"][0]["message"] == "posting with [Filtered] and [Filtered]"
    assert out["extra"] == {"pairs": [["Cookie", "[Filtered]"], ["Accept", "json"]], "count": 3}


def test_monitor_config_from_schedule() -> None:
    reporter = CronReporter()
    cron = reporter.monitor_config(_probe(cron="0 8 * * *", timezone="America/Los_Angeles", timeout="30s"))
    assert cron is not None
    assert cron["schedule"] == {"type": "crontab", "value": "0 8 * * *"}
    assert cron["timezone"] == "America/Los_Angeles" and cron["max_runtime"] == 1 and cron["checkin_margin"] == 1
    hourly = reporter.monitor_config(_probe(every="2h", jitter="0%"))
    assert hourly is not None and hourly["schedule"] == {"type": "interval", "value": 2, "unit": "hour"}
    fast = reporter.monitor_config(_probe(every="15s"))
    assert fast is not None and fast["schedule"] == {"type": "interval", "value": 1, "unit": "minute"}
    assert reporter.monitor_config(_probe()) is None
    assert reporter.monitor_slug(_probe(id="x" * 90)) == ("tracecanary-" + "x" * 90)[:50]


def test_each_scrubber_masks_the_secrets_it_was_built_with() -> None:
    a, b = SecretScrubber(["s3cr3t-of-a", "abc"]), SecretScrubber(["s3cr3t-of-b"])
    event = {"message": "a=s3cr3t-of-a b=s3cr3t-of-b abc", "extra": {"note": ("s3cr3t-of-a",)}}
    assert a(dict(event)) == {"message": "a=[Filtered] b=s3cr3t-of-b abc", "extra": {"note": ["[Filtered]"]}}
    assert b(dict(event))["message"] == "a=s3cr3t-of-a b=[Filtered] abc"  # no state shared between scrubbers
