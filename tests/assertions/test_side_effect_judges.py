"""judge_slack / judge_github: pure judgement of what the watchers observed."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tracecanary.assertions.side_effects import (
    GithubEffect,
    SideEffect,
    SlackEffect,
    judge_github,
    judge_slack,
    slack_blocks_text,
)

BOT_REPLY = {"type": "message", "bot_id": "B0BOT", "user": "U0BOT", "ts": "2.000001", "text": "pong",
             "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*ORB_BREAKOUT* fired"}}]}
HUMAN = {"type": "message", "user": "U0HUMAN", "ts": "2.000002", "text": "pong too"}


def slack(**kw: Any) -> SlackEffect:
    return SlackEffect.model_validate({"channel": "C1", **kw})


def test_slack_pass_and_from_rules() -> None:
    assert judge_slack(slack(text="pong"), [BOT_REPLY]) == []
    assert judge_slack(slack(**{"from": "any bot"}), [BOT_REPLY]) == []
    assert judge_slack(slack(**{"from": "B0BOT"}), [HUMAN, BOT_REPLY]) == []
    [f] = judge_slack(slack(**{"from": "any bot"}), [HUMAN])
    assert "from: expected any bot, got user U0HUMAN" in f.message


def test_slack_blocks_text() -> None:
    assert slack_blocks_text(BOT_REPLY["blocks"]) == "*ORB_BREAKOUT* fired"
    assert judge_slack(slack(blocks_text={"contains": "ORB_BREAKOUT"}), [BOT_REPLY]) == []
    [f] = judge_slack(slack(blocks_text={"contains": "GAP_FILL"}), [BOT_REPLY])
    assert "blocks_text: expected to contain 'GAP_FILL', got '*ORB_BREAKOUT* fired'" in f.message


def test_slack_miss_quotes_last_messages_and_absent() -> None:
    [f] = judge_slack(slack(text={"matches": "^done"}, within="30s"), [BOT_REPLY, HUMAN])
    assert f.message.startswith("Slack C1: no matching message within 30s; 2 arrived, none matched: B0BOT 'pong'")
    assert f.expected == {"text": {"matches": "^done"}}
    assert [q["text"] for q in f.observed] == ["pong", "pong too"]
    assert judge_slack(slack(absent=True, text="pong"), [HUMAN]) == []
    [g] = judge_slack(slack(absent=True, text="pong"), [BOT_REPLY])
    assert g.message == "Slack C1: expected no matching message within 60s, got 1: 'pong'"


def comment(body: str, login: str = "bot[bot]") -> dict[str, Any]:
    return {"body": body, "user": {"login": login}}


def test_github_comment_review_check_run() -> None:
    eff = GithubEffect.model_validate({"repo": "a/b", "pull": 3, "comment": {"contains": "LGTM"},
                                       "review": {"state": "approved"},
                                       "check_run": {"name": "lint", "conclusion": "success"}})
    observed = {"comments": [comment("nit")], "review_comments": [comment("LGTM!")],
                "reviews": [{"state": "APPROVED", "body": "", "user": {"login": "x"}}],
                "check_runs": [{"name": "lint", "status": "completed", "conclusion": "success"}]}
    assert judge_github(eff, observed) == []
    observed["check_runs"] = [{"name": "lint", "status": "completed", "conclusion": "failure"}]
    [f] = judge_github(eff, observed)
    assert f.path == "side_effects.github.check_run"
    assert "check_run.conclusion: expected 'success', got 'failure'" in f.message


def test_github_any_comment_and_absent() -> None:
    eff = GithubEffect.model_validate({"repo": "a/b", "issue": 7})
    assert judge_github(eff, {"comments": [comment("hi")]}) == []
    [f] = judge_github(eff, {})
    assert f.message == "GitHub a/b#7: no matching comment within 60s; no comment appeared"
    absent = GithubEffect.model_validate({"repo": "a/b", "issue": 7, "absent": True, "comment": {"contains": "error"}})
    assert judge_github(absent, {"comments": [comment("fine")]}) == []
    [g] = judge_github(absent, {"comments": [comment("an error")]})
    assert "expected no matching comment" in g.message and g.observed == [{"user": "bot[bot]", "body": "an error"}]


@pytest.mark.parametrize(("spec", "error"), [
    ({"repo": "a/b"}, "exactly one of pull, issue"),
    ({"repo": "a/b", "pull": 1, "issue": 2}, "exactly one of pull, issue"),
    ({"repo": "ab", "pull": 1}, "expected owner/name"),
    ({"repo": "a/b", "issue": 1, "review": {"state": "APPROVED"}}, "review and check_run need a pull"),
])
def test_github_effect_validation(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        SideEffect.model_validate({"github": spec})
