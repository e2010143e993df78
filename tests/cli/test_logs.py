"""Global --log-level/--log-format, --version, the start banner and the exit line, in real child processes:
with --log-format json every line on stdout and stderr parses as one JSON object."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.child import json_lines, run_args, start, suite
from tests.daemon.harness import metric_value
from tests.daemon.support import eventually
from tracecanary import __version__
from tracecanary.daemon.cli.banner import mask_url_password
from tracecanary.daemon.cli.demo import quiet_emulators

pytestmark = pytest.mark.anyio
MAIN = [sys.executable, "-m", "tracecanary.daemon.cli.main"]


async def test_run_in_json_writes_one_object_per_line(tmp_path: Path) -> None:
    child = start(tmp_path, "--log-format", "json", "--log-level", "debug", *run_args(tmp_path, suite(tmp_path)))
    try:
        await child.ready()
        assert (await child.request("GET", "/metrics"))[0] == 200
        assert (await child.request("POST", "/api/probes/orders/run", {}))[0] == 202

        async def ran() -> bool:
            value = metric_value((await child.request("GET", "/metrics"))[1], "probe_last_run_timestamp_seconds",
                                 probe="orders")
            return bool(value)

        await eventually(ran, 60, "the run of orders to finish")
        assert (await child.request("GET", "/api/no-such-route"))[0] == 404
        code = await child.stop()
    finally:
        child.kill()
    assert code == 0, child.text()[-3000:]
    records = json_lines(child.out, child.err)
    first, last = records[0], records[-1]
    assert first["message"] == "tracecanary starting" and first["level"] == "info"
    assert first["version"] == __version__ and first["cluster"] == "single" and first["probes"] == 2
    assert first["files"].endswith("suite.yaml") and first["store"].startswith("sqlite:///")
    assert first["listen"] == f"127.0.0.1:{child.port}" and first["otlp_grpc"] == "127.0.0.1:0"
    assert (last["message"], last["code"], last["reason"]) == ("tracecanary exiting", 0, "signal SIGTERM")
    assert any(r["message"].startswith("daemon ready") for r in records)
    access = {(r["method"], r["path"], r["status"], r["level"]) for r in records if r["logger"] == "tracecanary.access"}
    assert ("GET", "/metrics", 200, "debug") in access
    assert ("POST", "/api/probes/orders/run", 202, "info") in access
    assert ("GET", "/api/no-such-route", 404, "info") in access
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)


async def test_a_failing_start_in_json_is_json_too(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        child = start(tmp_path, "--log-format", "json", "run", str(suite(tmp_path)), "--listen", f"127.0.0.1:{port}",
                      "--otlp-http", "none", "--otlp-grpc", "none", "--store", f"sqlite:///{tmp_path / 'tc.db'}")
        try:
            code = await child.wait()
        finally:
            child.kill()
    assert code == 2, child.text()[-3000:]
    records = json_lines(child.out, child.err)
    assert records[0]["message"] == "tracecanary starting"
    assert any(r["level"] == "error" and "already in use" in r["message"] for r in records[1:-1])
    assert records[-1]["message"] == "tracecanary exiting" and records[-1]["code"] == 2
    assert "already in use" in records[-1]["reason"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("probes:\n  - id: Not_Valid\n    kind: nope\n")
    proc = subprocess.run([*MAIN, "--log-format=json", "run", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    (tmp_path / "bad.out").write_text(proc.stdout + proc.stderr)
    records = json_lines(tmp_path / "bad.out")
    assert any("bad.yaml" in r["message"] and r["level"] == "error" for r in records)
    assert records[-1]["code"] == 2 and records[-1]["reason"].startswith("configuration invalid")


def test_log_level_and_version_options() -> None:
    proc = subprocess.run([*MAIN, "--log-format", "json", "--log-level", "loud", "run", "x.yaml"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert "unknown log level 'loud': expected one of debug, info, warning, error, critical" in line
    assert line.startswith("{")
    proc = subprocess.run([*MAIN, "--log-level", "loud", "validate", "x.yaml"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "argument --log-level: unknown log level 'loud'" in proc.stderr
    proc = subprocess.run([*MAIN, "--version"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"tracecanary {__version__}")
    proc = subprocess.run([*MAIN, "--log-level", "WARNING", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0


CRASHING = """
import logging, threading, warnings
import anyio
from tracecanary.daemon.observe.logs import setup_logging

setup_logging(logging.INFO, "json")
warnings.warn("the old flag is deprecated", UserWarning)
logging.getLogger("aiokafka").warning("a third-party line\\nwith two lines")
thread = threading.Thread(target=lambda: 1 / 0, name="worker")
thread.start()
thread.join()

async def boom(n: int) -> None:
    raise ValueError(f"task {n} failed")

async def main() -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(boom, 1)
        tg.start_soon(boom, 2)

anyio.run(main)
"""


def test_warnings_and_uncaught_tracebacks_are_json_objects(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASHING], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    (tmp_path / "out").write_text(proc.stdout + proc.stderr)
    records = json_lines(tmp_path / "out")
    by_logger = {r["logger"]: r for r in records}
    assert "the old flag is deprecated" in by_logger["py.warnings"]["message"]
    assert by_logger["aiokafka"]["message"] == "a third-party line\nwith two lines"
    crashes = [r for r in records if r["logger"] == "tracecanary.process"]
    assert len(crashes) == 2 and all(r["level"] == "critical" for r in crashes)
    assert "thread worker" in crashes[0]["message"] and "ZeroDivisionError" in crashes[0]["exception"]
    group = crashes[1]["exception"]
    assert "ExceptionGroup" in group and "task 1 failed" in group and "task 2 failed" in group


def test_store_password_is_masked_in_the_banner() -> None:
    assert mask_url_password("postgresql://tc:s3cret@db:5432/tc") == "postgresql://tc:***@db:5432/tc"
    assert mask_url_password("postgresql+asyncpg://tc:p%40ss@db/tc?ssl=1") == "postgresql+asyncpg://tc:***@db/tc?ssl=1"
    assert mask_url_password("sqlite:////var/lib/tc.db") == "sqlite:////var/lib/tc.db"


def test_demo_shows_emulator_access_logs_only_at_debug() -> None:
    root, access = logging.getLogger(), logging.getLogger("aiohttp.access")
    saved = root.level, access.level
    try:
        root.setLevel(logging.INFO)
        quiet_emulators()
        assert not access.isEnabledFor(logging.INFO)
        access.setLevel(logging.NOTSET)
        root.setLevel(logging.DEBUG)
        quiet_emulators()
        assert access.isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved[0])
        access.setLevel(saved[1])


def test_a_bad_address_flag_is_a_usage_error_not_a_crash(tmp_path: Path) -> None:
    config = str(suite(tmp_path))
    for flag, value in (("--listen", "127.0.0.1:99999"), ("--otlp-grpc", "127.0.0.1:70000"), ("--listen", "[::1:80")):
        proc = subprocess.run([*MAIN, "run", config, "--otlp-http", "none", flag, value], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert f"tracecanary: {flag}: invalid listen address '{value}'" in proc.stderr
        assert "Traceback" not in proc.stderr and 'tracecanary exiting code=2' in proc.stderr
