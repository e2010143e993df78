"""``tracecanary`` as a real child process with its stdout and stderr kept apart, for the output tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from tests.daemon.support import eventually
from tracecanary.demo.broker import free_port


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    async def ready(self) -> None:
        async def check() -> bool:
            assert self.proc.poll() is None, self.text()[-4000:]
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{self.base}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(check, 60, "daemon /readyz")

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        with anyio.fail_after(10):
            async with aiohttp.ClientSession() as s, s.request(method, f"{self.base}{path}", json=body) as r:
                return r.status, await r.text()

    async def stop(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout_s)

    async def wait(self, timeout_s: float = 60) -> int:
        proc = self.proc
        return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=timeout_s))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start(tmp: Path, *args: str, name: str = "child") -> Child:
    """``python -m tracecanary.daemon.cli.main *args``; ``{port}`` in an argument becomes a free port."""
    port = free_port()
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    cmd = [sys.executable, "-m", "tracecanary.daemon.cli.main", *(a.replace("{port}", str(port)) for a in args)]
    proc = subprocess.Popen(cmd, stdout=out.open("wb"), stderr=err.open("wb"), stdin=subprocess.DEVNULL)
    return Child(proc, out, err, port)


def json_lines(*paths: Path) -> list[dict[str, Any]]:
    """Every line of the files parsed as one JSON object (the assertion names the line that is not)."""
    records: list[dict[str, Any]] = []
    for path in paths:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                value = json.loads(line)
            except ValueError as e:
                raise AssertionError(f"{path.name}:{number} is not JSON: {line!r}") from e
            assert isinstance(value, dict), f"{path.name}:{number} is not an object: {line!r}"
            records.append(value)
    return records


def suite(tmp: Path) -> Path:
    """Two paused probes (nothing runs unless asked) aimed at a closed port; one is silenced."""
    dead = free_port()
    path = tmp / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        probes:
          - id: orders
            kind: http
            every: 1h
            pause: true
            request: {{url: "http://127.0.0.1:{dead}/"}}
          - id: billing
            kind: http
            every: 1h
            pause: true
            tags: [maintenance]
            request: {{url: "http://127.0.0.1:{dead}/"}}
            expect: {{trace: {{tree: [{{span: "GET /"}}]}}}}
        alerts:
          silences:
            - {{tags: [maintenance], start: "2020-01-01T00:00:00Z", comment: planned work}}
        """))
    return path


def run_args(tmp: Path, config: Path) -> list[str]:
    return ["run", str(config), "--listen", "127.0.0.1:{port}", "--otlp-http", "127.0.0.1:0",
            "--otlp-grpc", "127.0.0.1:0", "--store", f"sqlite:///{tmp / 'tc.db'}"]
