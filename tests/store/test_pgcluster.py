"""The throwaway PostgreSQL cluster the store tests run on: reachable on loopback, one database per test."""

from __future__ import annotations

import psycopg

from tracecanary.demo.pgcluster import PgCluster


def test_each_test_gets_its_own_empty_database(postgres_cluster: PgCluster, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        row = conn.execute("SELECT current_database(), host(inet_server_addr()), "
                           "(SELECT count(*) FROM pg_tables WHERE schemaname = 'public')").fetchone()
    assert row is not None
    assert row[0] == postgres_url.rsplit("/", 1)[1] and row[1] == "127.0.0.1" and row[2] == 0
    assert postgres_cluster.create_database("other") != postgres_url
