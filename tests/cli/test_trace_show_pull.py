"""`tracecanary trace show ID --source jaeger|tempo` as a user runs it: the real CLI in a subprocess
against the emulators, configured by a suite file."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import anyio
import pytest

from tests.spans.pull_support import FLAVOURS, Flavour, backend, ingest, sample_trace

pytestmark = pytest.mark.anyio
CLI = [sys.executable, "-m", "tracecanary.daemon.cli"]
SHOWN = [FLAVOURS[0], FLAVOURS[7]]


def suite(tmp_path: Path, flavour: Flavour, url: str | None) -> Path:
    lines = [f"integrations:\n  {flavour.backend}:"]
    if url:
        lines.append(f"    url: {url}")
    if flavour.tenant():
        lines.append(f"    tenant: {flavour.tenant()}")
    lines += ["links:", f"  {flavour.backend}: \"http://ui.local/trace/{{trace_id}}\"", "probes: []", ""]
    path = tmp_path / "suite.yaml"
    path.write_text("\n".join(lines) if url else f"integrations:\n  {flavour.backend}: {{}}\nprobes: []\n")
    return path


async def show(config: Path, trace_id: str, source: str) -> tuple[int, str, str]:
    result = await anyio.run_process([*CLI, "trace", "show", trace_id, "--source", source, "--config", str(config)],
                                     check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.mark.parametrize("flavour", SHOWN, ids=[f.name for f in SHOWN])
async def test_show_prints_waterfall_and_link(tmp_path: Path, flavour: Flavour) -> None:
    sent = sample_trace(error=True)
    tid = sent[0].trace_id
    async with backend(flavour) as emulator:
        ingest(emulator, sent, flavour.tenant())
        with anyio.fail_after(60):
            code, out, err = await show(suite(tmp_path, flavour, emulator.base_url), tid.upper(), flavour.backend)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"trace {tid} · 3 spans"), out
    assert any("] POST /checkout (shop) server" in line for line in lines), out
    assert any("]   charge-card (payments) client" in line and "ERROR: card declined" in line for line in lines), out
    assert lines[-1] == f"{flavour.backend}: http://ui.local/trace/{tid}"


@pytest.mark.parametrize("flavour", SHOWN, ids=[f.name for f in SHOWN])
async def test_show_unknown_trace_and_missing_url(tmp_path: Path, flavour: Flavour) -> None:
    tid = secrets.token_hex(16)
    async with backend(flavour) as emulator:
        with anyio.fail_after(60):
            code, out, _ = await show(suite(tmp_path, flavour, emulator.base_url), tid, flavour.backend)
    assert code == 0 and out.startswith(f"trace {tid}: not in {flavour.backend.capitalize()} (yet"), out
    with anyio.fail_after(60):
        code, _, err = await show(suite(tmp_path, flavour, None), tid, flavour.backend)
    assert code == 2
    assert f"integrations.{flavour.backend} needs url" in err, err
