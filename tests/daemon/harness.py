"""Helpers for tests that run ``tracecanary run`` as a real subprocess: a local target, the daemon
process, bounded waits, /metrics readings, and real storage faults (an immutable file, a private
mount namespace with a small tmpfs) that work as root."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.daemon.support import eventually
from tracecanary.demo.broker import free_port


@dataclass
class Target:
    """A local system under test; /slow holds each request until the test releases it."""

    port: int = 0
    hits: list[tuple[str, float]] = field(default_factory=list)
    slow_waiting: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ok(self, request: web.Request) -> web.Response:
        self.hits.append((request.query.get("p", ""), time.time()))
        return web.json_response({"ok": True})

    async def slow(self, request: web.Request) -> web.Response:
        self.hits.append(("slow", time.time()))
        self.slow_waiting += 1
        try:
            await self.release.wait()
        finally:
            self.slow_waiting -= 1
        return web.json_response({"ok": True})

    async def fail(self, request: web.Request) -> web.Response:
        self.hits.append((request.query.get("p", "fail"), time.time()))
        return web.json_response({"error": "broken on purpose"}, status=500)

    async def fail_then_hold(self, request: web.Request) -> web.Response:
        """The first request fails (500); later ones are held like /slow."""
        if any(p == "fail_then_hold" for p, _ in self.hits):
            return await self.slow(request)
        self.hits.append(("fail_then_hold", time.time()))
        return web.json_response({"error": "broken on purpose"}, status=500)

    def times(self, probe: str) -> list[float]:
        return [t for p, t in self.hits if p == probe]

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/ok", self.ok), web.get("/slow", self.slow), web.get("/fail", self.fail),
                        web.get("/fail-then-hold", self.fail_then_hold)])
        return app


class DaemonProcess:
    """``tracecanary run CONFIG`` in a child process, logging to ``daemon.log`` beside the config.

    ``wrapper`` prefixes the command (e.g. ``unshare`` to give the daemon a private mount namespace).
    """

    def __init__(self, config: Path, db: Path, *, wrapper: Sequence[str] = ()) -> None:
        self.config, self.db = config, db
        self.port = free_port()
        self.wrapper = list(wrapper)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "daemon.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [*self.wrapper, sys.executable, "-m", "tracecanary.daemon.cli.main", "run", str(self.config),
                "--listen", f"127.0.0.1:{self.port}", "--otlp-http", "none", "--otlp-grpc", "none",
                "--store", f"sqlite:///{self.db}"]

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    async def get(self, path: str) -> tuple[int, str]:
        """Status and body of ``GET path`` on the daemon's API port; (0, error) when it does not answer."""
        try:
            with anyio.fail_after(10):
                async with aiohttp.ClientSession() as s, s.get(f"{self.base_url}{path}") as r:
                    return r.status, await r.text()
        except (aiohttp.ClientError, TimeoutError) as e:
            return 0, repr(e)

    async def post(self, path: str) -> tuple[int, Any]:
        with anyio.fail_after(10):
            async with aiohttp.ClientSession() as s, s.post(f"{self.base_url}{path}", json={}) as r:
                return r.status, await r.json()

    async def ready(self, path: str = "/readyz") -> None:
        """Wait until ``path`` answers 200 (/healthz: servers bound; /readyz: scheduler running)."""
        async def check() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            return (await self.get(path))[0] == 200

        await eventually(check, 30, f"daemon {path}")

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = await self.get("/readyz")
        return status, json.loads(body) if status else {}

    async def metric(self, name: str, **labels: str) -> float | None:
        """One sample from /metrics (None when absent)."""
        status, text = await self.get("/metrics")
        assert status == 200, text
        return metric_value(text, name, **labels)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        proc = self.proc
        return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=timeout_s))

    def stop_now(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def runs(self, probe: str | None = None) -> list[sqlite3.Row]:
        """The runs table as another process sees it (do not call while the file is meant to be missing:
        opening a missing path creates it)."""
        con = sqlite3.connect(self.db)
        con.row_factory = sqlite3.Row
        try:
            sql = "SELECT * FROM runs" + (" WHERE probe_id=?" if probe else "") + " ORDER BY started_ns"
            return list(con.execute(sql, (probe,) if probe else ()))
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def metric_value(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([0-9.eE+-]+|NaN|[+-]Inf)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))).strip(",") == want:
            return float(m.group(3))
    return None


def unavailable(why: str) -> NoReturn:
    """A fault the test cannot inject here: under CI=true that fails the run (the real thing must be
    there), elsewhere the test is skipped with the reason."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot inject the fault on this machine: {why}")
    pytest.skip(why)


@contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files (or folders) unwritable even for root (``chattr +i``), proven by a refused write (or
    file creation); undone on exit.

    Skips the test where the file system has no immutable flag (tmpfs, overlay) or chattr is missing.
    """
    if shutil.which("chattr") is None:
        unavailable("chattr is not installed")
    done: list[Path] = []
    try:
        for path in paths:
            r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if r.returncode != 0:
                unavailable(f"chattr +i not supported here: {r.stderr.strip()}")
            done.append(path)
            try:
                probe = path / ".write-probe" if path.is_dir() else path
                os.close(os.open(probe, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
            except PermissionError:
                continue
            unavailable(f"chattr +i did not make {path} read-only for this process")
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def mount_namespace_available() -> str | None:
    """Why a private mount namespace with a tmpfs cannot be made here (None: it can)."""
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}"


def in_private_tmpfs(folder: Path, size: str, then: str = "") -> list[str]:
    """A command prefix: a private mount namespace with a ``size`` tmpfs on ``folder`` (seen by the
    child alone, gone with it), then the shell commands ``then``, then the command itself (exec)."""
    script = f'mount -t tmpfs -o size={size} tmpfs "{folder}" && {then + " && " if then else ""}exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def in_namespace_of(pid: int, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in the mount namespace of process ``pid`` (to reach its private tmpfs)."""
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "--", *command], capture_output=True, text=True)
