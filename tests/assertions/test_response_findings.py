"""Response findings speak plainly: ``status 500, expected 200`` and the first 200 bytes of the body."""

from __future__ import annotations

from typing import Any

from tracecanary.assertions.response import (
    BODY_EXCERPT_BYTES,
    ResponseExpectation,
    body_excerpt,
    judge_response,
)


def _resp(status: int, body: str = "", **kw: Any) -> dict[str, Any]:
    return {"status": status, "headers": {}, "body": body, "json": None, "latency_s": 0.01, **kw}


def test_status_finding_names_observed_and_expected_with_the_body() -> None:
    exp = ResponseExpectation.model_validate({"status": 200})
    [f] = judge_response(exp, _resp(500, '{"error": "database is down"}'))
    assert f.message == 'status 500, expected 200; body: "{\\"error\\": \\"database is down\\"}"'
    assert "[STATUS]" not in f.message
    assert f.expected == "200" and f.observed == 500 and f.details["body"] == '{"error": "database is down"}'


def test_status_finding_with_an_empty_body_says_so() -> None:
    [f] = judge_response(ResponseExpectation.model_validate({"status": [200, 202]}), _resp(404))
    assert f.message == "status 404, expected [200, 202]; empty body"


def test_body_is_cut_at_200_bytes_not_characters() -> None:
    body = "é" * 150 + "tail"  # 2 bytes per é: 300 bytes before the tail
    [f] = judge_response(None, _resp(503, body))
    quoted = f.details["body"]
    assert quoted == "é" * 100 + "…" and len(quoted.removesuffix("…").encode()) == BODY_EXCERPT_BYTES
    assert "tail" not in f.message and f.message.startswith("status 503, expected any 2xx; body: \"éé")


def test_excerpt_never_splits_a_character() -> None:
    assert body_excerpt("a" + "€" * 100) == "a" + "€" * 66 + "…"  # 1 + 66×3 = 199 bytes; a 67th € would be 202
    assert body_excerpt("short") == "short"
    assert body_excerpt("x" * 200) == "x" * 200
