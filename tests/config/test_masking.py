"""``Secrets``: masking by value, inside longer strings and in their rendered forms; the log filter."""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel

from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.config.secrets import REDACTED, Secrets, SecretsLogFilter, install_log_masking
from tracecanary.daemon.store.base import RunRecord, RunStatus

TOKEN = 'tok&"<en>/+ 1'  # characters every escaping changes


def test_text_is_masked_in_every_rendered_form() -> None:
    s = Secrets([TOKEN, "abc"])
    for form in (TOKEN, html.escape(TOKEN), json.dumps(TOKEN)[1:-1], quote(TOKEN, safe=""), repr(TOKEN)[1:-1]):
        assert s.mask_text(f"Bearer {form}; done") == f"Bearer {REDACTED}; done"
    # A short value is masked only where a whole string is it: inside text it would eat ordinary words.
    assert s.mask_text("abc") == REDACTED
    assert s.mask_text("abcdef") == "abcdef"
    assert Secrets().mask_text(TOKEN) == TOKEN
    assert "tok" not in repr(s)


def test_longest_secret_wins() -> None:
    s = Secrets(["secret-1", "secret-1-and-more"])
    assert s.mask_text("x secret-1-and-more y secret-1") == f"x {REDACTED} y {REDACTED}"


class Inner(BaseModel):
    note: str
    n: int = 3


@dataclass(frozen=True)
class Frozen:
    name: str
    attrs: dict[str, object] = field(default_factory=dict)


def test_structures_are_copied_where_they_change_and_shared_where_not() -> None:
    s = Secrets(["hunter2-pw"])
    clean = {"a": [1, 2.5, None, True], "b": Inner(note="fine")}
    assert s.mask(clean) is clean
    dirty = {"url": "http://h/?pw=hunter2-pw", "hunter2-pw": 1, "t": ("hunter2-pw",),
             "m": Inner(note="pw hunter2-pw"), "f": Frozen("x", {"k": "hunter2-pw", "n": 5})}
    out = s.mask(dirty)
    assert out == {"url": f"http://h/?pw={REDACTED}", REDACTED: 1, "t": (REDACTED,),
                   "m": Inner(note=f"pw {REDACTED}"), "f": Frozen("x", {"k": REDACTED, "n": 5})}
    assert dirty["url"] == "http://h/?pw=hunter2-pw"  # the original is untouched


def test_a_run_record_is_masked_in_place_enums_kept() -> None:
    s = Secrets(["hunter2-pw", "finished"])  # a secret equal to an enum's value leaves the enum alone
    run = RunRecord(run_id="r", probe_id="p", kind="http", attempt=1, first_run_id="r", trace_id="t",
                    started_ns=0, status=RunStatus.FINISHED, verdict=Verdict.FAIL, log="GET /?k=hunter2-pw",
                    findings=[Finding(type="x", severity=Verdict.FAIL, message="saw hunter2-pw",
                                      observed={"body": "hunter2-pw"})])
    s.mask_in_place(run)
    assert run.status is RunStatus.FINISHED and run.verdict is Verdict.FAIL
    assert run.log == f"GET /?k={REDACTED}"
    assert run.findings[0].message == f"saw {REDACTED}" and run.findings[0].observed == {"body": REDACTED}


def test_log_filter_masks_message_args_and_traceback() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("tests.masking")
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    try:
        install_log_masking(Secrets(["hunter2-pw"]), logger)
        install_log_masking(Secrets(["second-secret"]), logger)  # a reload adds, never replaces
        assert len([f for f in handler.filters if isinstance(f, SecretsLogFilter)]) == 1
        logger.warning("token=%s other=%r", "hunter2-pw", "second-secret")
        try:
            raise ValueError("bad url http://x/?k=hunter2-pw")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert records[0] == f"token={REDACTED} other='{REDACTED}'"
    assert "hunter2-pw" not in records[1] and f"?k={REDACTED}" in records[1]


def test_literal_alert_channel_credentials_are_secrets(tmp_path: Path) -> None:
    """Channel tokens, DSNs, hook URLs, signing secrets and headers written in clear are credentials too."""
    from tracecanary.daemon.config.load import load_config

    suite = tmp_path / "suite.yaml"
    suite.write_text("""
alerts:
  channels:
    ops: {type: slack, channel: C1, token: xoxb-literal-slack-token}
    hook: {type: webhook, url: "https://hooks.example/T0/B0/literalhookpath", secret: literal-hmac-key,
           headers: {Authorization: Bearer literal-header-token, Content-Type: application/json}}
    err: {type: sentry, dsn: "https://literalpublickey@o1.ingest.sentry.io/2"}
  policies: {default: {channels: [ops, hook, err]}}
""")
    secrets = load_config(suite).secrets()
    for value in ("xoxb-literal-slack-token", "https://hooks.example/T0/B0/literalhookpath", "literal-hmac-key",
                  "Bearer literal-header-token", "https://literalpublickey@o1.ingest.sentry.io/2"):
        assert secrets.mask_text(f"x {value} y") == f"x {REDACTED} y", value
    assert secrets.mask_text("application/json") == "application/json"  # a public header stays readable
