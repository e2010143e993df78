"""A throwaway PostgreSQL cluster: ``initdb`` in a temporary folder, ``pg_ctl start`` on a free loopback port,
removed by :meth:`PgCluster.stop`.

Used by the test fixtures (``tests/fixtures/postgres.py``) and by ``benchmarks/e2e.py`` when no
``--store postgresql://…`` is given. Debian's ``postgresql`` package puts the binaries under
``/usr/lib/postgresql/<major>/bin`` (``$PG_BIN`` overrides). ``initdb`` refuses to run as root, so as root
every server command runs as the ``postgres`` system user (``runuser -u postgres --``) and the folder is
handed to that user. The server listens on 127.0.0.1 only, with ``trust`` authentication for its one
superuser ``tc``; its Unix socket sits in the cluster's own folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tracecanary.demo.broker import free_port
from tracecanary.errors import StartupError

SUPERUSER = "tc"
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""For tests: durability is not what they check, and 2 shared cores make fsyncs slow."""


class PostgresUnavailableError(StartupError):
    """PostgreSQL's server binaries are missing or the cluster did not start."""


def pg_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` (``$PG_BIN``, Debian's newest major, PATH)."""
    env = os.environ.get("PG_BIN")
    if env:
        return Path(env)
    majors = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if majors:
        return Path(majors[-1]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    raise PostgresUnavailableError("PostgreSQL server binaries not found: apt-get install postgresql "
                                   "(or set PG_BIN to the folder holding initdb and pg_ctl)")


@dataclass
class PgCluster:
    """A running throwaway cluster; :meth:`url` names a database on it."""

    root: Path
    port: int
    bin_dir: Path
    run_as: str | None
    """The system user the server runs as (``postgres`` when we are root), else None (ourselves)."""
    settings: dict[str, str]
    """Server parameters given at each start (``postgres -c k=v``)."""

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, *, template: str = "template1") -> str:
        """``CREATE DATABASE name TEMPLATE template``; the new database's URL."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def pg_ctl(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        return _run(cmd, self.run_as, timeout_s)

    def start_server(self, *, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``pg_ctl start`` (waits until it accepts connections); again after :meth:`stop_server` too."""
        opts = " ".join(f"-c {k}={v}" for k, v in {**self.settings, "port": str(self.port)}.items())
        return self.pg_ctl("start", "-w", "-t", str(int(timeout_s)), "-l", str(self.root / "server.log"),
                           "-o", opts, timeout_s=timeout_s + 10)

    def stop_server(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` (``immediate``: like a crash, sessions cut without a goodbye)."""
        if (self.data_dir / "postmaster.pid").exists():
            self.pg_ctl("stop", "-m", mode, "-w")

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended) and remove its folder."""
        try:
            self.stop_server()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _run(cmd: list[str], run_as: str | None, timeout_s: float) -> subprocess.CompletedProcess[str]:
    if run_as is not None:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def _owned_root(run_as: str | None) -> Path:
    # Under /tmp when the server runs as another user: $TMPDIR may sit in a folder that user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="tc-pg-", dir="/tmp" if run_as is not None else None))
    if run_as is not None:
        user = pwd.getpwnam(run_as)
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


def start_postgres(settings: dict[str, str] | None = None, *, attempts: int = 3,
                   start_timeout_s: float = 60.0) -> PgCluster:
    """initdb + pg_ctl start on a free loopback port; a port taken meanwhile is retried on another one.

    ``settings`` are server parameters (``postgres -c``), e.g. :data:`FAST_SETTINGS` for tests.
    """
    bin_dir = pg_bin_dir()
    run_as = "postgres" if os.geteuid() == 0 else None
    if run_as is not None:
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            raise PostgresUnavailableError("running as root and there is no 'postgres' system user to run "
                                           "initdb as (apt-get install postgresql creates it)") from None
    root = _owned_root(run_as)
    init = _run([str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, "--auth=trust",
                 "-E", "UTF8", "--no-sync", "--no-instructions"], run_as, start_timeout_s)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailableError(f"initdb failed: {(init.stderr or init.stdout).strip()[-500:]}")
    options = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(root), "max_connections": "200",
               **(settings or {})}
    last = ""
    for _ in range(attempts):
        cluster = PgCluster(root, free_port(), bin_dir, run_as, options)
        started = cluster.start_server(timeout_s=start_timeout_s)
        if started.returncode == 0:
            return cluster
        log = root / "server.log"
        last = (log.read_text(errors="replace") if log.exists() else started.stderr).strip()[-500:]
    shutil.rmtree(root, ignore_errors=True)
    raise PostgresUnavailableError(f"postgres did not start after {attempts} attempts: {last}")
