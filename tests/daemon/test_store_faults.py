"""Store faults are loud, against a real ``tracecanary run`` process and real storage faults.

Read-only: ``chattr +i`` on the database and its WAL (refused even to root, unlike a file mode).
Deleted: the file unlinked under the daemon, later restored from a backup. Disk full: a private
mount namespace with a small tmpfs for the daemon alone, filled from inside it with ``nsenter``.
Each turns /readyz to 503 with the reason, counts ``tracecanary_store_errors_total``, raises the
``store`` alert on the Slack emulator (and reports to the Sentry emulator), keeps the runs the store
refused and writes them once it recovers — then the alert is resolved and /readyz is 200 again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from tests.daemon.harness import (
    DaemonProcess,
    Target,
    eventually,
    immutable,
    in_namespace_of,
    in_private_tmpfs,
    mount_namespace_available,
    unavailable,
)
from tests.daemon.support import problem_lines
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.demo.emulators.slack import SlackEmulator

pytestmark = pytest.mark.anyio
FAILING = "tracecanary: results store is failing"
RECOVERED = "tracecanary recovered: results store is failing"


def write_suite(path: Path, target: Target, slack: SlackEmulator, *, sentry_dsn: str | None = None) -> Path:
    doc: dict[str, Any] = {
        "daemon": {"shutdown_grace": "3s",
                   "store_health": {"check_interval": "200ms", "check_timeout": "10s", "keep_runs_for": "2m"}},
        "integrations": {"slack": {"bot_token": "xoxb-bot", "base_url": slack.base_url}},
        "alerts": {"channels": {"ops": {"type": "slack", "channel": "C0OPS"}},
                   "policies": {"default": {"channels": ["ops"]}}},
        "probes": [{"id": "fast", "kind": "http", "every": "1s", "jitter": "0%", "timeout": "5s",
                    "request": {"url": f"{target.url}/ok?p=fast"}}],
    }
    if sentry_dsn:
        doc["integrations"]["sentry"] = {"dsn": sentry_dsn}
    path.write_text(yaml.safe_dump(doc))
    return path


def texts(slack: SlackEmulator) -> list[str]:
    return [m["text"].splitlines()[0] for m in slack.messages("C0OPS")]


def kept_run_ids(log: str) -> set[str]:
    return set(re.findall(r"run kept in memory until the store works again run_id=(\w+)", log))


async def until_unready(d: DaemonProcess, fragment: str) -> dict[str, Any]:
    """Wait for /readyz 503 naming the store with ``fragment`` in the reason; the body."""
    seen: dict[str, Any] = {}

    async def unready() -> bool:
        status, body = await d.readyz()
        seen.update(body)
        return status == 503 and any(r["name"] == "store" and fragment in r["reason"]
                                     for r in body.get("reasons", []))

    await eventually(unready, 30, f"/readyz 503 with a store reason containing {fragment!r}")
    return seen


async def until_recovered(d: DaemonProcess, slack: SlackEmulator, kept_before: set[str]) -> set[str]:
    """/readyz 200, the alert resolved, every run kept while failing now stored; the kept run ids."""
    await eventually(lambda: _ready(d), 30, "/readyz 200 again")
    await eventually(lambda: RECOVERED in texts(slack), 30, "recovery on Slack")
    kept = kept_run_ids(d.log_text())
    assert kept - kept_before, "no run was kept while the store failed"
    stored = {r["run_id"]: r for r in d.runs("fast")}
    assert kept <= stored.keys(), f"kept runs missing from the store: {kept - stored.keys()}"
    assert all(stored[rid]["status"] == "finished" for rid in kept)
    assert await d.metric("tracecanary_runs_lost_total") == 0.0
    assert await d.metric("tracecanary_store_up") == 1.0
    return kept


async def _ready(d: DaemonProcess) -> bool:
    return (await d.readyz())[0] == 200


async def stop(d: DaemonProcess) -> None:
    d.signal(signal.SIGTERM)
    assert await d.wait_exit() == 0, d.log_text()[-3000:]


async def test_read_only_store_under_a_running_daemon(tmp_path: Path, target: Target, slack: SlackEmulator,
                                                      sentry_emulator: SentryEmulator) -> None:
    db = tmp_path / "tc.db"
    d = DaemonProcess(write_suite(tmp_path / "suite.yaml", target, slack, sentry_dsn=sentry_emulator.dsn()), db)
    d.start()
    try:
        await d.ready()
        await eventually(lambda: any(r["status"] == "finished" for r in d.runs("fast")), what="a run stored")
        with immutable(db, Path(f"{db}-wal")):
            body = await until_unready(d, "read-only")
            assert body["status"] == "unready"
            await eventually(lambda: FAILING in texts(slack), 30, "store alert on Slack")
            failing = next(m for m in slack.messages("C0OPS") if m["text"].startswith(FAILING))
            assert "read-only" in json.dumps(failing)
            await eventually(lambda: bool(kept_run_ids(d.log_text())), 30, "a run kept in memory")
            assert (await d.metric("tracecanary_store_errors_total", op="health") or 0) >= 1
            assert (await d.metric("tracecanary_store_errors_total", op="insert_run") or 0) >= 1
            assert await d.metric("tracecanary_store_up") == 0.0
            await eventually(lambda: any("read-only" in json.dumps(e.payload) for e in sentry_emulator.store.errors),
                             30, "the fault reported to Sentry")
        await until_recovered(d, slack, set())
        assert texts(slack) == [FAILING, RECOVERED]
        await stop(d)
    finally:
        d.stop_now()


async def test_deleted_store_file_under_a_running_daemon(tmp_path: Path, target: Target,
                                                         slack: SlackEmulator) -> None:
    db = tmp_path / "tc.db"
    d = DaemonProcess(write_suite(tmp_path / "suite.yaml", target, slack), db)
    d.start()
    try:
        await d.ready()
        await eventually(lambda: any(r["status"] == "finished" for r in d.runs("fast")), what="a run stored")
        backup = tmp_path / "backup.db"
        with sqlite3.connect(db) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        before = kept_run_ids(d.log_text())
        db.unlink()  # the daemon's connection would go on writing into the unlinked inode
        await until_unready(d, "was deleted")
        await eventually(lambda: FAILING in texts(slack), 30, "store alert on Slack")
        await eventually(lambda: bool(kept_run_ids(d.log_text()) - before), 30, "a run kept in memory")
        assert (await d.metric("tracecanary_store_errors_total", op="health") or 0) >= 1
        shutil.copy(backup, tmp_path / "restore.tmp")
        os.replace(tmp_path / "restore.tmp", db)  # the operator restores the backup
        kept = await until_recovered(d, slack, before)
        assert "store re-opened" in d.log_text()
        assert kept
        await stop(d)
        with closing(sqlite3.connect(db)) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        d.stop_now()


async def test_disk_full_under_a_running_daemon(tmp_path: Path, target: Target, slack: SlackEmulator) -> None:
    why_not = mount_namespace_available()
    if why_not:
        unavailable(why_not)
    folder = tmp_path / "vol"
    folder.mkdir()
    db = folder / "tc.db"
    d = DaemonProcess(write_suite(tmp_path / "suite.yaml", target, slack), db,
                      wrapper=in_private_tmpfs(folder, "4m"))
    d.start()
    try:
        await d.ready()
        assert d.proc is not None
        pid = d.proc.pid
        await eventually(lambda: _finished_runs_via_ns(pid, db) >= 1, what="a run stored on the tmpfs")
        fill = in_namespace_of(pid, "sh", "-c", f'dd if=/dev/zero of="{folder}/fill" bs=4k 2>&1; true')
        assert "No space left" in fill.stdout, fill
        await until_unready(d, "disk is full")
        await eventually(lambda: FAILING in texts(slack), 30, "store alert on Slack")
        await eventually(lambda: bool(kept_run_ids(d.log_text())), 30, "a run kept in memory")
        assert (await d.metric("tracecanary_store_up")) == 0.0
        assert in_namespace_of(pid, "rm", f"{folder}/fill").returncode == 0
        await eventually(lambda: _ready(d), 30, "/readyz 200 again")
        await eventually(lambda: RECOVERED in texts(slack), 30, "recovery on Slack")
        stored = _run_ids_via_ns(pid, db)
        assert kept_run_ids(d.log_text()) <= stored
        assert await d.metric("tracecanary_runs_lost_total") == 0.0
        await stop(d)
    finally:
        d.stop_now()


def _query_via_ns(pid: int, db: Path, sql: str) -> list[list[Any]]:
    """A read of the daemon's database inside its mount namespace (the tmpfs is visible there only)."""
    code = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "print(json.dumps([list(r) for r in c.execute(sys.argv[2])]))")
    r = in_namespace_of(pid, sys.executable, "-c", code, str(db), sql)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []


def _finished_runs_via_ns(pid: int, db: Path) -> int:
    rows = _query_via_ns(pid, db, "SELECT count(*) FROM runs WHERE status = 'finished'")
    return int(rows[0][0]) if rows else 0


def _run_ids_via_ns(pid: int, db: Path) -> set[str]:
    return {r[0] for r in _query_via_ns(pid, db, "SELECT run_id FROM runs")}


async def _exit_of(cmd: list[str], timeout_s: float) -> tuple[int, str, float]:
    started = time.monotonic()
    with anyio.fail_after(timeout_s):
        proc = await anyio.run_process(cmd, check=False)
    return proc.returncode, proc.stderr.decode(), time.monotonic() - started


def _start_command(tmp_path: Path, target: Target, store_url: str, wrapper: list[str] | None = None) -> list[str]:
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump({"probes": [{"id": "fast", "kind": "http", "every": "1s",
                                                   "request": {"url": f"{target.url}/ok"}}]}))
    d = DaemonProcess(config, tmp_path / "unused.db", wrapper=wrapper or [])
    cmd = d.command()
    cmd[cmd.index("--store") + 1] = store_url
    return cmd


def _assert_one_line(stderr: str, *fragments: str) -> None:
    lines = problem_lines(stderr)
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("tracecanary: store"), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


async def test_unwritable_store_at_start_is_one_line_exit_2_within_5s(tmp_path: Path, target: Target) -> None:
    # an existing store made immutable (read-only even for root)
    db = tmp_path / "tc.db"
    with closing(sqlite3.connect(db)) as con:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t (x)")
    with immutable(db):
        code, stderr, took_s = await _exit_of(_start_command(tmp_path, target, f"sqlite:///{db}"), 20)
    assert code == 2 and took_s < 5, (code, took_s, stderr)
    _assert_one_line(stderr, str(db), "read-only")

    # a folder that does not exist is not created behind the operator's back (a missing volume)
    missing = tmp_path / "no" / "such" / "tc.db"
    code, stderr, took_s = await _exit_of(_start_command(tmp_path, target, f"sqlite:///{missing}"), 20)
    assert code == 2 and took_s < 5, (code, took_s, stderr)
    _assert_one_line(stderr, "does not exist")
    assert not missing.parent.exists()

    # a folder that cannot be written (no room for the -wal and -shm files)
    locked = tmp_path / "locked"
    locked.mkdir()
    with immutable(locked):
        code, stderr, took_s = await _exit_of(_start_command(tmp_path, target, f"sqlite:///{locked}/tc.db"), 20)
    assert code == 2 and took_s < 5, (code, took_s, stderr)
    _assert_one_line(stderr, "not writable")


async def test_read_only_file_system_at_start_is_exit_2(tmp_path: Path, target: Target) -> None:
    why_not = mount_namespace_available()
    if why_not:
        unavailable(why_not)
    folder = tmp_path / "vol"
    folder.mkdir()
    db = folder / "tc.db"
    make_db = f"{sys.executable} -c 'import sqlite3; sqlite3.connect(\"{db}\").execute(\"CREATE TABLE t (x)\")'"
    wrapper = in_private_tmpfs(folder, "1m", then=f"{make_db} && mount -o remount,ro \"{folder}\"")
    code, stderr, took_s = await _exit_of(_start_command(tmp_path, target, f"sqlite:///{db}", wrapper), 20)
    assert code == 2 and took_s < 5, (code, took_s, stderr)
    _assert_one_line(stderr, "read-only")


async def test_unknown_store_scheme_is_exit_2(tmp_path: Path, target: Target) -> None:
    code, stderr, _ = await _exit_of(_start_command(tmp_path, target, "mysql://x"), 20)
    assert code == 2, stderr
    assert problem_lines(stderr) == [("tracecanary: store 'mysql://x': unknown URL scheme 'mysql'; use sqlite:///PATH "
                                       "(sqlite:////abs/path.db: four slashes for an absolute path) or "
                                       "postgresql://USER:PASSWORD@HOST:PORT/DB")]


def test_chattr_makes_a_file_read_only_for_root(tmp_path: Path) -> None:
    """The premise of these tests: an immutable file refuses writes to this (root) process too."""
    f = tmp_path / "f"
    f.write_text("x")
    with immutable(f), pytest.raises(PermissionError):
        f.write_text("y")
    f.write_text("y")
