"""Every benchmark script imports cleanly (CI runs each with --quick after the tests; this fails earlier,
in the test run, when a module a benchmark uses was moved or renamed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports(script: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)  # top level only: each script runs under `if __name__ == "__main__"`
    finally:
        del sys.modules[spec.name]
    assert callable(getattr(module, "main", None)), f"{script.name}: no main()"


def test_the_console_benchmark_control_has_every_member_of_control() -> None:
    """benchmarks/console.py stands in for the daemon's Control; a member added to the protocol must reach it
    (mypy does not check benchmarks/; CI's --quick run found a missing one only after the whole suite)."""
    from tracecanary.daemon.web.control import Control

    spec = importlib.util.spec_from_file_location("benchmark_console_control", BENCHMARKS[0].parent / "console.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    wanted = {name for name in vars(Control) if not name.startswith("_")}
    control = module.BenchControl(store=None, probes=[])
    assert wanted - set(dir(control)) == set()
