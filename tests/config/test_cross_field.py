"""``cross_field_rule``: a rule across fields is reported beside the field errors, judged on validated
values when the fields are valid and on the values as written when one is not."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError, field_validator
from pydantic_core import PydanticCustomError

from tracecanary.assertions.expect import CountRange, SpanConstraint
from tracecanary.assertions.side_effects import GithubEffect, GithubReview, SideEffect
from tracecanary.daemon.alerts.policy import FailureWindow
from tracecanary.daemon.alerts.silences import SilenceSettings
from tracecanary.model import StrictModel, cross_field_rule
from tracecanary.probes.github import GithubDelivery
from tracecanary.probes.signing import SignSpec
from tracecanary.probes.slack import SlackMentionProbe
from tracecanary.probes.steps import Capture, Step, StepsProbe


def errors(model: type[Any], data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(e["loc"], str(e["msg"]).removeprefix("Value error, ")) for e in info.value.errors()]


def test_rule_and_field_error_in_one_pass() -> None:
    assert errors(SignSpec, {"scheme": "hmac", "secret": "s", "algorithm": "md5"}) == [
        (("algorithm",), "Input should be 'sha1', 'sha256' or 'sha512'"),
        ((), "sign.header is required for scheme hmac"),
    ]


def test_valid_fields_are_judged_as_validated_not_as_written() -> None:
    # "5" is a valid integer (lax mode) and "2s" a valid duration: the rule sees 5 and 2.0
    assert errors(CountRange, {"gte": "5", "lte": 2}) == [((), "count range is empty: at least 5, at most 2")]
    assert errors(SpanConstraint, {"min_duration": "2s", "max_duration": 1}) == [
        ((), "min_duration 2s exceeds max_duration 1s")]


def test_a_rule_on_one_field_points_at_it_valid_or_not() -> None:
    two = [{"name": "a", "wait": "1s"}, {"name": "a", "wait": "1s"}]
    probe = {"id": "p", "kind": "steps"}
    assert errors(StepsProbe, {**probe, "steps": two}) == [(("steps",), "duplicate step name(s): a")]
    assert errors(StepsProbe, {**probe, "steps": [*two, {"wait": "soon"}]}) == [
        (("steps", 2, "wait"), "invalid duration 'soon': expected e.g. 250ms, 30s, 5m"),
        (("steps",), "duplicate step name(s): a"),
    ]


RULED = (Capture, Step, StepsProbe, SignSpec, SlackMentionProbe, GithubDelivery, CountRange, SpanConstraint,
         GithubReview, GithubEffect, SideEffect, FailureWindow, SilenceSettings)


@pytest.mark.parametrize("value", [None, 42, -1, [1], {"a": {}}, "x", "", True, 1.5, "0s", "2030-01-01T00:00:00"])
def test_rules_read_any_type_without_failing(value: Any) -> None:
    for model in RULED:
        try:  # every field given the same value: a config error or a model, never another exception
            model.model_validate({name: value for name in model.model_fields})
        except ValidationError:
            pass


class _Custom(StrictModel):
    a: int = 0
    b: int = 0

    _rule = cross_field_rule(lambda fields: "a exceeds b" if fields.get("a", 0) > fields.get("b", 0) else None)

    @field_validator("b")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2:
            raise PydanticCustomError("odd_number", "{value} is odd", {"value": value})
        return value


def test_a_custom_error_type_is_kept_beside_the_rule() -> None:
    with pytest.raises(ValidationError) as info:
        _Custom.model_validate({"a": 5, "b": 3})
    assert [(e["type"], e["loc"], e["msg"]) for e in info.value.errors()] == [
        ("odd_number", ("b",), "3 is odd"), ("value_error", (), "Value error, a exceeds b")]


def test_matcher_reports_a_bad_regex_and_a_misspelt_operator_in_one_pass() -> None:
    from pydantic import ValidationError

    from tracecanary.assertions.match import Matcher

    with pytest.raises(ValidationError) as e:
        Matcher.model_validate({"matches": "(", "typo": 1})
    assert sorted(str(x["loc"]) for x in e.value.errors()) == ["('matches',)", "('typo',)"]
    with pytest.raises(ValidationError, match="empty matcher"):
        Matcher.model_validate({})
