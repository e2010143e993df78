"""Judging a demo pass against its declaration (what `tracecanary demo --once` exits on)."""

from __future__ import annotations

from tracecanary.demo.world import FaultDeclaration, mismatches

FAULT = FaultDeclaration(name="drop-span", inject="drop-span", verdicts={"shop-webhook": "fail"},
                         finding={"shop-webhook": "fetch-gex-data"})
GEX = 'expect.trace.tree[0].children[1].children[1]: expected span "fetch-gex-data" … not found'


def test_clean_pass_needs_every_probe_passing() -> None:
    assert mismatches(None, {"a": ("pass", []), "b": ("degraded", [])}) == []
    assert mismatches(None, {"a": ("fail", ["x: boom"])}) == ["a: expected verdict pass, observed fail (x: boom)"]


def test_fault_pass_needs_declared_verdict_and_finding() -> None:
    assert mismatches(FAULT, {"shop-webhook": ("fail", [GEX]), "other": ("pass", [])}) == []
    assert mismatches(FAULT, {"shop-webhook": ("pass", []), "other": ("pass", [])}) == [
        "shop-webhook: expected verdict fail, observed pass"]
    assert mismatches(FAULT, {"shop-webhook": ("fail", ["limits: too slow"])}) == [
        "shop-webhook: expected a finding containing 'fetch-gex-data', observed ['limits: too slow']"]
    assert mismatches(FAULT, {"other": ("fail", [])}) == [
        "other: expected verdict pass, observed fail", "shop-webhook: declared for fault drop-span but did not run"]
