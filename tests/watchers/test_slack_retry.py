"""Transient Slack failures during a watch (HTTP 5xx, dropped connections) are retried with backoff;
one that lasts until the window closes is reported with the last error."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest

from tests.watchers.support import probe_context
from tests.watchers.test_slack_flow import CHANNEL, effect, fast_services, integrations, slack_world
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.watchers.base import Backoff, EventHub, Services, WatchContext
from tracecanary.daemon.watchers.slack import watch_slack
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.probes.slack import SlackMentionProbe

FAST = Backoff(initial_s=0.02, factor=2.0, max_s=0.1)


async def mention_and_watch(em: SlackEmulator, services: Services, within: str, *, fail: int,
                            **fault: Any) -> tuple[str, list[Finding]]:
    """Mention the bot, make the next ``fail`` reads of the thread fail, then watch for the reply."""
    async with aiohttp.ClientSession() as session:
        ctx = probe_context(session, integrations(em))
        fired = await SlackMentionProbe(id="bot-check", channel=CHANNEL, bot_user_id="U0BOT").fire(ctx)
        em.fail(fail, methods=("conversations.replies",), **fault)
        wctx = WatchContext(probe=ctx, services=services, outputs=fired.outputs, poll_interval_s=5.0, backoff=FAST)
        with anyio.fail_after(15):
            findings = await watch_slack(effect(within=within), wctx)
        return ctx.log.text(), findings


@pytest.mark.anyio
@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 503}, {"disconnect": True}])
async def test_polling_retries_transient_failures(fault: dict[str, Any]) -> None:
    async with slack_world() as (_bot, em):
        log, findings = await mention_and_watch(em, fast_services(), "10s", fail=3, **fault)
    assert findings == [] and "via='polling'" in log
    assert em.state.faults == 3  # three failed reads, retried after the backoff (not the 5 s poll interval)


@pytest.mark.anyio
async def test_a_failure_lasting_the_window_is_reported_with_the_last_error() -> None:
    async with slack_world() as (_bot, em):
        _, findings = await mention_and_watch(em, fast_services(), "1s", fail=10**6)
    [finding] = findings
    assert finding.severity == Verdict.ERROR and finding.path == "side_effects.slack"
    assert finding.message.startswith("Slack polling of C0BOTTEST failed until the window closed (")
    assert finding.message.endswith("last error: 503 service_unavailable")
    assert em.state.faults >= 3


@pytest.mark.anyio
async def test_socket_mode_reconcile_retries_transient_failures() -> None:
    # a hub that nothing feeds (the socket dropped the reply's event): the poll before the window closes finds it
    async with slack_world() as (_bot, em):
        log, findings = await mention_and_watch(em, fast_services(EventHub()), "2s", fail=2, status=502)
    assert findings == [] and "via='socket_mode+polling'" in log
    assert em.state.faults == 2


@pytest.mark.anyio
async def test_window_reaching_the_deadline_leaves_the_last_look_time_to_answer() -> None:
    """``within`` longer than the run's timeout: the window closes just before the deadline, so the last
    poll is answered (the reply never came: a plain failure) instead of being cut by the deadline (an
    undecided effect, ``error``) — what a loaded CI machine used to show now and then."""
    async with slack_world(reply_text=None) as (_bot, em), aiohttp.ClientSession() as session:
        ctx = probe_context(session, integrations(em), timeout_s=1.5)
        fired = await SlackMentionProbe(id="bot-check", channel=CHANNEL, bot_user_id="U0BOT").fire(ctx)
        wctx = WatchContext(probe=ctx, services=fast_services(), outputs=fired.outputs, poll_interval_s=0.05,
                            backoff=FAST)
        findings = await watch_slack(effect(within="10s"), wctx)
        finished_before_deadline = anyio.current_time() <= ctx.deadline_s
    [finding] = findings
    assert finding.severity == Verdict.FAIL, finding
    assert finished_before_deadline
