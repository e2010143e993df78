"""A ``tracecanary run`` process on a PostgreSQL store whose server crashes and comes back: /readyz turns 503
naming the store and the cause, the ``store`` alert is raised, runs refused meanwhile are kept and written
once the server answers again — then one ``recovered``, /readyz 200, nothing lost."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.daemon.harness import DaemonProcess, Target, eventually
from tests.daemon.test_store_faults import (
    FAILING,
    RECOVERED,
    kept_run_ids,
    stop,
    texts,
    until_recovered,
    until_unready,
    write_suite,
)
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.demo.pgcluster import PgCluster

pytestmark = pytest.mark.anyio
_names = itertools.count(1)


class PostgresDaemon(DaemonProcess):
    """The harness daemon with ``--store postgresql://…``; ``runs`` read from that database."""

    def __init__(self, config: Path, url: str) -> None:
        super().__init__(config, config.parent / "unused.db")
        self.url = url

    def command(self) -> list[str]:
        return [*super().command()[:-1], self.url]

    def runs(self, probe: str | None = None) -> list[Any]:
        sql = "SELECT * FROM runs" + (" WHERE probe_id=%s" if probe else "") + " ORDER BY started_ns"
        try:
            with psycopg.connect(self.url, connect_timeout=5, row_factory=dict_row) as conn:
                return list(conn.execute(sql, (probe,) if probe else ()))
        except psycopg.OperationalError:
            return []


async def test_postgres_crash_under_a_running_daemon(tmp_path: Path, target: Target, slack: SlackEmulator,
                                                     own_postgres: PgCluster) -> None:
    url = own_postgres.create_database(f"daemon_{next(_names)}")
    d = PostgresDaemon(write_suite(tmp_path / "suite.yaml", target, slack), url)
    d.start()
    try:
        await d.ready()
        await eventually(lambda: any(r["status"] == "finished" for r in d.runs("fast")), what="a run stored")
        own_postgres.stop_server("immediate")
        try:
            body = await until_unready(d, "Connection refused")
            reason = next(r["reason"] for r in body["reasons"] if r["name"] == "store")
            assert f"127.0.0.1:{own_postgres.port}" in reason and "connection lost" in reason, reason
            await eventually(lambda: FAILING in texts(slack), 30, "store alert on Slack")
            await eventually(lambda: bool(kept_run_ids(d.log_text())), 30, "a run kept in memory")
            assert await d.metric("tracecanary_store_up") == 0.0
        finally:
            assert own_postgres.start_server().returncode == 0
        await until_recovered(d, slack, set())
        assert texts(slack) == [FAILING, RECOVERED]
        await stop(d)
    finally:
        d.stop_now()
